// What a release policy admits, shown before an upload chooses it: which TEEs, whether simulated or debug
// kernels (not confidential) may receive the key, and which identities it pins. Plain text nodes only.

import { el } from '../dom';
import { IPolicy } from './api';

const AMBER = 'teelab-policy-warning teelab-level-simulated';
const TEE_NAMES: Record<string, string> = { sgx: 'SGX', tdx: 'TDX', snp: 'SEV-SNP' };

// The keys that pin a kernel's identity per TEE (docs/policy.md, "Policies that pin nothing").
const IDENTITY: Record<string, (pins: string[]) => boolean> = {
  sgx: pins => pins.includes('mrenclave') || (pins.includes('mrsigner') && pins.includes('isv_prod_id')),
  tdx: pins => pins.includes('mrtd'),
  snp: pins => pins.includes('measurement')
};

export function teeName(table: string): string {
  return TEE_NAMES[table] ?? table;
}

// A policy whose text the server could not read cannot be chosen.
export function usable(policy: IPolicy): boolean {
  return !policy.error && policy.id !== null && policy.id !== undefined;
}

export function policyLabel(policy: IPolicy, suggested: string | null): string {
  const id = policy.id && policy.id !== policy.name ? ` (id ${policy.id})` : '';
  const hint = policy.name === suggested ? ' — the kernel’s policy' : '';
  const sim = policy.allow_simulation ? ' · admits simulated' : '';
  return `${policy.name}${id}${sim}${hint}`;
}

export function describePolicy(policy: IPolicy): HTMLElement {
  const box = el('div', { className: 'teelab-policy', attrs: { 'data-teelab': 'policy-admits' } });
  if (!usable(policy)) {
    box.append(
      el(
        'div',
        { className: 'teelab-policy-warning teelab-level-failed', attrs: { 'data-teelab': 'policy-error' } },
        `This policy cannot be read, so nothing can be sealed under it: ${policy.error ?? 'it has no id'}`
      )
    );
    return box;
  }
  const pins = policy.pins ?? {};
  const tables = Object.keys(pins).sort();
  box.append(
    el('div', { attrs: { 'data-teelab': 'policy-id' } }, `Releases the key under policy ${policy.id}`),
    el(
      'div',
      { attrs: { 'data-teelab': 'policy-tees' } },
      tables.length
        ? `TEE types admitted: ${tables.map(teeName).join(', ')}`
        : 'TEE types admitted: every TEE (the policy names none)'
    )
  );
  if (policy.allow_simulation) {
    box.append(
      el(
        'div',
        { className: AMBER, attrs: { 'data-teelab': 'policy-simulated' } },
        'Admits simulated kernels — not confidential: the key is released to kernels without hardware ' +
          'isolation, whose host can read the data.'
      )
    );
  } else {
    box.append(el('div', { attrs: { 'data-teelab': 'policy-simulated' } }, 'Simulated kernels: refused'));
  }
  if (policy.allow_debug) {
    box.append(
      el(
        'div',
        { className: AMBER, attrs: { 'data-teelab': 'policy-debug' } },
        'Admits debug TEEs — not confidential: the host can read a debug TEE’s memory.'
      )
    );
  }
  const list = el('ul', { className: 'teelab-policy-pins', attrs: { 'data-teelab': 'policy-pins' } });
  for (const table of tables) {
    const keys = pins[table] ?? [];
    const pinned = IDENTITY[table]?.(keys) ?? keys.length > 0;
    list.append(
      el(
        'li',
        {
          className: pinned ? '' : 'teelab-policy-unpinned',
          attrs: { 'data-teelab': 'policy-pin', 'data-tee': table }
        },
        `${teeName(table)}: ${keys.length ? `pins ${keys.join(', ')}` : 'pins nothing'}`,
        pinned ? '' : ' — no identity pinned: any kernel image on this TEE receives the key'
      )
    );
  }
  if (policy.pins_nothing) {
    list.append(
      el(
        'li',
        { className: 'teelab-policy-unpinned', attrs: { 'data-teelab': 'policy-pin' } },
        'Pins no measurement: any kernel that passes the hardware checks receives the key'
      )
    );
  }
  box.append(
    list,
    el(
      'details',
      { className: 'teelab-policy-text' },
      el('summary', {}, 'Policy text (the pinned values)'),
      el('pre', { attrs: { 'data-teelab': 'policy-text' } }, policy.text)
    )
  );
  return box;
}
