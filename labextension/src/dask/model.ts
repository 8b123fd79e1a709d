// The Dask clusters of the current notebook's kernel, as the kernel reports them on the comm
// teelab.dask.attestation (teelab.dask.comm; docs/protocols/dask-attestation-comm.md).
//
// It follows the kernel attestation model: once a teelab kernel is known (and again after each restart) it
// registers the comm target on that kernel — so a cluster made later announces itself — and opens a comm
// asking for the state. A kernel that never made a cluster has no target and closes the comm: no cluster.

import { Kernel, KernelMessage } from '@jupyterlab/services';
import { ISignal, Signal } from '@lumino/signaling';

import { AttestationModel, AttestationState } from '../attestation/model';
import { DASK_REQUEST, DASK_TARGET, IDaskCluster, parseDaskMessage, ProtocolError } from './protocol';

export type DaskState =
  | { kind: 'none' } // no teelab kernel
  | { kind: 'waiting' } // asked; no answer yet (or restarting)
  | { kind: 'clusters'; clusters: IDaskCluster[] } // possibly none
  | { kind: 'error'; message: string };

export class DaskClustersModel {
  constructor(private readonly attestation: AttestationModel) {
    attestation.changed.connect(this._follow, this);
    this._follow(attestation, attestation.state);
  }

  get state(): DaskState {
    return this._state;
  }

  get changed(): ISignal<this, DaskState> {
    return this._changed;
  }

  dispose(): void {
    this.attestation.changed.disconnect(this._follow, this);
    this._detach();
  }

  private _follow(_: AttestationModel, state: AttestationState): void {
    const kernel = this.attestation.sessionContext?.session?.kernel ?? null;
    if (state.kind === 'record' || state.kind === 'missing') {
      // A new kernel, or the same one after a restart (its comms died with the old process).
      if (kernel !== this._kernel || this._stale) {
        this._attach(kernel);
      }
    } else if (state.kind === 'pending') {
      this._detach();
      this._stale = true;
      this._set({ kind: 'waiting' });
    } else {
      this._detach();
      this._set({ kind: 'none' });
    }
  }

  private _attach(kernel: Kernel.IKernelConnection | null): void {
    this._detach();
    this._stale = false;
    if (kernel === null || kernel.isDisposed || kernel.status === 'dead') {
      this._set({ kind: 'none' });
      return;
    }
    this._kernel = kernel;
    this._seq = -1;
    kernel.registerCommTarget(DASK_TARGET, this._onKernelOpen);
    this._set({ kind: 'waiting' });
    try {
      const comm = kernel.createComm(DASK_TARGET);
      this._watch(comm);
      comm.open(DASK_REQUEST);
    } catch {
      // A kernel that died meanwhile: the attestation model follows with its new state.
      this._set({ kind: 'none' });
    }
  }

  private _detach(): void {
    const kernel = this._kernel;
    this._kernel = null;
    const comms = [...this._comms];
    this._comms.clear();
    for (const comm of comms) {
      comm.onMsg = () => undefined;
      comm.onClose = () => undefined;
      if (!comm.isDisposed && kernel && !kernel.isDisposed && kernel.status !== 'dead') {
        comm.close();
      }
    }
    if (kernel && !kernel.isDisposed) {
      kernel.removeCommTarget(DASK_TARGET, this._onKernelOpen);
    }
  }

  // The kernel's first cluster opens a comm to us, carrying the state.
  private _onKernelOpen = (comm: Kernel.IComm, msg: KernelMessage.ICommOpenMsg): void => {
    this._watch(comm);
    this._receive(msg.content.data);
  };

  private _watch(comm: Kernel.IComm): void {
    this._comms.add(comm);
    comm.onMsg = msg => this._receive(msg.content.data);
    comm.onClose = () => {
      this._comms.delete(comm);
      // Our request's comm closed without an answer: the kernel has no target, so it never made a cluster.
      if (this._comms.size === 0 && this._state.kind === 'waiting') {
        this._set({ kind: 'clusters', clusters: [] });
      }
    };
  }

  private _receive(data: unknown): void {
    let message;
    try {
      message = parseDaskMessage(data);
    } catch (error) {
      const why = error instanceof ProtocolError ? error.message : 'unreadable';
      this._set({ kind: 'error', message: `the kernel sent a malformed report (${why})` });
      return;
    }
    if (message.type === 'error') {
      this._set({ kind: 'error', message: `the kernel refused the request: ${message.error}` });
      return;
    }
    // Several comms (ours and the kernel's) carry the same pushes: only a newer state counts.
    if (message.seq <= this._seq) {
      return;
    }
    this._seq = message.seq;
    this._set({ kind: 'clusters', clusters: message.clusters });
  }

  private _set(state: DaskState): void {
    this._state = state;
    this._changed.emit(state);
  }

  private _kernel: Kernel.IKernelConnection | null = null;
  private _comms = new Set<Kernel.IComm>();
  private _seq = -1;
  private _stale = false;
  private _state: DaskState = { kind: 'none' };
  private _changed = new Signal<this, DaskState>(this);
}
