/**
 * The Nexus panel's data handling: parsing a controller's `state()` snapshot and the controller list into view
 * models, and formatting numbers for a 300 px sidebar. Pure: no DOM, no JupyterLab imports, so jest tests it whole.
 */

/** One registered controller as `GET /nexus/api/controllers` lists it. */
export interface IControllerInfo {
  id: string;
  name: string;
  pid: number;
  kernelId: string | null;
  created: number;
  alive: boolean;
  /** How a controller that is no longer alive ended: closed (its kernel shut down on purpose) or died (a crash). */
  ended: 'closed' | 'died' | null;
}

export interface IGpuView {
  label: string;
  worker: string;
  /** Busy fraction in [0, 1]; null when not measured yet. */
  utilization: number | null;
  sessions: string[];
  /** When its utilization was last measured (ms since epoch, set by the panel); null: never. */
  measuredAt: number | null;
  /** Seconds since that measurement when the value shown is a last known one (stale); null when current. */
  staleS: number | null;
}

export type SloStatus = 'ok' | 'warn' | 'bad' | 'unknown';

export interface ISessionView {
  name: string;
  model: string;
  sloMs: number | null;
  offeredRate: number | null;
  goodput: number | null;
  p99Ms: number | null;
  /** p99 against the SLO: ok below 90% of it, warn up to it, bad above. */
  p99Status: SloStatus;
  drops: number;
  measuredAt: number | null;
  staleS: number | null;
}

export interface IStageView {
  name: string;
  model: string;
  budgetMs: number | null;
}

export interface IQueryView {
  name: string;
  sloMs: number | null;
  stages: IStageView[];
}

export interface IStateView {
  workers: number | null;
  gpusUsed: number | null;
  device: string;
  epochS: number | null;
  version: number | null;
  planAgeS: number | null;
  paused: boolean;
  dashboardLink: string | null;
  gpus: IGpuView[];
  sessions: ISessionView[];
  queries: IQueryView[];
  /** Seconds since this snapshot was fetched when the controller no longer answers (stale); null when current. */
  staleS: number | null;
  /** Why it is stale: the failed request's message. */
  staleReason: string | null;
}

/** A parse error names the field that is wrong, as the Python side does. */
export class StateError extends Error {}

type Json = { [key: string]: unknown };

function isObject(x: unknown): x is Json {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

function num(x: unknown): number | null {
  return typeof x === 'number' && Number.isFinite(x) ? x : null;
}

function str(x: unknown, fallback = ''): string {
  return typeof x === 'string' ? x : x === null || x === undefined ? fallback : String(x);
}

function first(obj: Json, ...keys: string[]): unknown {
  for (const k of keys) {
    if (obj[k] !== undefined && obj[k] !== null) {
      return obj[k];
    }
  }
  return undefined;
}

function list(obj: Json, key: string, where: string): unknown[] {
  const v = obj[key];
  if (v === undefined || v === null) {
    return [];
  }
  if (!Array.isArray(v)) {
    throw new StateError(`${where}.${key}: must be a list, got ${typeof v}`);
  }
  return v;
}

/** Drops may come as a count or as counts by reason (early drop, expired, ...): the panel shows the total. */
export function totalDrops(x: unknown): number {
  if (typeof x === 'number' && Number.isFinite(x)) {
    return x;
  }
  if (isObject(x)) {
    return Object.values(x).reduce<number>((acc, v) => acc + (num(v) ?? 0), 0);
  }
  return 0;
}

export function sloStatus(p99Ms: number | null, sloMs: number | null): SloStatus {
  if (p99Ms === null || sloMs === null || sloMs <= 0) {
    return 'unknown';
  }
  if (p99Ms > sloMs) {
    return 'bad';
  }
  return p99Ms > 0.9 * sloMs ? 'warn' : 'ok';
}

function clamp01(x: number | null): number | null {
  return x === null ? null : Math.min(1, Math.max(0, x));
}

/** Parse a controller's `state()` snapshot; tolerant of missing optional fields, strict about shapes. */
export function parseState(raw: unknown): IStateView {
  if (!isObject(raw)) {
    throw new StateError('state: must be an object');
  }
  const cluster = raw.cluster ?? {};
  if (!isObject(cluster)) {
    throw new StateError('state.cluster: must be an object');
  }
  const gpus = list(raw, 'gpus', 'state').map((g, i): IGpuView => {
    if (!isObject(g)) {
      throw new StateError(`state.gpus[${i}]: must be an object`);
    }
    const sessions = Array.isArray(g.sessions) ? g.sessions.map(s => str(s)) : [];
    return {
      // a worker outside the plan has gpu null: no GPU number to show
      label: str(first(g, 'gpu', 'id', 'name'), '–'),
      worker: str(g.worker),
      utilization: clamp01(num(g.utilization)),
      sessions,
      measuredAt: null,
      staleS: null
    };
  });
  const sessions = list(raw, 'sessions', 'state').map((s, i): ISessionView => {
    if (!isObject(s)) {
      throw new StateError(`state.sessions[${i}]: must be an object`);
    }
    const sloMs = num(s.slo_ms);
    const p99Ms = num(first(s, 'p99_ms', 'latency_p99_ms'));
    return {
      name: str(first(s, 'name', 'session'), `session-${i}`),
      model: str(s.model),
      sloMs,
      offeredRate: num(first(s, 'offered_rate', 'rate')),
      goodput: num(s.goodput),
      p99Ms,
      p99Status: sloStatus(p99Ms, sloMs),
      drops: totalDrops(s.drops),
      measuredAt: null,
      staleS: null
    };
  });
  const queries = list(raw, 'queries', 'state').map((q, i): IQueryView => {
    if (!isObject(q)) {
      throw new StateError(`state.queries[${i}]: must be an object`);
    }
    const stages = list(q, 'stages', `state.queries[${i}]`).map((st, j): IStageView => {
      if (!isObject(st)) {
        throw new StateError(`state.queries[${i}].stages[${j}]: must be an object`);
      }
      return { name: str(st.name, `stage-${j}`), model: str(st.model), budgetMs: num(st.budget_ms) };
    });
    return { name: str(q.name, `query-${i}`), sloMs: num(q.slo_ms), stages };
  });
  const link = cluster.dashboard_link;
  return {
    workers: num(cluster.workers),
    gpusUsed: num(first(cluster, 'gpus_used', 'gpus')),
    device: str(first(cluster, 'device', 'device_kind'), '–'),
    epochS: num(cluster.epoch_s),
    version: num(first(cluster, 'version', 'plan_version')),
    planAgeS: num(cluster.plan_age_s),
    paused: cluster.paused === true,
    dashboardLink: typeof link === 'string' && link ? link : null,
    gpus,
    sessions,
    queries,
    staleS: null,
    staleReason: null
  };
}

/** Parse `GET /nexus/api/controllers`. */
export function parseControllers(raw: unknown): IControllerInfo[] {
  if (!isObject(raw) || !Array.isArray(raw.controllers)) {
    throw new StateError('controllers: must be an object with a "controllers" list');
  }
  return raw.controllers.filter(isObject).map(c => ({
    id: str(c.id),
    name: str(c.name, str(c.id)),
    pid: num(c.pid) ?? -1,
    kernelId: typeof c.kernel_id === 'string' ? c.kernel_id : null,
    created: num(c.created) ?? 0,
    alive: c.alive !== false,
    ended: c.alive !== false ? null : c.ended === 'closed' ? 'closed' : 'died'
  }));
}

/**
 * The selection after a refresh of the list: keep the current one while it is listed (alive, or gone so the panel
 * can say its kernel died), else the newest live one.
 */
export function chooseSelection(controllers: IControllerInfo[], current: string | null): string | null {
  if (current !== null && controllers.some(c => c.id === current)) {
    return current;
  }
  const alive = controllers.filter(c => c.alive);
  if (alive.length === 0) {
    return null;
  }
  return alive.reduce((a, b) => (b.created > a.created ? b : a)).id;
}

/** What the panel says about a controller whose process ended: closed on purpose (its kernel was shut down), or
 * died without closing (a crash, a kill). */
export function goneMessage(c: IControllerInfo): string {
  if (c.ended === 'closed') {
    return `Controller closed: the kernel running ${c.name} (pid ${c.pid}) was shut down; start a new controller.`;
  }
  return `Controller gone: the kernel running ${c.name} (pid ${c.pid}) has died; start a new controller.`;
}

/** The picker's label for a controller. */
export function controllerLabel(c: IControllerInfo): string {
  return `${c.name} (pid ${c.pid})${c.alive ? '' : c.ended === 'closed' ? ' – closed' : ' – gone'}`;
}

/** Whether a failed state request leaves the last state worth showing as stale: no answer (null: unreachable or
 * timed out), a proxy error (busy, unreachable) or a controller error; not a closed (404) or dead (410) one. */
export function keepsStale(status: number | null): boolean {
  return status === null || status >= 500;
}

/** What the panel says when a request fails: the server's JSON message when there is one. */
export function describeError(status: number | null, body: unknown, fallback: string): string {
  if (isObject(body) && typeof body.message === 'string' && body.message) {
    const closed = body.ended === 'closed' || body.error === 'controller-closed';
    const what = status === 410 && !closed ? 'Controller gone' : status === 404 || closed ? 'Controller closed' : 'Error';
    return `${what}: ${body.message}`;
  }
  if (status === null) {
    return `Cannot reach the Jupyter server: ${fallback}`;
  }
  return `Error ${status}: ${fallback}`;
}

export function formatPct(x: number | null): string {
  return x === null ? '–' : `${Math.round(x * 100)}%`;
}

export function formatNum(x: number | null, digits = 1): string {
  if (x === null) {
    return '–';
  }
  return Math.abs(x) >= 1000 ? `${(x / 1000).toFixed(1)}k` : x.toFixed(digits);
}

export function formatMs(x: number | null): string {
  return x === null ? '–' : x >= 100 ? `${Math.round(x)} ms` : `${x.toFixed(1)} ms`;
}

/** p99 against the SLO in one narrow cell, in ms: "95/100". */
export function formatP99(p99Ms: number | null, sloMs: number | null): string {
  const p = p99Ms === null ? '–' : String(Math.round(p99Ms));
  const s = sloMs === null ? '–' : String(Math.round(sloMs));
  return `${p}/${s}`;
}

/** Plan age as a sidebar can show it: 4 s, 2 min 5 s, 1 h 3 min. */
export function formatAge(seconds: number | null): string {
  if (seconds === null || seconds < 0) {
    return '–';
  }
  const s = Math.floor(seconds);
  if (s < 60) {
    return `${s} s`;
  }
  if (s < 3600) {
    return `${Math.floor(s / 60)} min ${s % 60} s`;
  }
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

/** The one-line cluster summary under the controller picker. */
export function summaryLines(v: IStateView): [string, string][] {
  const gpus = v.gpusUsed === null ? '–' : String(v.gpusUsed);
  const workers = v.workers === null ? '–' : String(v.workers);
  return [
    ['GPUs / workers', `${gpus} / ${workers}`],
    ['Device', v.device],
    ['Epoch', v.epochS === null ? '–' : `${v.epochS} s${v.version === null ? '' : `, plan v${v.version}`}`],
    ['Plan age', formatAge(v.planAgeS) + (v.paused ? ' (paused)' : '')]
  ];
}
