// The "Dask clusters" section of the kernel attestation panel: each node of each TeeCluster the current
// notebook's kernel runs, with the verdict the kernel (the clusters' controller) reached on it.
//
// Every string here comes from the kernel and is shown as text (el() makes text nodes), never as markup.

import { Panel, Widget } from '@lumino/widgets';

import { append, Child, clear, el } from '../dom';
import { DaskClustersModel, DaskState } from './model';
import { IDaskCluster, IDaskNode } from './protocol';

const TEE_NAMES: Record<string, string> = { sgx: 'SGX', tdx: 'TDX', 'sev-snp': 'SEV-SNP' };
const SHORT_HASH = 16;

export class DaskClustersSection extends Widget {
  constructor(private readonly model: DaskClustersModel) {
    super();
    this.addClass('teelab-dask-section');
    this.node.setAttribute('data-teelab', 'dask-clusters');
    model.changed.connect(this._render, this);
    this._render();
  }

  dispose(): void {
    this.model.changed.disconnect(this._render, this);
    super.dispose();
  }

  private _render(): void {
    const state = this.model.state;
    clear(this.node);
    this.node.setAttribute('data-state', state.kind);
    if (state.kind === 'none') {
      return;
    }
    append(
      this.node,
      el('h3', {}, 'Dask clusters of this kernel'),
      el(
        'p',
        { className: 'teelab-muted', attrs: { 'data-teelab': 'dask-provenance' } },
        'Reported by the kernel, which attested each node as the cluster’s controller. Code running in this ' +
          'kernel could change this report; what anchors trust is the gateway’s verdict on the kernel above.'
      ),
      ...body(state)
    );
  }
}

function body(state: DaskState): Child[] {
  switch (state.kind) {
    case 'none':
      return [];
    case 'waiting':
      return [el('p', { className: 'teelab-muted' }, 'Asking the kernel…')];
    case 'error':
      return [
        el('p', { className: 'teelab-failure', attrs: { 'data-teelab': 'dask-error' } }, state.message)
      ];
    case 'clusters':
      if (state.clusters.length === 0) {
        const empty = { className: 'teelab-muted', attrs: { 'data-teelab': 'dask-empty' } };
        return [el('p', empty, 'No Dask cluster in this kernel.')];
      }
      return state.clusters.map(clusterView);
  }
}

function clusterView(cluster: IDaskCluster): HTMLElement {
  const headers = ['Role', 'Name', 'Verdict', 'Controller', 'TEE', 'Measurement', 'Address', 'Attested at'];
  const table = el(
    'table',
    { className: 'teelab-checks teelab-dask-nodes' },
    el('thead', {}, el('tr', {}, ...headers.map(h => el('th', {}, h)))),
    el('tbody', {}, ...cluster.nodes.map(node => nodeRow(node, cluster)))
  );
  return el(
    'section',
    {
      className: 'teelab-dask-cluster',
      attrs: { 'data-teelab': 'dask-cluster', 'data-cluster-id': cluster.id }
    },
    el(
      'h4',
      {},
      cluster.name,
      el(
        'span',
        { className: 'teelab-muted' },
        ` · ${cluster.status} · ${cluster.backend} · ${cluster.scheduler_address}`
      )
    ),
    cluster.simulated
      ? el(
          'div',
          { className: 'teelab-simulated-warning', attrs: { 'data-teelab': 'dask-simulated' } },
          '⚠ Simulated TEE — not confidential: these nodes run without hardware isolation.'
        )
      : null,
    el('div', { className: 'teelab-dask-table' }, table)
  );
}

function nodeRow(node: IDaskNode, cluster: IDaskCluster): HTMLElement {
  let verdict = `✗ fail: ${node.failure ? node.failure.check : node.verdict}`;
  if (node.accepted) {
    verdict = node.verdict === 'affirming' ? '✓ pass' : `✓ pass (${node.verdict})`;
  }
  let controller = 'not checked';
  if (node.controller.passed !== null) {
    controller = node.controller.passed ? '✓ pass' : '✗ fail';
  }
  const teeName = node.tee ? TEE_NAMES[node.tee] ?? node.tee : '?';
  // A simulated cluster says so once, above its table; a node differing from its cluster says so itself.
  const simulated = node.simulated && !cluster.simulated ? ' (simulated)' : '';
  const tee = `${teeName}/${cluster.backend}${simulated}`;
  const replaced = node.starts > 1 ? ` (replaced ×${node.starts - 1})` : '';
  return el(
    'tr',
    {
      className: node.accepted ? 'teelab-check-passed' : 'teelab-check-failed',
      attrs: {
        'data-teelab': 'dask-node',
        'data-node': node.name,
        'data-role': node.role,
        'data-verdict': node.accepted ? 'pass' : 'fail',
        'data-connected': String(node.connected)
      }
    },
    el('td', {}, node.role),
    el('td', {}, node.name, replaced ? el('span', { className: 'teelab-muted' }, replaced) : null),
    el(
      'td',
      {
        // Amber unless the verifier affirmed a real TEE, as the kernel's own badge.
        className:
          node.accepted && (node.verdict !== 'affirming' || node.simulated || cluster.simulated)
            ? 'teelab-check-result teelab-dask-warning'
            : 'teelab-check-result',
        title: node.failure ? node.failure.detail : node.verdict,
        attrs: { 'data-teelab': 'dask-verdict' }
      },
      verdict
    ),
    el('td', { title: node.controller.detail }, controller),
    el('td', {}, tee),
    el(
      'td',
      {},
      node.measurement
        ? el('code', { title: node.measurement }, node.measurement.slice(0, SHORT_HASH))
        : '–'
    ),
    el('td', {}, node.address ? el('code', {}, node.address) : 'not connected'),
    el('td', {}, node.attested_at)
  );
}

// The panel's content: the kernel's attestation, then its Dask clusters, scrolling together.
export function withDaskSection(attestation: Widget, model: DaskClustersModel): Panel {
  const view = new Panel();
  view.id = 'teelab-kernel-view';
  view.addClass('teelab-kernel-view');
  view.addWidget(attestation);
  view.addWidget(new DaskClustersSection(model));
  return view;
}
