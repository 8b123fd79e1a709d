// Typed calls to the teelab server extension (/teelab/api/...), through JupyterLab's ServerConnection so
// the token, the XSRF cookie and a JupyterHub base URL are handled as for every other request.

import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

export const API_PATH = 'teelab/api';

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string
  ) {
    super(message);
  }
}

export function apiUrl(settings: ServerConnection.ISettings, ...parts: string[]): string {
  return URLExt.join(settings.baseUrl, API_PATH, ...parts);
}

// The server's JSON error body is {"message": ...}; fall back to the status line.
export async function errorFrom(response: Response): Promise<ApiError> {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body: unknown = await response.json();
    if (isObject(body) && typeof body.message === 'string' && body.message) {
      message = body.message;
    }
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, message);
}

export async function requestJSON<T>(
  settings: ServerConnection.ISettings,
  path: string[],
  init: RequestInit = {},
  query: Record<string, string> = {}
): Promise<T> {
  const search = new URLSearchParams(query).toString();
  const url = apiUrl(settings, ...path.map(encodeURIComponent)) + (search ? `?${search}` : '');
  const response = await ServerConnection.makeRequest(url, init, settings);
  if (!response.ok) {
    throw await errorFrom(response);
  }
  if (response.status === 204) {
    return undefined as T;
  }
  return (await response.json()) as T;
}

export function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

// -- attestation records (extension/records.py) -----------------------------------------------------

export type BadgeLevel = 'attested' | 'warning' | 'simulated' | 'failed';

export interface IBadge {
  level: BadgeLevel;
  text: string;
  detail: string;
}

export interface ICheck {
  name: string;
  passed: boolean;
  detail: string;
}

export interface IAttestation {
  ok: boolean;
  verdict: 'affirming' | 'warning' | 'contraindicated';
  tee: string | null;
  simulated: boolean;
  tcb_status: string | null;
  advisory_ids: string[];
  claims: Record<string, string | number | boolean>;
  checks: ICheck[];
  error: string | null;
  warnings: string[];
  verified_at: string;
  policy_id: string;
  policy_digest: string | null;
}

export interface IKernelRecord {
  kernel_id: string;
  kernel_name: string;
  backend: string;
  started_at: string;
  running: boolean;
  ok: boolean;
  simulated: boolean;
  failure: { check: string; detail: string } | null;
  attestation: IAttestation | null;
  badge: IBadge;
  measurement: { name: string; claim: string; value: string } | null;
}

export function kernelRecord(
  settings: ServerConnection.ISettings,
  kernelId: string
): Promise<IKernelRecord> {
  return requestJSON<IKernelRecord>(settings, ['kernels', kernelId, 'attestation']);
}
