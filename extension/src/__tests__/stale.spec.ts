/**
 * Issue 13: while the cluster was frozen the panel showed only dashes, with no stale-data warning. The panel keeps
 * the last known values, marked stale with their age: when measurements run dry, and when the controller does not
 * answer at all.
 */
import { parseState } from '../model';
import { carryLastKnown, markStale, staleMessage, staleTitle } from '../stale';

function snapshot(utilization: (number | null)[], rate: number | null, p99: number | null) {
  return parseState({
    cluster: { workers: utilization.length, version: 3 },
    gpus: utilization.map((u, i) => ({ gpu: i, worker: `tls://w${i}`, utilization: u, sessions: ['cam'] })),
    sessions: [{ name: 'cam', model: 'vgg16', slo_ms: 100, offered_rate: rate, goodput: rate, p99_ms: p99 }]
  });
}

const T0 = 1_000_000;

describe('stale data', () => {
  it('marks nothing stale while measurements come', () => {
    const a = carryLastKnown(null, snapshot([0.5, 0.25], 80, 40), T0);
    const b = carryLastKnown(a, snapshot([0.6, 0.2], 81, 41), T0 + 1000);
    expect(b.gpus.map(g => [g.utilization, g.staleS, g.measuredAt])).toEqual([
      [0.6, null, T0 + 1000],
      [0.2, null, T0 + 1000]
    ]);
    expect(b.sessions[0].staleS).toBeNull();
    expect(staleMessage(b)).toBeNull();
  });

  it('keeps the last known values with their age when a frozen cluster reports none, not dashes', () => {
    const live = carryLastKnown(null, snapshot([0.5, 0.25], 80, 40), T0);
    const frozen = carryLastKnown(live, snapshot([null, null], null, null), T0 + 7000);
    expect(frozen.gpus.map(g => [g.utilization, g.staleS])).toEqual([
      [0.5, 7],
      [0.25, 7]
    ]);
    const s = frozen.sessions[0];
    expect([s.offeredRate, s.goodput, s.p99Ms, s.p99Status, s.staleS]).toEqual([80, 80, 40, 'ok', 7]);
    expect(staleMessage(frozen)).toBe(
      'Stale: no measurements from 2 GPUs for 7 s; showing the last known values.'
    );
    // still frozen a poll later: the values stay, the age grows from their last measurement
    const later = carryLastKnown(frozen, snapshot([null, null], null, null), T0 + 12000);
    expect(later.gpus[0]).toMatchObject({ utilization: 0.5, staleS: 12 });
    expect(later.sessions[0]).toMatchObject({ goodput: 80, staleS: 12 });
    expect(staleTitle(12)).toBe('stale: last measured 12 s ago');
    // measurements back: current again
    const back = carryLastKnown(later, snapshot([0.1, 0.3], 70, 30), T0 + 13000);
    expect(back.gpus.map(g => g.staleS)).toEqual([null, null]);
    expect(staleMessage(back)).toBeNull();
  });

  it('shows dashes only for what was never measured', () => {
    const first = carryLastKnown(null, snapshot([null], null, null), T0);
    expect(first.gpus[0]).toMatchObject({ utilization: null, staleS: null, measuredAt: null });
    expect(first.sessions[0]).toMatchObject({ goodput: null, staleS: null });
    expect(staleMessage(first)).toBeNull();
  });

  it('shows the last state as stale, with its age and the reason, while the controller does not answer', () => {
    const last = carryLastKnown(null, snapshot([0.5], 80, 40), T0);
    const stale = markStale(last, T0, T0 + 4500, 'no answer within 2.5 s');
    expect(stale.staleS).toBe(4.5);
    expect(stale.gpus[0]).toMatchObject({ utilization: 0.5, staleS: 4.5 });
    expect(stale.sessions[0]).toMatchObject({ goodput: 80, staleS: 4.5 });
    expect(staleMessage(stale)).toBe(
      'Stale: no answer from the controller for 4 s (no answer within 2.5 s); showing its last known state.'
    );
    expect(last.staleS).toBeNull(); // the last answer itself is unchanged
  });
});
