/**
 * Calls to the server extension's `/nexus/api` routes through Jupyter's ServerConnection (token and XSRF included).
 * Transport only: parsing lives in model.ts; no widgets here.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { describeError } from './model';

/** A failed request, with the message the panel shows and the status (null: the server itself is unreachable). */
export class NexusApiError extends Error {
  constructor(
    message: string,
    readonly status: number | null
  ) {
    super(message);
  }
}

/**
 * A JSON request to `/nexus/api/<path>`; with `timeoutMs`, a request that gets no answer in time fails (status
 * null) instead of holding the panel's poll.
 */
export async function requestAPI(path: string, init: RequestInit = {}, timeoutMs?: number): Promise<unknown> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'nexus', 'api', path);
  const abort = timeoutMs === undefined ? null : new AbortController();
  const timer = abort === null ? null : setTimeout(() => abort.abort(), timeoutMs);
  let response: Response;
  let text: string;
  try {
    response = await ServerConnection.makeRequest(url, abort ? { ...init, signal: abort.signal } : init, settings);
    text = await response.text();
  } catch (error) {
    if (abort?.signal.aborted) {
      throw new NexusApiError(`no answer within ${(timeoutMs ?? 0) / 1000} s`, null);
    }
    throw new NexusApiError(describeError(null, null, String(error)), null);
  } finally {
    if (timer !== null) {
      clearTimeout(timer);
    }
  }
  let body: unknown = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) {
    throw new NexusApiError(describeError(response.status, body, response.statusText), response.status);
  }
  return body;
}

export type Action = 'replan' | 'pause' | 'resume';

export function postAction(id: string, action: Action): Promise<unknown> {
  return requestAPI(`controllers/${encodeURIComponent(id)}/${action}`, { method: 'POST' });
}
