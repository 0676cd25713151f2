/**
 * The dashboard view: a main-area tab beside the notebook that runs the controller, showing
 * nexus_lab.lab.show_dashboard(<id>) executed on that notebook's own kernel connection and rendered with that
 * notebook's rendermime, so its ipywidgets manager (which only knows the models created over the notebook's
 * connection) renders the plotly figures. A console on the kernel is only the fallback when no open notebook
 * has the controller's kernel.
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import { MainAreaWidget } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { OutputAreaModel, SimplifiedOutputArea } from '@jupyterlab/outputarea';
import { KernelMessage } from '@jupyterlab/services';
import { LabIcon } from '@jupyterlab/ui-components';
import { Panel, Widget } from '@lumino/widgets';

import {
  closeWidgetsCode,
  consoleDashboardCode,
  dashboardCode,
  dashboardFailure,
  dashboardTitle,
  pickNotebookForKernel,
  widgetModelIds
} from './dashboardlogic';
import { IControllerInfo } from './model';

export interface IDashboardViewOptions {
  controller: IControllerInfo;
  /** The notebook whose kernel runs the controller. */
  host: NotebookPanel;
  icon?: LabIcon;
}

/** One controller's live dashboard, rendered by its host notebook's widget manager. */
export class DashboardView extends MainAreaWidget<Panel> {
  constructor(options: IDashboardViewOptions) {
    const content = new Panel();
    super({ content });
    this._controller = options.controller;
    this._host = options.host;
    this.id = `nexus-dashboard-${++Private.count}`;
    this.addClass('jp-NexusDashboardView');
    this.title.label = dashboardTitle(this._controller);
    this.title.caption = `${dashboardTitle(this._controller)} (kernel of ${this._host.context.path})`;
    this.title.closable = true;
    if (options.icon) {
      this.title.icon = options.icon;
    }
    content.addClass('jp-NexusDashboardView-content');
    content.node.style.overflow = 'auto';
    this._status = new Widget();
    this._status.addClass('jp-NexusDashboardView-status');
    this._status.node.setAttribute('role', 'status');
    this._status.node.style.padding = '4px 8px';
    this._output = new SimplifiedOutputArea({
      // trusted: this is our own code's output, and the ipywidgets renderer is an unsafe (trusted-only) one
      model: new OutputAreaModel({ trusted: true }),
      rendermime: this._host.content.rendermime
    });
    content.addWidget(this._status);
    content.addWidget(this._output);
    this._host.disposed.connect(this._onHostDisposed, this);
    this._host.sessionContext.kernelChanged.connect(this._onKernelChanged, this);
  }

  get controllerId(): string {
    return this._controller.id;
  }

  get host(): NotebookPanel {
    return this._host;
  }

  /** The last run's failure, or null (also null while it runs). */
  get failure(): string | null {
    return this._failure;
  }

  /** Run show_dashboard on the host notebook's kernel; rejects, and says why in the view, when no dashboard shows. */
  async run(): Promise<void> {
    const path = this._host.context.path;
    const kernel = this._host.sessionContext.session?.kernel;
    if (!kernel) {
      throw this._fail(`The notebook ${path} has no kernel; the controller's kernel is ${this._controller.kernelId}.`);
    }
    this._setStatus(`Starting the dashboard of ${this._controller.name} in the kernel of ${path}…`, false);
    const content: KernelMessage.IExecuteRequestMsg['content'] = {
      code: dashboardCode(this._controller.id),
      silent: false,
      store_history: false, // leave the notebook's execution count and Out alone
      allow_stdin: false,
      stop_on_error: true
    };
    // not disposed on done: later messages of this request (the dashboard's thread) still reach the output area
    const future = kernel.requestExecute(content, false);
    this._output.future = future;
    let reply: KernelMessage.IExecuteReplyMsg;
    try {
      reply = await future.done;
    } catch (error) {
      const why = error instanceof Error ? error.message : String(error);
      throw this._fail(`The kernel of ${path} stopped before the dashboard started: ${why}`);
    }
    const failure = dashboardFailure(reply.content, this._output.model.toJSON());
    if (failure !== null) {
      throw this._fail(failure);
    }
    this._failure = null;
    this._setStatus('', false);
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._closeInKernel();
    this._host.disposed.disconnect(this._onHostDisposed, this);
    this._host.sessionContext.kernelChanged.disconnect(this._onKernelChanged, this);
    super.dispose();
  }

  /** Closing the view closes its widgets in the kernel too: the dashboard's refresh thread stops with them. */
  private _closeInKernel(): void {
    const code = closeWidgetsCode(widgetModelIds(this._output.model.toJSON()));
    const kernel = this._host.isDisposed ? null : this._host.sessionContext.session?.kernel;
    if (code === null || !kernel || kernel.isDisposed) {
      return;
    }
    try {
      const future = kernel.requestExecute({ code, silent: true, store_history: false, stop_on_error: false });
      future.done.catch(() => undefined).finally(() => future.dispose());
    } catch {
      // a kernel shutting down: its threads go with it
    }
  }

  private _fail(message: string): Error {
    this._failure = message;
    this._setStatus(message, true);
    return new Error(message);
  }

  private _setStatus(message: string, error: boolean): void {
    const node = this._status.node;
    node.textContent = message;
    node.classList.toggle('jp-mod-error', error);
    node.style.color = error ? 'var(--jp-error-color1)' : 'var(--jp-ui-font-color2)';
    this._status.setHidden(message === '');
  }

  private _onHostDisposed(): void {
    // the notebook's widget manager goes with it: the figures could no longer update
    this.dispose();
  }

  private _onKernelChanged(): void {
    const path = this._host.context.path;
    this._fail(`The kernel of ${path} changed: this dashboard no longer updates; open it again from the Nexus panel.`);
  }

  private _controller: IControllerInfo;
  private _host: NotebookPanel;
  private _status: Widget;
  private _output: SimplifiedOutputArea;
  private _failure: string | null = null;
}

/**
 * Show the dashboard of `controller`: in a view split right of the open notebook on its kernel (re-activating one
 * already open there), else in a console on its kernel. Rejects with the reason when no dashboard shows.
 */
export async function openDashboard(
  app: JupyterFrontEnd,
  notebooks: INotebookTracker | null,
  controller: IControllerInfo,
  icon?: LabIcon
): Promise<void> {
  const kernelId = controller.kernelId;
  if (kernelId === null) {
    throw new Error(
      `Controller ${controller.name} runs outside any Jupyter kernel (pid ${controller.pid}); show its dashboard there.`
    );
  }
  const host = notebooks
    ? pickNotebookForKernel(
        notebooks.filter(() => true),
        notebooks.currentWidget,
        kernelId,
        p => p.sessionContext.session?.kernel?.id
      )
    : null;
  if (host === null) {
    return openDashboardInConsole(app, controller, kernelId);
  }
  const key = `${controller.id} ${host.id}`;
  const open = Private.views.get(key);
  if (open && !open.isDisposed && open.failure === null) {
    app.shell.activateById(open.id);
    return;
  }
  open?.dispose();
  const view = new DashboardView({ controller, host, icon });
  Private.views.set(key, view);
  view.disposed.connect(() => {
    if (Private.views.get(key) === view) {
      Private.views.delete(key);
    }
  });
  app.shell.add(view, 'main', { mode: 'split-right', ref: host.id });
  app.shell.activateById(view.id);
  await view.run();
}

/** The fallback: a console on the controller's kernel (e.g. the controller runs in a console, not a notebook). */
async function openDashboardInConsole(app: JupyterFrontEnd, c: IControllerInfo, kernelId: string): Promise<void> {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  const panel: any = await app.commands.execute('console:create', {
    kernelPreference: { id: kernelId },
    insertMode: 'split-right',
    activate: true,
    name: `Nexus: ${c.name}`
  });
  await panel.sessionContext.ready;
  await panel.console.inject(consoleDashboardCode(c.id));
}

namespace Private {
  export let count = 0;
  /** Open views by "<controller id> <notebook panel id>". */
  export const views = new Map<string, DashboardView>();
}
