/**
 * Stale data in the Nexus panel: when the controller stops answering, or its cluster stops reporting measurements
 * (a frozen cluster's stats windows run dry and read null), the panel keeps the last known values and marks them
 * stale with their age, rather than replacing them with dashes. Pure: no DOM, so jest tests it whole.
 */
import { formatAge, IGpuView, ISessionView, IStateView } from './model';

function ageS(since: number | null, nowMs: number): number | null {
  return since === null ? null : Math.max(0, (nowMs - since) / 1000);
}

function gpuKey(g: IGpuView): string {
  return g.worker || `gpu:${g.label}`;
}

function measuredSession(s: ISessionView): boolean {
  return s.offeredRate !== null || s.goodput !== null || s.p99Ms !== null;
}

/**
 * A new snapshot with the previous one's last known measurements carried into the rows that lost theirs (a GPU
 * whose utilization, a session whose rate, goodput and p99 all read null), each marked with its age. Rows measured
 * now get ``measuredAt = nowMs``; rows never measured keep their nulls (dashes: nothing was ever known).
 */
export function carryLastKnown(prev: IStateView | null, next: IStateView, nowMs: number): IStateView {
  const prevGpus = new Map((prev?.gpus ?? []).map(g => [gpuKey(g), g]));
  const prevSessions = new Map((prev?.sessions ?? []).map(s => [s.name, s]));
  const gpus = next.gpus.map((g): IGpuView => {
    if (g.utilization !== null) {
      return { ...g, measuredAt: nowMs, staleS: null };
    }
    const old = prevGpus.get(gpuKey(g));
    if (old && old.utilization !== null && old.measuredAt !== null) {
      return { ...g, utilization: old.utilization, measuredAt: old.measuredAt, staleS: ageS(old.measuredAt, nowMs) };
    }
    return { ...g, measuredAt: null, staleS: null };
  });
  const sessions = next.sessions.map((s): ISessionView => {
    if (measuredSession(s)) {
      return { ...s, measuredAt: nowMs, staleS: null };
    }
    const old = prevSessions.get(s.name);
    if (old && measuredSession(old) && old.measuredAt !== null) {
      return {
        ...s,
        offeredRate: old.offeredRate,
        goodput: old.goodput,
        p99Ms: old.p99Ms,
        p99Status: old.p99Status,
        measuredAt: old.measuredAt,
        staleS: ageS(old.measuredAt, nowMs)
      };
    }
    return { ...s, measuredAt: null, staleS: null };
  });
  return { ...next, gpus, sessions, staleS: null, staleReason: null };
}

/**
 * The last snapshot, shown while the controller does not answer: all of it stale since ``fetchedAtMs``, every
 * measured row aged from its own measurement.
 */
export function markStale(last: IStateView, fetchedAtMs: number, nowMs: number, reason: string): IStateView {
  return {
    ...last,
    gpus: last.gpus.map(g => ({ ...g, staleS: ageS(g.measuredAt, nowMs) })),
    sessions: last.sessions.map(s => ({ ...s, staleS: ageS(s.measuredAt, nowMs) })),
    staleS: ageS(fetchedAtMs, nowMs),
    staleReason: reason
  };
}

/** The panel's stale-data banner for a snapshot; null when everything shown is current. */
export function staleMessage(v: IStateView): string | null {
  if (v.staleS !== null) {
    const why = v.staleReason ? ` (${v.staleReason})` : '';
    return `Stale: no answer from the controller for ${formatAge(v.staleS)}${why}; showing its last known state.`;
  }
  const ages = [...v.gpus, ...v.sessions].map(r => r.staleS).filter((a): a is number => a !== null);
  if (ages.length === 0) {
    return null;
  }
  const gpus = v.gpus.filter(g => g.staleS !== null).length;
  const what = gpus > 0 ? `${gpus} GPU${gpus === 1 ? '' : 's'}` : 'the cluster';
  return `Stale: no measurements from ${what} for ${formatAge(Math.max(...ages))}; showing the last known values.`;
}

/** A stale cell's tooltip. */
export function staleTitle(staleS: number): string {
  return `stale: last measured ${formatAge(staleS)} ago`;
}
