/**
 * Pure parts of "open dashboard": which open notebook hosts a controller's kernel, the code run there, and how to
 * tell that a run failed. No JupyterLab imports, so jest can test it in node.
 */
import { IControllerInfo } from './model';

/** The MIME type an ipywidgets display carries; a dashboard run without one showed no dashboard. */
export const WIDGET_VIEW_MIMETYPE = 'application/vnd.jupyter.widget-view+json';

/**
 * The notebook whose kernel is `kernelId`: the current one when it matches (several notebooks may share a kernel),
 * else the first match in `candidates`, else null (the caller falls back to a console).
 */
export function pickNotebookForKernel<T>(
  candidates: Iterable<T>,
  current: T | null,
  kernelId: string,
  kernelIdOf: (candidate: T) => string | null | undefined
): T | null {
  if (kernelId === '') {
    throw new Error('kernelId: must be a non-empty kernel id');
  }
  if (current !== null && kernelIdOf(current) === kernelId) {
    return current;
  }
  for (const candidate of candidates) {
    if (kernelIdOf(candidate) === kernelId) {
      return candidate;
    }
  }
  return null;
}

/**
 * Python that displays the dashboard of `controllerId` without binding any name in the user's namespace (it runs in
 * the notebook's own kernel, next to the user's variables).
 */
export function dashboardCode(controllerId: string): string {
  if (controllerId === '') {
    throw new Error('controllerId: must be a non-empty controller id');
  }
  // a JSON string literal is a valid Python string literal
  return (
    '__import__("IPython.display", fromlist=["display"]).display(' +
    `__import__("nexus_lab.lab", fromlist=["show_dashboard"]).show_dashboard(${JSON.stringify(controllerId)}))`
  );
}

/** The code the console fallback shows its user (there it is visible, so it reads like a cell). */
export function consoleDashboardCode(controllerId: string): string {
  if (controllerId === '') {
    throw new Error('controllerId: must be a non-empty controller id');
  }
  return `import nexus_lab.lab\nnexus_lab.lab.show_dashboard(${JSON.stringify(controllerId)})`;
}

/** The tab title of a dashboard view. */
export function dashboardTitle(controller: Pick<IControllerInfo, 'name'>): string {
  return `Nexus dashboard — ${controller.name}`;
}

/** The part of an execute reply that says how it went. */
export interface IExecuteReplyContent {
  status: string;
  ename?: string;
  evalue?: string;
}

/** The part of an output that says what it displays. */
export interface IOutputLike {
  output_type: string;
  data?: Record<string, unknown>;
}

/**
 * Why a dashboard run shows no dashboard, or null when it displayed a widget: a kernel error, an aborted request,
 * or a run that displayed nothing (which would otherwise leave a blank view).
 */
export function dashboardFailure(reply: IExecuteReplyContent, outputs: readonly IOutputLike[]): string | null {
  if (reply.status === 'error') {
    const what = [reply.ename, reply.evalue].filter(s => s !== undefined && s !== '').join(': ');
    return `show_dashboard failed in the kernel${what ? `: ${what}` : ''}`;
  }
  if (reply.status === 'abort' || reply.status === 'aborted') {
    return 'The kernel aborted the dashboard request (an earlier request failed); try again.';
  }
  if (reply.status !== 'ok') {
    return `The kernel answered the dashboard request with status ${JSON.stringify(reply.status)}.`;
  }
  const shown = outputs.some(o => o.data !== undefined && WIDGET_VIEW_MIMETYPE in o.data);
  return shown ? null : 'show_dashboard ran but displayed no widget (is ipywidgets installed in the kernel?)';
}

/** The ipywidgets model ids an output area displays (a dashboard view shows one: the dashboard's top widget). */
export function widgetModelIds(outputs: readonly IOutputLike[]): string[] {
  const ids: string[] = [];
  for (const o of outputs) {
    const view = o.data?.[WIDGET_VIEW_MIMETYPE] as { model_id?: unknown } | undefined;
    if (view && typeof view.model_id === 'string' && view.model_id !== '' && !ids.includes(view.model_id)) {
      ids.push(view.model_id);
    }
  }
  return ids;
}

/**
 * Python that closes those widgets in the kernel when their view closes, so the dashboard's refresh thread stops
 * with it (nexus_lab.lab.close_widget); binds no name in the user's namespace. Null when there is nothing to close.
 */
export function closeWidgetsCode(modelIds: readonly string[]): string | null {
  if (modelIds.length === 0) {
    return null;
  }
  const call = (id: string) =>
    `__import__("nexus_lab.lab", fromlist=["close_widget"]).close_widget(${JSON.stringify(id)})`;
  return modelIds.map(call).join('\n');
}
