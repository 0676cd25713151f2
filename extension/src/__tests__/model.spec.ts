/**
 * Unit tests of the panel's data handling: state and controller-list parsing, selection, errors and formatting.
 */
import {
  chooseSelection,
  controllerLabel,
  describeError,
  formatAge,
  formatMs,
  formatNum,
  formatP99,
  formatPct,
  goneMessage,
  keepsStale,
  parseControllers,
  parseState,
  sloStatus,
  StateError,
  summaryLines,
  totalDrops
} from '../model';

const STATE = {
  cluster: {
    scheduler: 'tcp://127.0.0.1:8786',
    workers: 4,
    gpus_used: 3,
    device: 'titan-x-pascal',
    epoch_s: 30,
    version: 7,
    plan_age_s: 12.6,
    paused: false,
    dashboard_link: 'http://127.0.0.1:8787/status'
  },
  gpus: [
    { gpu: 0, worker: 'tcp://w0', utilization: 0.42, duty_cycle_ms: 80, sessions: ['cam-a', 'cam-b'] },
    { gpu: 1, worker: 'tcp://w1', utilization: 1.7, sessions: [] },
    { gpu: null, worker: 'tcp://w2', utilization: null }
  ],
  sessions: [
    {
      name: 'cam-a',
      model: 'resnet50',
      slo_ms: 100,
      offered_rate: 120.5,
      goodput: 118,
      latency_p99_ms: 95,
      drops: { early_drop: 2, expired: 1 }
    },
    { name: 'cam-b', model: 'ssd', slo_ms: 50, rate: 10, goodput: 9, p99_ms: 80, drops: 5 },
    { name: 'cam-c', model: 'vgg16', slo_ms: 200, rate: 3 }
  ],
  queries: [
    {
      name: 'traffic',
      slo_ms: 400,
      stages: [
        { name: 'detect', model: 'ssd', budget_ms: 250 },
        { name: 'recognize', model: 'resnet50', budget_ms: 150 }
      ]
    }
  ]
};

describe('parseState', () => {
  it('reads the cluster summary', () => {
    const v = parseState(STATE);
    expect(v.workers).toBe(4);
    expect(v.gpusUsed).toBe(3);
    expect(v.device).toBe('titan-x-pascal');
    expect(v.version).toBe(7);
    expect(v.planAgeS).toBeCloseTo(12.6);
    expect(v.paused).toBe(false);
    expect(v.dashboardLink).toBe('http://127.0.0.1:8787/status');
  });

  it('gives one GPU view per GPU with utilization clamped to [0, 1]', () => {
    const v = parseState(STATE);
    expect(v.gpus.map(g => g.label)).toEqual(['0', '1', '–']);
    expect(v.gpus.map(g => g.utilization)).toEqual([0.42, 1, null]);
    expect(v.gpus[0].sessions).toEqual(['cam-a', 'cam-b']);
  });

  it('reads sessions with either field spelling and sums drops by reason', () => {
    const [a, b, c] = parseState(STATE).sessions;
    expect(a).toMatchObject({ offeredRate: 120.5, p99Ms: 95, p99Status: 'warn', drops: 3 });
    expect(b).toMatchObject({ offeredRate: 10, p99Ms: 80, p99Status: 'bad', drops: 5 });
    expect(c).toMatchObject({ goodput: null, p99Ms: null, p99Status: 'unknown', drops: 0 });
  });

  it('reads query stages with their budgets', () => {
    const [q] = parseState(STATE).queries;
    expect(q.sloMs).toBe(400);
    expect(q.stages.map(s => [s.name, s.budgetMs])).toEqual([
      ['detect', 250],
      ['recognize', 150]
    ]);
  });

  it('accepts an empty controller (no plan yet)', () => {
    const v = parseState({ cluster: {} });
    expect(v.gpus).toEqual([]);
    expect(v.sessions).toEqual([]);
    expect(v.device).toBe('–');
    expect(v.planAgeS).toBeNull();
  });

  it('names the field when the shape is wrong', () => {
    expect(() => parseState(null)).toThrow(StateError);
    expect(() => parseState({ gpus: 3 })).toThrow('state.gpus: must be a list');
    expect(() => parseState({ sessions: [1] })).toThrow('state.sessions[0]: must be an object');
    expect(() => parseState({ queries: [{ stages: [null] }] })).toThrow('state.queries[0].stages[0]');
  });
});

describe('controllers', () => {
  const raw = {
    controllers: [
      { id: 'aa', name: 'first', pid: 10, kernel_id: 'k1', created: 1, alive: true },
      { id: 'bb', name: 'second', pid: 11, kernel_id: null, created: 5, alive: true }
    ]
  };

  it('parses the list', () => {
    const cs = parseControllers(raw);
    expect(cs.map(c => [c.id, c.kernelId])).toEqual([
      ['aa', 'k1'],
      ['bb', null]
    ]);
    expect(() => parseControllers({})).toThrow('controllers');
  });

  it('keeps the selection while it lives, else picks the newest', () => {
    const cs = parseControllers(raw);
    expect(chooseSelection(cs, 'aa')).toBe('aa');
    expect(chooseSelection(cs, 'gone')).toBe('bb');
    expect(chooseSelection(cs, null)).toBe('bb');
    expect(chooseSelection([], 'aa')).toBeNull();
  });

  it('keeps a gone controller selected to say so, but never picks one', () => {
    const cs = parseControllers({
      controllers: [
        { id: 'aa', name: 'old', pid: 10, created: 9, alive: false },
        { id: 'bb', name: 'live', pid: 11, created: 5, alive: true }
      ]
    });
    expect(chooseSelection(cs, 'aa')).toBe('aa');
    expect(chooseSelection(cs, null)).toBe('bb');
    expect(chooseSelection([cs[0]], null)).toBeNull();
    expect(goneMessage(cs[0])).toBe('Controller gone: the kernel running old (pid 10) has died; start a new controller.');
    expect(controllerLabel(cs[0])).toBe('old (pid 10) – gone');
    expect(controllerLabel(cs[1])).toBe('live (pid 11)');
  });
});

describe('closed or died (issue 13)', () => {
  const cs = parseControllers({
    controllers: [
      { id: 'aa', name: 'shut', pid: 10, created: 1, alive: false, ended: 'closed' },
      { id: 'bb', name: 'crashed', pid: 11, created: 2, alive: false, ended: 'died' },
      { id: 'cc', name: 'old-server', pid: 12, created: 3, alive: false },
      { id: 'dd', name: 'live', pid: 13, created: 4, alive: true, ended: null }
    ]
  });

  it('reads how a controller ended; a live one has not', () => {
    expect(cs.map(c => c.ended)).toEqual(['closed', 'died', 'died', null]);
  });

  it('says a deliberately shut down kernel closed its controller, and only a crash died', () => {
    expect(goneMessage(cs[0])).toBe(
      'Controller closed: the kernel running shut (pid 10) was shut down; start a new controller.'
    );
    expect(goneMessage(cs[0])).not.toContain('died');
    expect(goneMessage(cs[1])).toContain('has died');
    expect(controllerLabel(cs[0])).toBe('shut (pid 10) – closed');
    expect(controllerLabel(cs[1])).toBe('crashed (pid 11) – gone');
  });

  it('names a closed controller closed in a 410 too', () => {
    const body = { error: 'controller-closed', ended: 'closed', message: "controller 'x' was closed" };
    expect(describeError(410, body, 'Gone')).toBe("Controller closed: controller 'x' was closed");
    expect(describeError(410, { error: 'controller-gone', message: 'has exited' }, 'Gone')).toBe(
      'Controller gone: has exited'
    );
  });

  it('keeps the last state as stale only for transient failures', () => {
    expect([null, 500, 502, 503].map(keepsStale)).toEqual([true, true, true, true]);
    expect([403, 404, 410].map(keepsStale)).toEqual([false, false, false]);
  });
});

describe('errors and formatting', () => {
  it('shows the server message and says when a controller is gone', () => {
    expect(describeError(410, { message: 'pid 5 has exited' }, 'Gone')).toBe('Controller gone: pid 5 has exited');
    expect(describeError(404, { message: 'no controller x' }, 'Not Found')).toBe('Controller closed: no controller x');
    expect(describeError(502, { message: 'did not answer' }, '')).toBe('Error: did not answer');
    expect(describeError(500, 'oops', 'Internal')).toBe('Error 500: Internal');
    expect(describeError(null, null, 'TypeError')).toContain('Cannot reach the Jupyter server');
  });

  it('formats numbers for a narrow panel', () => {
    expect(formatPct(0.426)).toBe('43%');
    expect(formatPct(null)).toBe('–');
    expect(formatNum(12.345)).toBe('12.3');
    expect(formatNum(2500)).toBe('2.5k');
    expect(formatMs(95.04)).toBe('95.0 ms');
    expect(formatMs(250)).toBe('250 ms');
    expect(formatAge(4.9)).toBe('4 s');
    expect(formatAge(125)).toBe('2 min 5 s');
    expect(formatAge(3725)).toBe('1 h 2 min');
    expect(formatAge(null)).toBe('–');
    expect(formatP99(95.4, 100)).toBe('95/100');
    expect(formatP99(null, 100)).toBe('–/100');
  });

  it('classifies p99 against the SLO', () => {
    expect(sloStatus(50, 100)).toBe('ok');
    expect(sloStatus(95, 100)).toBe('warn');
    expect(sloStatus(101, 100)).toBe('bad');
    expect(sloStatus(null, 100)).toBe('unknown');
    expect(totalDrops({ a: 1, b: 2, c: 'x' })).toBe(3);
  });

  it('summarises the cluster in four lines', () => {
    const lines = summaryLines(parseState({ ...STATE, cluster: { ...STATE.cluster, paused: true } }));
    expect(lines).toEqual([
      ['GPUs / workers', '3 / 4'],
      ['Device', 'titan-x-pascal'],
      ['Epoch', '30 s, plan v7'],
      ['Plan age', '12 s (paused)']
    ]);
  });
});
