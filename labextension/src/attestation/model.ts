// What the status bar item and the panel show: the attestation of the current notebook's kernel.
//
// The record is fetched when the kernel changes and again after every restart, because a restart runs the
// whole handshake again (new keys, new evidence, possibly a different verdict).

import { ISessionContext } from '@jupyterlab/apputils';
import { Kernel, KernelSpec, ServerConnection } from '@jupyterlab/services';
import { ISignal, Signal } from '@lumino/signaling';

import { ApiError, IKernelRecord, isObject, kernelRecord } from '../api';

export type AttestationState =
  | { kind: 'none' } // no kernel, or not a teelab kernel: nothing to show
  | { kind: 'pending'; kernelName: string } // starting or restarting: being attested
  | { kind: 'record'; record: IKernelRecord }
  | { kind: 'missing'; kernelName: string; message: string }; // a teelab kernel with no gateway record

// Statuses after which the kernel is (being) replaced and its record must be fetched again.
const RESTARTING: ReadonlySet<Kernel.Status> = new Set<Kernel.Status>([
  'starting',
  'restarting',
  'autorestarting',
  'unknown'
]);

export class AttestationModel {
  constructor(
    private readonly settings: ServerConnection.ISettings,
    private readonly specs: KernelSpec.IManager
  ) {}

  get state(): AttestationState {
    return this._state;
  }

  get changed(): ISignal<this, AttestationState> {
    return this._changed;
  }

  get sessionContext(): ISessionContext | null {
    return this._context;
  }

  set sessionContext(context: ISessionContext | null) {
    if (context === this._context) {
      return;
    }
    if (this._context) {
      this._context.kernelChanged.disconnect(this._onKernelChanged, this);
      this._context.statusChanged.disconnect(this._onStatusChanged, this);
    }
    this._context = context;
    if (context) {
      context.kernelChanged.connect(this._onKernelChanged, this);
      context.statusChanged.connect(this._onStatusChanged, this);
    }
    void this.refresh();
  }

  async refresh(): Promise<void> {
    const kernel = this._context?.session?.kernel ?? null;
    const generation = ++this._generation;
    if (!kernel || !(await this._isTeelab(kernel.name))) {
      this._set(generation, { kind: 'none' });
      return;
    }
    this._stale = false;
    try {
      const record = await kernelRecord(this.settings, kernel.id);
      this._set(generation, { kind: 'record', record });
    } catch (error) {
      const message =
        error instanceof ApiError && error.status === 404
          ? 'the gateway holds no attestation record for this kernel'
          : `cannot read the attestation record: ${String(error instanceof Error ? error.message : error)}`;
      this._set(generation, { kind: 'missing', kernelName: kernel.name, message });
    }
  }

  private _onKernelChanged(): void {
    void this.refresh();
  }

  private _onStatusChanged(_: ISessionContext, status: Kernel.Status): void {
    const kernel = this._context?.session?.kernel ?? null;
    if (RESTARTING.has(status)) {
      this._stale = true;
      if (kernel && this._state.kind !== 'none') {
        this._set(++this._generation, { kind: 'pending', kernelName: kernel.name });
      }
    } else if (status === 'dead' || ((status === 'idle' || status === 'busy') && this._stale)) {
      // Up again after a restart (a fresh handshake), or dead (possibly refused on restart).
      void this.refresh();
    }
  }

  private async _isTeelab(kernelName: string): Promise<boolean> {
    // Only decides whether to show a badge at all; what the badge says comes from the gateway's record.
    await this.specs.ready;
    const metadata = this.specs.specs?.kernelspecs[kernelName]?.metadata;
    const provisioner = isObject(metadata) ? metadata['kernel_provisioner'] : undefined;
    return isObject(provisioner) && provisioner['provisioner_name'] === 'teelab';
  }

  // Answers can arrive out of order (a restart while a fetch is in flight); only the newest counts.
  private _set(generation: number, state: AttestationState): void {
    if (generation !== this._generation) {
      return;
    }
    this._state = state;
    this._changed.emit(state);
  }

  private _context: ISessionContext | null = null;
  private _state: AttestationState = { kind: 'none' };
  private _changed = new Signal<this, AttestationState>(this);
  private _generation = 0;
  private _stale = false;
}
