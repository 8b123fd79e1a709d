// The comm teelab.dask.attestation (docs/protocols/dask-attestation-comm.md): the one request the panel
// sends, and a strict reader of what the kernel answers.
//
// The answer is the kernel's own report. Anyone who runs code in that kernel can send anything on this comm,
// so it is parsed field by field (anything else is a ProtocolError) and only ever shown as text.

import { isObject } from '../api';

export const DASK_TARGET = 'teelab.dask.attestation';
export const DASK_VERSION = 1;
export const DASK_REQUEST = { request: 'clusters', version: DASK_VERSION };

export interface IDaskNode {
  name: string;
  role: string;
  address: string | null;
  connected: boolean;
  verdict: string;
  accepted: boolean;
  tee: string | null;
  simulated: boolean;
  measurement: string | null;
  controller: { passed: boolean | null; detail: string };
  failure: { check: string; detail: string } | null;
  attested_at: string;
  starts: number;
}

export interface IDaskCluster {
  id: string;
  name: string;
  status: string;
  backend: string;
  simulated: boolean;
  scheduler_address: string;
  nodes: IDaskNode[];
}

export type DaskMessage =
  | { type: 'clusters'; seq: number; clusters: IDaskCluster[] }
  | { type: 'error'; error: string; detail: string };

export class ProtocolError extends Error {}

export function parseDaskMessage(data: unknown): DaskMessage {
  const message = object(data, 'the message');
  if (message['version'] !== DASK_VERSION) {
    throw new ProtocolError(`not version ${DASK_VERSION} of the protocol`);
  }
  if (message['type'] === 'error') {
    const error = str(message['error'], 'error');
    return { type: 'error', error, detail: str(message['detail'], 'detail') };
  }
  if (message['type'] !== 'clusters') {
    throw new ProtocolError('an unknown message type');
  }
  const seq = message['seq'];
  if (typeof seq !== 'number' || !Number.isSafeInteger(seq) || seq < 0) {
    throw new ProtocolError('seq is not a counter');
  }
  return { type: 'clusters', seq, clusters: list(message['clusters'], 'clusters').map(cluster) };
}

function cluster(value: unknown): IDaskCluster {
  const c = object(value, 'a cluster');
  return {
    id: str(c['id'], 'cluster id'),
    name: str(c['name'], 'cluster name'),
    status: str(c['status'], 'cluster status'),
    backend: str(c['backend'], 'backend'),
    simulated: bool(c['simulated'], 'simulated'),
    scheduler_address: str(c['scheduler_address'], 'scheduler address'),
    nodes: list(c['nodes'], 'nodes').map(node)
  };
}

function node(value: unknown): IDaskNode {
  const n = object(value, 'a node');
  const controller = object(n['controller'], 'controller');
  const passed = controller['passed'];
  if (passed !== null && typeof passed !== 'boolean') {
    throw new ProtocolError('controller.passed is not a boolean');
  }
  const failure = n['failure'] === null ? null : object(n['failure'], 'failure');
  const starts = n['starts'];
  if (typeof starts !== 'number' || !Number.isSafeInteger(starts) || starts < 1) {
    throw new ProtocolError('starts is not a count');
  }
  return {
    name: str(n['name'], 'node name'),
    role: str(n['role'], 'role'),
    address: optionalStr(n['address'], 'address'),
    connected: bool(n['connected'], 'connected'),
    verdict: str(n['verdict'], 'verdict'),
    accepted: bool(n['accepted'], 'accepted'),
    tee: optionalStr(n['tee'], 'tee'),
    simulated: bool(n['simulated'], 'simulated'),
    measurement: optionalStr(n['measurement'], 'measurement'),
    controller: { passed, detail: str(controller['detail'], 'controller detail') },
    failure: failure && {
      check: str(failure['check'], 'failed check'),
      detail: str(failure['detail'], 'failure')
    },
    attested_at: str(n['attested_at'], 'attested_at'),
    starts
  };
}

function object(value: unknown, what: string): Record<string, unknown> {
  if (!isObject(value)) {
    throw new ProtocolError(`${what} is not an object`);
  }
  return value;
}

function list(value: unknown, what: string): unknown[] {
  if (!Array.isArray(value)) {
    throw new ProtocolError(`${what} is not a list`);
  }
  return value;
}

function str(value: unknown, what: string): string {
  if (typeof value !== 'string') {
    throw new ProtocolError(`${what} is not a string`);
  }
  return value;
}

function optionalStr(value: unknown, what: string): string | null {
  return value === null ? null : str(value, what);
}

function bool(value: unknown, what: string): boolean {
  if (typeof value !== 'boolean') {
    throw new ProtocolError(`${what} is not a boolean`);
  }
  return value;
}
