// The dataset browser side panel: the datasets this user can see, upload with a progress bar under a release
// policy the user chooses explicitly, grants, and "insert read_dataset" per row.

import { ServerConnection } from '@jupyterlab/services';
import { CommandRegistry } from '@lumino/commands';
import { Widget } from '@lumino/widgets';

import { ApiError } from '../api';
import { append, clear, el } from '../dom';
import {
  grant,
  IDataset,
  IGrant,
  IPolicies,
  IPolicy,
  listDatasets,
  listPolicies,
  PRINCIPAL,
  revoke
} from './api';
import { describePolicy, policyLabel, usable } from './policy';
import { nameFromFile, uploadDataset } from './upload';

export const INSERT_COMMAND = 'teelab:insert-read-dataset';

export class DatasetBrowser extends Widget {
  constructor(
    private readonly settings: ServerConnection.ISettings,
    private readonly commands: CommandRegistry
  ) {
    super();
    this.id = 'teelab-datasets';
    this.addClass('teelab-dataset-browser');
    this.node.setAttribute('data-teelab', 'dataset-browser');
    this.title.caption = 'Sealed datasets';
    append(
      this.node,
      el(
        'div',
        { className: 'teelab-browser-header' },
        el('h2', {}, 'Sealed datasets'),
        this._refreshButton
      ),
      this._uploadForm(),
      this._message,
      this._list
    );
    this._refreshButton.addEventListener('click', () => void this.refresh());
  }

  async refresh(): Promise<void> {
    void this._loadPolicies();
    try {
      this._render(await listDatasets(this.settings));
    } catch (error) {
      clear(this._list);
      const notHere = error instanceof ApiError && error.status === 404;
      this._say(
        notHere ? 'Datasets are not available on this server yet.' : `Cannot list datasets: ${describe(error)}`,
        'error'
      );
    }
  }

  protected onAfterShow(): void {
    void this.refresh();
  }

  // -- release policies -------------------------------------------------------------------------------

  // The operator's published policies, refreshed with the list; a choice still published is kept.
  private async _loadPolicies(): Promise<void> {
    let loaded: IPolicies;
    try {
      loaded = await listPolicies(this.settings);
    } catch (error) {
      this._policies = [];
      this._fillPolicies(null);
      this._policyPreview.textContent = `Cannot list the release policies: ${describe(error)}`;
      return;
    }
    this._policies = loaded.policies;
    this._fillPolicies(loaded.suggested);
  }

  private _fillPolicies(suggested: string | null): void {
    const chosen = this._policySelect.value;
    clear(this._policySelect);
    // No policy is chosen for the user: the placeholder is what the form starts and resets to.
    const placeholder = el('option', { attrs: { value: '' } }, 'Choose a release policy…');
    placeholder.defaultSelected = true;
    placeholder.disabled = true;
    append(this._policySelect, placeholder);
    for (const policy of this._policies) {
      const option = el('option', { attrs: { value: policy.name } }, policyLabel(policy, suggested));
      option.disabled = !usable(policy);
      append(this._policySelect, option);
    }
    this._policySelect.value = this._policies.some(p => p.name === chosen && usable(p)) ? chosen : '';
    this._showPolicy();
  }

  private _chosenPolicy(): IPolicy | undefined {
    return this._policies.find(p => p.name === this._policySelect.value && usable(p));
  }

  // What the chosen policy admits, before the upload; the upload button waits for a choice.
  private _showPolicy(): void {
    clear(this._policyPreview);
    const policy = this._chosenPolicy();
    this._uploadButton.disabled = this._uploading || policy === undefined;
    if (policy) {
      append(this._policyPreview, describePolicy(policy));
    } else {
      const hint = this._policies.length
        ? 'The key broker releases the dataset’s key only to kernels the policy admits.'
        : 'The operator published no release policy: uploads are not possible.';
      append(this._policyPreview, el('p', { className: 'teelab-muted' }, hint));
    }
  }

  // -- upload -----------------------------------------------------------------------------------------

  private _uploadForm(): HTMLElement {
    const file = el('input', {
      attrs: { type: 'file', accept: '.csv,.parquet,text/csv', 'data-teelab': 'upload-file' }
    });
    const name = el('input', {
      attrs: { type: 'text', placeholder: 'dataset name', 'data-teelab': 'upload-name' }
    });
    const button = this._uploadButton;
    this._policySelect.addEventListener('change', () => this._showPolicy());
    file.addEventListener('change', () => {
      const chosen = file.files?.[0];
      if (chosen && !name.value) {
        name.value = nameFromFile(chosen);
      }
    });
    const form = el(
      'form',
      { className: 'teelab-upload', attrs: { 'data-teelab': 'upload-form' } },
      el('label', {}, 'CSV or Parquet file', file),
      el('label', {}, 'Name', name),
      el('label', {}, 'Release policy', this._policySelect),
      this._policyPreview,
      button,
      this._progress,
      this._progressText
    );
    form.addEventListener('submit', event => {
      event.preventDefault();
      const chosen = file.files?.[0];
      const policy = this._chosenPolicy();
      if (!chosen || !name.value.trim() || !policy) {
        this._say('Choose a file, a name and a release policy first.', 'error');
        return;
      }
      this._uploading = true;
      button.disabled = true;
      void this._upload(chosen, name.value.trim(), policy.name).finally(() => {
        this._uploading = false;
        form.reset(); // back to no policy chosen: the next upload chooses again
        this._showPolicy();
      });
    });
    return form;
  }

  private async _upload(file: File, name: string, policy: string): Promise<void> {
    this._progress.value = 0;
    this._progress.hidden = false;
    this._progressText.textContent = `Uploading ${file.name}…`;
    const { done } = uploadDataset(this.settings, name, policy, file, (sent, total) => {
      this._progress.max = total || 1;
      this._progress.value = sent;
      this._progressText.textContent = `${percent(sent, total)} of ${formatBytes(total)}`;
    });
    try {
      const uploaded = await done;
      this._progress.value = this._progress.max;
      this._progressText.textContent = '';
      this._say(
        `Uploaded ${uploaded.name} version ${uploaded.version} (${uploaded.rows} rows), sealed under policy ` +
          `${uploaded.policy?.id ?? policy}.`,
        'success'
      );
      await this.refresh();
    } catch (error) {
      this._progressText.textContent = '';
      this._say(`Upload failed: ${describe(error)}`, 'error');
    } finally {
      this._progress.hidden = true;
    }
  }

  // -- the list ---------------------------------------------------------------------------------------

  private _render(datasets: IDataset[]): void {
    clear(this._list);
    if (!datasets.length) {
      append(this._list, el('p', { className: 'teelab-muted' }, 'No datasets you can see yet.'));
      return;
    }
    for (const dataset of datasets) {
      append(this._list, this._row(dataset));
    }
  }

  private _row(dataset: IDataset): HTMLElement {
    const access = [dataset.can_read ? 'read' : null, dataset.can_admin ? 'admin' : null].filter(Boolean);
    const insert = el(
      'button',
      {
        className: 'jp-mod-styled',
        title: 'Insert a cell that reads this dataset into the active notebook',
        attrs: { type: 'button', 'data-teelab': 'insert' }
      },
      'Insert read_dataset'
    );
    insert.disabled = !dataset.can_read;
    insert.addEventListener('click', () => {
      void this.commands.execute(INSERT_COMMAND, { name: dataset.name });
    });
    return el(
      'div',
      { className: 'teelab-dataset', attrs: { 'data-teelab': 'dataset', 'data-name': dataset.name } },
      el('div', { className: 'teelab-dataset-name' }, dataset.name),
      el(
        'div',
        { className: 'teelab-dataset-meta' },
        `v${dataset.current_version} · versions ${dataset.versions.join(', ')} · owner ${dataset.owner}`
      ),
      el(
        'div',
        { className: 'teelab-dataset-policy', attrs: { 'data-teelab': 'policy' } },
        `release policy: ${dataset.policy_id ?? 'unknown'}`
      ),
      el(
        'div',
        { className: 'teelab-dataset-access', attrs: { 'data-teelab': 'access' } },
        `your access: ${access.length ? access.join(', ') : 'none'}`
      ),
      insert,
      dataset.can_admin ? this._grants(dataset) : null
    );
  }

  private _grants(dataset: IDataset): HTMLElement {
    const list = el(
      'ul',
      { className: 'teelab-grants', attrs: { 'data-teelab': 'grants' } },
      ...(dataset.grants ?? []).map(g => this._grantItem(dataset, g))
    );
    const principal = el('input', {
      attrs: { type: 'text', placeholder: 'user:alice or group:analysts', 'data-teelab': 'grant-principal' }
    });
    const expires = el('input', {
      title: 'optional expiry',
      attrs: { type: 'datetime-local', 'data-teelab': 'grant-expires' }
    });
    const form = el(
      'form',
      { className: 'teelab-grant-form', attrs: { 'data-teelab': 'grant-form' } },
      principal,
      expires,
      el('button', { className: 'jp-mod-styled', attrs: { type: 'submit' } }, 'Grant')
    );
    form.addEventListener('submit', event => {
      event.preventDefault();
      const who = principal.value.trim();
      if (!PRINCIPAL.test(who)) {
        this._say('A principal is user:<name> or group:<name>.', 'error');
        return;
      }
      const expiresAt = expires.value ? new Date(expires.value).toISOString() : null;
      void grant(this.settings, dataset.name, who, expiresAt)
        .then(() => {
          this._say(`Granted ${dataset.name} to ${who}.`, 'success');
          return this.refresh();
        })
        .catch(error => this._say(`Grant failed: ${describe(error)}`, 'error'));
    });
    return el('div', { className: 'teelab-grants-box' }, el('div', {}, 'Access granted to'), list, form);
  }

  private _grantItem(dataset: IDataset, item: IGrant): HTMLElement {
    const remove = el(
      'button',
      { className: 'teelab-revoke', title: `Revoke ${item.principal}`, attrs: { type: 'button' } },
      '×'
    );
    remove.addEventListener('click', () => {
      void revoke(this.settings, dataset.name, item.principal)
        .then(() => this.refresh())
        .catch(error => this._say(`Revoke failed: ${describe(error)}`, 'error'));
    });
    return el(
      'li',
      { attrs: { 'data-teelab': 'grant', 'data-principal': item.principal } },
      item.principal,
      item.expires_at ? ` (until ${item.expires_at})` : '',
      remove
    );
  }

  private _say(text: string, kind: 'error' | 'success'): void {
    this._message.className = `teelab-message teelab-message-${kind}`;
    this._message.textContent = text;
  }

  private readonly _refreshButton = el(
    'button',
    { className: 'jp-mod-styled', title: 'Refresh', attrs: { type: 'button', 'data-teelab': 'refresh' } },
    '⟳'
  );
  private readonly _progress = Object.assign(
    el('progress', { className: 'teelab-progress', attrs: { 'data-teelab': 'upload-progress', max: '1', value: '0' } }),
    { hidden: true }
  );
  private _policies: IPolicy[] = [];
  private _uploading = false;
  private readonly _policySelect = el('select', {
    className: 'jp-mod-styled',
    attrs: { required: '', 'data-teelab': 'upload-policy' }
  });
  private readonly _policyPreview = el('div', { attrs: { 'data-teelab': 'policy-preview' } });
  private readonly _uploadButton = Object.assign(
    el('button', { className: 'jp-mod-styled jp-mod-accept', attrs: { type: 'submit' } }, 'Upload'),
    { disabled: true }
  );
  private readonly _progressText = el('span', { className: 'teelab-progress-text' });
  private readonly _message = el('div', { className: 'teelab-message', attrs: { 'data-teelab': 'message', role: 'status' } });
  private readonly _list = el('div', { className: 'teelab-dataset-list', attrs: { 'data-teelab': 'datasets' } });
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function percent(sent: number, total: number): string {
  return total ? `${Math.floor((100 * sent) / total)}%` : `${formatBytes(sent)}`;
}

function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}
