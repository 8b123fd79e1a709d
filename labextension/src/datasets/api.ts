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
  can_read: boolean;
  can_admin: boolean;
  grants?: IGrant[]; // only when can_admin
}

export interface IUploaded {
  name: string;
  version: number;
  manifest_sha256: string;
  rows: number;
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
