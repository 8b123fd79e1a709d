// The one place that turns an attestation state into the badge's colour and words.

import { BadgeLevel } from '../api';
import { AttestationState } from './model';

export const SIMULATED_TEXT = 'Simulated TEE — not confidential';

export interface IBadgeView {
  level: BadgeLevel | 'pending';
  text: string;
  detail: string;
}

export function badgeView(state: AttestationState): IBadgeView | null {
  switch (state.kind) {
    case 'none':
      return null;
    case 'pending':
      return { level: 'pending', text: 'Attesting…', detail: `verifying the ${state.kernelName} kernel` };
    case 'missing':
      return { level: 'failed', text: 'Not attested', detail: state.message };
    case 'record': {
      const { record } = state;
      // Belt and braces: whatever the server's badge says, a simulated TEE is never shown as attested.
      if (record.simulated && record.badge.level !== 'failed') {
        return { level: 'simulated', text: SIMULATED_TEXT, detail: record.badge.detail };
      }
      return { ...record.badge };
    }
  }
}
