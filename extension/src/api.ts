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

export async function requestAPI(path: string, init: RequestInit = {}): Promise<unknown> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'nexus', 'api', path);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new NexusApiError(describeError(null, null, String(error)), null);
  }
  const text = await response.text();
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
