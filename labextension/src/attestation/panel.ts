// The attestation panel: everything the gateway verified about the current notebook's kernel — the
// measurement, TCB status, advisories, policy, time, and every check with its result and detail.

import { Widget } from '@lumino/widgets';

import { IAttestation, IKernelRecord } from '../api';
import { append, Child, clear, el } from '../dom';
import { badgeView, SIMULATED_TEXT } from './badge';
import { AttestationModel } from './model';

const TEE_NAMES: Record<string, string> = { sgx: 'SGX', tdx: 'TDX', 'sev-snp': 'SEV-SNP' };

export class AttestationPanel extends Widget {
  constructor(private readonly model: AttestationModel) {
    super();
    this.id = 'teelab-attestation';
    this.addClass('teelab-attestation-panel');
    this.node.setAttribute('data-teelab', 'attestation-panel');
    model.changed.connect(this._render, this);
    this._render();
  }

  dispose(): void {
    this.model.changed.disconnect(this._render, this);
    super.dispose();
  }

  private _render(): void {
    const state = this.model.state;
    const view = badgeView(state);
    clear(this.node);
    if (view === null) {
      append(this.node, el('p', { className: 'teelab-muted' }, 'The current notebook has no teelab kernel.'));
      return;
    }
    append(
      this.node,
      el(
        'div',
        { className: `teelab-banner teelab-level-${view.level}`, attrs: { 'data-teelab': 'banner' } },
        el('div', { className: 'teelab-banner-text' }, view.text),
        el('div', { className: 'teelab-banner-detail' }, view.detail)
      )
    );
    if (state.kind === 'record') {
      append(this.node, ...recordSections(state.record));
    }
  }
}

function recordSections(record: IKernelRecord): Child[] {
  const result = record.attestation;
  return [
    record.simulated ? simulatedWarning() : null,
    record.failure
      ? el(
          'div',
          { className: 'teelab-failure', attrs: { 'data-teelab': 'failure' } },
          el('strong', {}, `Refused at ${record.failure.check}: `),
          record.failure.detail
        )
      : null,
    section('Kernel', facts(kernelFacts(record, result))),
    result ? section('Warnings', warnings(result)) : null,
    result ? section(`Checks (${result.checks.length})`, checksTable(result)) : null,
    result ? section('Claims', claimsTable(result)) : null
  ];
}

function simulatedWarning(): HTMLElement {
  return el(
    'div',
    { className: 'teelab-simulated-warning', attrs: { 'data-teelab': 'simulated-warning', role: 'alert' } },
    el('strong', {}, `⚠ ${SIMULATED_TEXT}. `),
    'This kernel runs the real attestation protocol on a simulated TEE, without hardware isolation: ' +
      'the machine it runs on can read everything in it. Do not use it for confidential data.'
  );
}

function kernelFacts(record: IKernelRecord, result: IAttestation | null): [string, Child][] {
  const rows: [string, Child][] = [
    ['Kernel', `${record.kernel_name} (${record.kernel_id})`],
    ['Backend', record.backend],
    ['Started', record.started_at]
  ];
  if (record.measurement) {
    rows.push([
      record.measurement.name,
      el('code', { className: 'teelab-measurement', attrs: { 'data-teelab': 'measurement' } }, record.measurement.value)
    ]);
  }
  if (result) {
    rows.push(
      ['TEE', result.tee ? TEE_NAMES[result.tee] ?? result.tee : 'not recognised'],
      ['Verdict', result.verdict],
      ['TCB status', result.tcb_status ?? (result.tee === 'sev-snp' ? 'n/a (SEV-SNP reports TCB versions)' : '–')],
      ['Advisories', result.advisory_ids.length ? result.advisory_ids.join(', ') : 'none'],
      ['Policy', result.policy_digest ? `${result.policy_id} (sha256 ${result.policy_digest.slice(0, 16)}…)` : result.policy_id],
      ['Verified at', result.verified_at]
    );
  }
  return rows;
}

function section(title: string, body: HTMLElement | null): HTMLElement | null {
  return body === null ? null : el('section', { className: 'teelab-section' }, el('h3', {}, title), body);
}

function facts(rows: [string, Child][]): HTMLElement {
  return el(
    'table',
    { className: 'teelab-facts' },
    el('tbody', {}, ...rows.map(([name, value]) => el('tr', {}, el('th', {}, name), el('td', {}, value))))
  );
}

function warnings(result: IAttestation): HTMLElement | null {
  if (!result.warnings.length) {
    return null;
  }
  return el('ul', { className: 'teelab-warnings' }, ...result.warnings.map(w => el('li', {}, w)));
}

function checksTable(result: IAttestation): HTMLElement {
  return el(
    'table',
    { className: 'teelab-checks', attrs: { 'data-teelab': 'checks' } },
    el('thead', {}, el('tr', {}, el('th', {}, 'Check'), el('th', {}, 'Result'), el('th', {}, 'Detail'))),
    el(
      'tbody',
      {},
      ...result.checks.map(check =>
        el(
          'tr',
          {
            className: check.passed ? 'teelab-check-passed' : 'teelab-check-failed',
            attrs: { 'data-teelab': 'check', 'data-check': check.name }
          },
          el('td', {}, el('code', {}, check.name)),
          el('td', { className: 'teelab-check-result' }, check.passed ? '✓ passed' : '✗ failed'),
          el('td', {}, check.detail)
        )
      )
    )
  );
}

function claimsTable(result: IAttestation): HTMLElement {
  const rows = Object.entries(result.claims).map(
    ([name, value]): [string, Child] => [name, el('code', {}, String(value))]
  );
  return facts(rows);
}
