// The status-bar badge of the current notebook's kernel: green attested, amber simulated (or accepted with
// warnings), red failed. Clicking it opens the attestation panel.

import { Widget } from '@lumino/widgets';

import { badgeView } from './badge';
import { AttestationModel } from './model';

export class AttestationStatus extends Widget {
  constructor(
    private readonly model: AttestationModel,
    private readonly onOpen: () => void
  ) {
    super({ node: document.createElement('button') });
    this.addClass('teelab-status');
    this.node.setAttribute('type', 'button');
    this.node.setAttribute('data-teelab', 'status');
    this.node.addEventListener('click', this.onOpen);
    model.changed.connect(this._render, this);
    this._render();
  }

  get visible(): boolean {
    return badgeView(this.model.state) !== null;
  }

  dispose(): void {
    this.model.changed.disconnect(this._render, this);
    this.node.removeEventListener('click', this.onOpen);
    super.dispose();
  }

  private _render(): void {
    const view = badgeView(this.model.state);
    // Only our own classes: Lumino keeps its own (lm-Widget, lm-mod-hidden) on the same node.
    for (const name of [...this.node.classList].filter(c => c.startsWith('teelab-level-'))) {
      this.node.classList.remove(name);
    }
    if (view === null) {
      this.node.textContent = '';
      this.hide();
      return;
    }
    this.node.classList.add(`teelab-level-${view.level}`);
    this.node.setAttribute('data-level', view.level);
    this.node.textContent = view.text;
    this.node.title = `${view.detail}\n(click for every check)`;
    this.show();
  }
}
