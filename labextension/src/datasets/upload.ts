// Dataset upload with progress. fetch() reports no upload progress, so this uses XMLHttpRequest and adds
// what ServerConnection.makeRequest would: the token (when the page has one) and the XSRF header.

import { ServerConnection } from '@jupyterlab/services';

import { ApiError, apiUrl, isObject } from '../api';
import { IUploaded } from './api';

export type Progress = (sent: number, total: number) => void;

export function contentType(file: File): string {
  return /\.parquet$/i.test(file.name) ? 'application/vnd.apache.parquet' : 'text/csv';
}

// "sales 2024.csv" -> "sales-2024": a starting point the user can edit.
export function nameFromFile(file: File): string {
  return file.name
    .replace(/\.(csv|parquet)$/i, '')
    .replace(/[^A-Za-z0-9._-]+/g, '-')
    .replace(/^[-.]+|-+$/g, '')
    .slice(0, 64);
}

function xsrfToken(): string | null {
  const match = document.cookie.match('\\b_xsrf=([^;]*)\\b');
  return match ? decodeURIComponent(match[1]) : null;
}

export function uploadDataset(
  settings: ServerConnection.ISettings,
  name: string,
  policy: string,
  file: File,
  onProgress: Progress
): { done: Promise<IUploaded>; abort: () => void } {
  const xhr = new XMLHttpRequest();
  const done = new Promise<IUploaded>((resolve, reject) => {
    xhr.open('POST', `${apiUrl(settings, 'datasets')}?${new URLSearchParams({ name, policy }).toString()}`);
    xhr.setRequestHeader('Content-Type', contentType(file));
    if (settings.token) {
      xhr.setRequestHeader('Authorization', `token ${settings.token}`);
    }
    const xsrf = xsrfToken();
    if (xsrf) {
      xhr.setRequestHeader('X-XSRFToken', xsrf);
    }
    xhr.upload.onprogress = event => onProgress(event.loaded, event.lengthComputable ? event.total : file.size);
    xhr.onload = () => {
      let body: unknown = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        // keep null
      }
      if (xhr.status === 201 && isObject(body)) {
        resolve(body as unknown as IUploaded);
        return;
      }
      const message =
        isObject(body) && typeof body.message === 'string' ? body.message : `${xhr.status} ${xhr.statusText}`;
      reject(new ApiError(xhr.status, message));
    };
    xhr.onerror = () => reject(new ApiError(0, 'the upload failed: network error'));
    xhr.onabort = () => reject(new ApiError(0, 'the upload was cancelled'));
    xhr.send(file);
  });
  return { done, abort: () => xhr.abort() };
}
