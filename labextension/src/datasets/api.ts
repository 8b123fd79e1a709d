// The dataset REST contract (extension/handlers.py documents it; extension/datasets.py implements it).

import { ServerConnection } from '@jupyterlab/services';

import { requestJSON } from '../api';

export interface IGrant {
  principal: string; // "user:alice" or "group:analysts"
  expires_at: string | null; // ISO-8601
}

export interface IDataset {
  name: string;
  current_version: number;
  versions: number[];
  owner: string;
  created_at: string;
  policy_id: string | null; // the release policy the dataset's key is released under
  can_read: boolean;
  can_admin: boolean;
  grants?: IGrant[]; // only when can_admin
}

// What a release policy admits, as the server reads it (extension/datasets.py, describe_policy).
export interface IPolicySummary {
  id: string | null;
  error?: string; // the policy file does not parse
  allow_simulation?: boolean;
  allow_debug?: boolean;
  pins?: Record<string, string[]>; // per TEE table ("sgx", "tdx", "snp"): the keys it pins
  pins_nothing?: boolean;
}

// A release policy the operator published (GET /teelab/api/datasets/policies).
export interface IPolicy extends IPolicySummary {
  name: string;
  text: string;
}

export interface IPolicies {
  policies: IPolicy[];
  suggested: string | null; // the kernel's policy; shown as a hint, never chosen for the user
}

export interface IUploaded {
  name: string;
  version: number;
  policy: IPolicySummary;
  manifest_sha256: string;
  rows: number;
}

export function listPolicies(settings: ServerConnection.ISettings): Promise<IPolicies> {
  return requestJSON<IPolicies>(settings, ['datasets', 'policies']);
}

export async function listDatasets(settings: ServerConnection.ISettings): Promise<IDataset[]> {
  const body = await requestJSON<{ datasets: IDataset[] }>(settings, ['datasets']);
  return body.datasets;
}

export function grant(
  settings: ServerConnection.ISettings,
  name: string,
  principal: string,
  expiresAt: string | null
): Promise<IGrant> {
  return requestJSON<IGrant>(settings, ['datasets', name, 'grants'], {
    method: 'POST',
    body: JSON.stringify({ principal, expires_at: expiresAt }),
    headers: { 'Content-Type': 'application/json' }
  });
}

export function revoke(
  settings: ServerConnection.ISettings,
  name: string,
  principal: string
): Promise<void> {
  return requestJSON<void>(settings, ['datasets', name, 'grants', principal], { method: 'DELETE' });
}

// What a user may type as a principal; the server checks it again.
export const PRINCIPAL = /^(user|group):[^\s/]+$/;
