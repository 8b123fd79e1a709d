import { LabIcon } from '@jupyterlab/ui-components';

// A padlock over a table: sealed datasets.
const DATASETS_SVG = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path d="M3 4h13v2H5v12h6v2H3z"/>
    <path d="M5 9h11v1.5H5zM5 13h6v1.5H5z"/>
    <path d="M17 11a3 3 0 0 0-3 3v1h-1v6h8v-6h-1v-1a3 3 0 0 0-3-3zm0 1.5a1.5 1.5 0 0 1 1.5 1.5v1h-3v-1a1.5 1.5 0 0 1 1.5-1.5z"/>
  </g>
</svg>`;

export const datasetsIcon = new LabIcon({ name: 'teelab:datasets', svgstr: DATASETS_SVG });
