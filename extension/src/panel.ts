/**
 * The Nexus side panel: controller picker, cluster summary, one utilization bar per GPU, the session table and query
 * stage budgets, polled every second while visible. DOM and polling only; all parsing and formatting is in model.ts.
 */
import { Poll } from '@lumino/polling';
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { Action, NexusApiError, postAction, requestAPI } from './api';
import {
  chooseSelection,
  controllerLabel,
  formatAge,
  formatMs,
  formatNum,
  formatP99,
  formatPct,
  goneMessage,
  IControllerInfo,
  IStateView,
  keepsStale,
  parseControllers,
  parseState,
  summaryLines
} from './model';
import { carryLastKnown, markStale, staleMessage, staleTitle } from './stale';

export const POLL_INTERVAL_MS = 1000;
/** A state request unanswered this long fails, and the panel shows the last state as stale meanwhile. */
export const STATE_TIMEOUT_MS = 2500;

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className?: string,
  text?: string
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

export interface INexusPanelOptions {
  /** Open the dashboard of a controller (the plugin runs it on its notebook's kernel, in a view beside it). */
  openDashboard: (controller: IControllerInfo) => Promise<void>;
}

export class NexusPanel extends Widget {
  constructor(options: INexusPanelOptions) {
    super();
    this._options = options;
    this.addClass('jp-NexusPanel');
    this.id = 'nexus-lab-panel';

    const header = el('div', 'jp-NexusPanel-header');
    header.appendChild(el('h2', 'jp-NexusPanel-title', 'Nexus'));
    this._select = el('select', 'jp-NexusPanel-select');
    this._select.setAttribute('aria-label', 'Controller');
    this._select.addEventListener('change', () => {
      this._selected = this._select.value || null;
      this._state = null;
      this._last = null;
      void this.refresh();
    });
    header.appendChild(this._select);
    this.node.appendChild(header);

    const buttons = el('div', 'jp-NexusPanel-buttons');
    this._dashboardButton = this._button('Dashboard', 'dashboard', () => this.openDashboard());
    this._replanButton = this._button('Re-plan now', 'replan', () => this.act('replan'));
    this._pauseButton = this._button('Pause', 'pause', () => this.act(this._state?.paused ? 'resume' : 'pause'));
    buttons.append(this._dashboardButton, this._replanButton, this._pauseButton);
    this.node.appendChild(buttons);

    this._message = el('div', 'jp-NexusPanel-message');
    this._message.setAttribute('role', 'status');
    this.node.appendChild(this._message);
    this._body = el('div', 'jp-NexusPanel-body');
    this.node.appendChild(this._body);

    this._poll = new Poll({
      auto: false,
      factory: () => this.refresh(),
      frequency: { interval: POLL_INTERVAL_MS, backoff: false },
      name: 'nexus-lab:panel',
      standby: () => (this.isVisible ? false : 'when-hidden')
    });
    this._render();
  }

  get selected(): IControllerInfo | null {
    return this._controllers.find(c => c.id === this._selected) ?? null;
  }

  get controllers(): IControllerInfo[] {
    return this._controllers;
  }

  /** Fetch the list, then the selected controller's state; errors go to the panel, never a blank view. */
  async refresh(): Promise<void> {
    try {
      this._controllers = parseControllers(await requestAPI('controllers'));
    } catch (error) {
      this._setError(error);
      this._render();
      return;
    }
    const previous = this._selected;
    this._selected = chooseSelection(this._controllers, this._selected);
    if (previous !== null && this._selected !== previous) {
      this._lastGone = previous;
    }
    const selected = this.selected;
    if (this._last !== null && this._last.id !== this._selected) {
      this._last = null;
    }
    if (selected === null) {
      this._state = null;
      this._error = null;
    } else if (!selected.alive) {
      this._state = null;
      this._last = null;
      this._error = goneMessage(selected);
    } else {
      const id = selected.id;
      try {
        const raw = await requestAPI(`controllers/${id}/state`, {}, STATE_TIMEOUT_MS);
        const now = Date.now();
        this._state = carryLastKnown(this._last?.view ?? null, parseState(raw), now);
        this._last = { id, view: this._state, at: now };
        this._error = null;
        this._lastGone = null;
      } catch (error) {
        if (error instanceof NexusApiError && keepsStale(error.status) && this._last !== null) {
          // no answer, or a busy or failing controller: its last known state, marked stale with its age
          this._state = markStale(this._last.view, this._last.at, Date.now(), error.message);
          this._error = null;
        } else {
          this._state = null;
          this._last = null;
          this._setError(error);
        }
      }
    }
    this._render();
  }

  async act(action: Action): Promise<void> {
    const id = this._selected;
    if (id === null) {
      return;
    }
    try {
      await postAction(id, action);
    } catch (error) {
      this._setError(error);
      this._render();
      return;
    }
    await this.refresh();
  }

  async openDashboard(): Promise<void> {
    const c = this.selected;
    if (c === null) {
      return;
    }
    try {
      await this._options.openDashboard(c);
    } catch (error) {
      this._setError(error);
      this._render();
    }
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    void this._poll.start();
    void this._poll.refresh();
  }

  protected onAfterHide(msg: Message): void {
    super.onAfterHide(msg);
    void this._poll.stop();
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._poll.dispose();
    super.dispose();
  }

  private _button(label: string, action: string, onClick: () => void): HTMLButtonElement {
    const b = el('button', 'jp-NexusPanel-button jp-mod-styled', label);
    b.dataset.action = action;
    b.addEventListener('click', onClick);
    return b;
  }

  private _setError(error: unknown): void {
    this._error = error instanceof NexusApiError || error instanceof Error ? error.message : String(error);
  }

  private _render(): void {
    // the picker: keep the user's selection, list every controller by name
    const ids = this._controllers.map(controllerLabel).join(',');
    if (ids !== this._renderedIds) {
      this._select.replaceChildren(
        ...this._controllers.map(c => {
          const o = el('option', undefined, controllerLabel(c));
          o.value = c.id;
          return o;
        })
      );
      this._renderedIds = ids;
    }
    this._select.value = this._selected ?? '';
    this._select.disabled = this._controllers.length === 0;
    const hasState = this._state !== null && this._state.staleS === null; // no actions on a controller not answering
    this._dashboardButton.disabled = !this.selected?.alive || this.selected.kernelId === null;
    this._replanButton.disabled = !hasState;
    this._pauseButton.disabled = !hasState;
    this._pauseButton.textContent = this._state?.paused ? 'Resume' : 'Pause';
    this._pauseButton.dataset.action = this._state?.paused ? 'resume' : 'pause';

    let message = '';
    const stale = this._state === null ? null : staleMessage(this._state);
    if (this._error !== null) {
      message = this._error;
    } else if (stale !== null) {
      message = stale;
    } else if (this._selected === null) {
      message =
        this._lastGone !== null
          ? 'The controller was closed; no controller is running. Start one with nexus_lab.start(...) in a notebook.'
          : 'No controller is running. Start one with nexus_lab.start(...) in a notebook.';
    } else if (this._lastGone !== null) {
      message = 'The previously selected controller was closed.';
    }
    this._message.textContent = message;
    this._message.classList.toggle('jp-mod-error', this._error !== null);
    this._message.classList.toggle('jp-mod-stale', this._error === null && stale !== null);
    this._body.classList.toggle('jp-mod-stale', this._state?.staleS !== null && this._state?.staleS !== undefined);
    this._message.hidden = message === '';
    this._body.replaceChildren(...(this._state ? renderState(this._state) : []));
  }

  private _options: INexusPanelOptions;
  private _select: HTMLSelectElement;
  private _dashboardButton: HTMLButtonElement;
  private _replanButton: HTMLButtonElement;
  private _pauseButton: HTMLButtonElement;
  private _message: HTMLDivElement;
  private _body: HTMLDivElement;
  private _poll: Poll;
  private _controllers: IControllerInfo[] = [];
  private _selected: string | null = null;
  private _state: IStateView | null = null;
  private _error: string | null = null;
  private _lastGone: string | null = null;
  /** The selected controller's last answered state and when it came (ms), shown as stale while it does not answer. */
  private _last: { id: string; view: IStateView; at: number } | null = null;
  private _renderedIds = '';
}

function section(title: string): [HTMLElement, HTMLElement] {
  const s = el('section', 'jp-NexusPanel-section');
  s.appendChild(el('h3', 'jp-NexusPanel-sectionTitle', title));
  return [s, s];
}

function table(headers: string[], rows: (string | HTMLElement)[][], className: string): HTMLTableElement {
  const t = el('table', `jp-NexusPanel-table ${className}`);
  const head = el('tr');
  headers.forEach(h => head.appendChild(el('th', undefined, h)));
  t.appendChild(el('thead')).appendChild(head);
  const body = t.appendChild(el('tbody'));
  for (const r of rows) {
    const tr = body.appendChild(el('tr'));
    for (const cell of r) {
      const td = tr.appendChild(el('td'));
      if (typeof cell === 'string') {
        td.textContent = cell;
      } else {
        td.appendChild(cell);
      }
    }
  }
  return t;
}

/** The selected controller's state as DOM nodes (rebuilt every poll: small, and never stale). */
export function renderState(v: IStateView): HTMLElement[] {
  const [summary] = section('Cluster');
  const dl = summary.appendChild(el('dl', 'jp-NexusPanel-summary'));
  for (const [k, val] of summaryLines(v)) {
    dl.appendChild(el('dt', undefined, k));
    const dd = dl.appendChild(el('dd', undefined, val));
    dd.dataset.field = k;
  }
  if (v.dashboardLink) {
    const a = el('a', 'jp-NexusPanel-link', 'Dask dashboard');
    a.href = v.dashboardLink;
    a.target = '_blank';
    a.rel = 'noopener';
    summary.appendChild(a);
  }

  const [gpus] = section(`GPU utilization (${v.gpus.length})`);
  const bars = gpus.appendChild(el('div', 'jp-NexusPanel-bars'));
  for (const g of v.gpus) {
    const row = bars.appendChild(el('div', 'jp-NexusPanel-bar'));
    row.title = `${g.worker}${g.sessions.length ? `: ${g.sessions.join(', ')}` : ''}`;
    if (g.staleS !== null) {
      row.classList.add('jp-mod-stale');
      row.dataset.staleS = String(Math.floor(g.staleS));
      row.title += ` (${staleTitle(g.staleS)})`;
    }
    row.appendChild(el('span', 'jp-NexusPanel-barLabel', `GPU ${g.label}`));
    const track = row.appendChild(el('span', 'jp-NexusPanel-barTrack'));
    const fill = track.appendChild(el('span', 'jp-NexusPanel-barFill'));
    fill.style.width = `${Math.round((g.utilization ?? 0) * 100)}%`;
    track.setAttribute('role', 'meter');
    track.setAttribute('aria-valuemin', '0');
    track.setAttribute('aria-valuemax', '1');
    track.setAttribute('aria-valuenow', String(g.utilization ?? 0));
    row.appendChild(el('span', 'jp-NexusPanel-barValue', formatPct(g.utilization) + (g.staleS === null ? '' : '*')));
  }

  const [sessions] = section(`Sessions (${v.sessions.length})`);
  const wrap = sessions.appendChild(el('div', 'jp-NexusPanel-scroll'));
  wrap.appendChild(
    table(
      ['session', 'rate/s', 'good/s', 'p99/SLO ms', 'drops'],
      v.sessions.map(s => {
        const who = el('div', 'jp-NexusPanel-session');
        who.appendChild(el('div', 'jp-NexusPanel-sessionName', s.name));
        who.appendChild(el('div', 'jp-NexusPanel-sessionModel', s.model));
        const p99 = el('span', `jp-NexusPanel-p99 jp-mod-${s.p99Status}`, formatP99(s.p99Ms, s.sloMs));
        p99.title = `p99 ${formatMs(s.p99Ms)} against an SLO of ${formatMs(s.sloMs)}`;
        if (s.staleS !== null) {
          who.classList.add('jp-mod-stale');
          who.dataset.staleS = String(Math.floor(s.staleS));
          who.title = staleTitle(s.staleS);
          who.appendChild(el('div', 'jp-NexusPanel-staleAge', `stale ${formatAge(s.staleS)}`));
        }
        return [who, formatNum(s.offeredRate), formatNum(s.goodput), p99, String(s.drops)];
      }),
      'jp-NexusPanel-sessions'
    )
  );
  const nodes = [summary, gpus, sessions];
  if (v.queries.length) {
    const [queries] = section(`Queries (${v.queries.length})`);
    for (const q of v.queries) {
      const box = queries.appendChild(el('div', 'jp-NexusPanel-query'));
      box.appendChild(el('div', 'jp-NexusPanel-queryName', `${q.name} · SLO ${formatMs(q.sloMs)}`));
      box.appendChild(
        table(
          ['stage', 'model', 'budget'],
          q.stages.map(st => [st.name, st.model, formatMs(st.budgetMs)]),
          'jp-NexusPanel-stages'
        )
      );
    }
    nodes.push(queries);
  }
  return nodes;
}
