// The monitor's REST API (docs/monitor.md), as the page uses it: the session cookie
// authenticates, and every POST/DELETE carries the CSRF value from GET /api/v1/session.

export class ApiError extends Error {
  /** status 0: the monitor did not answer at all. */
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export const session = {csrf: '', auth: ''};

/** Set by app.js: what to do on 401 (show the sign-in form) and when reachability changes. */
export const hooks = {unauthorized() {}, reachable(_ok) {}};

export function query(params) {
  const q = new URLSearchParams();
  for (const [key, value] of Object.entries(params || {})) {
    if (value !== null && value !== undefined && value !== '') q.set(key, String(value));
  }
  const text = q.toString();
  return text ? `?${text}` : '';
}

/** fetch + JSON; throws ApiError with the API's own message. */
export async function api(path, {method = 'GET', params, signal} = {}) {
  const headers = {Accept: 'application/json'};
  if (method !== 'GET') headers['X-SJE-CSRF'] = session.csrf;
  let response;
  try {
    response = await fetch(path + query(params), {method, headers, signal, credentials: 'same-origin'});
  } catch (exc) {
    if (exc.name === 'AbortError') throw exc;
    hooks.reachable(false);
    throw new ApiError(0, 'unreachable', 'monitor unreachable');
  }
  hooks.reachable(true);
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (response.status === 401) {
    hooks.unauthorized();
    throw new ApiError(401, 'unauthorized', body?.error?.message || 'Sign in again.');
  }
  if (!response.ok) {
    const error = body?.error || {};
    throw new ApiError(response.status, error.code || `http_${response.status}`,
      error.message || `${method} ${path} answered HTTP ${response.status}`);
  }
  return body;
}

/** GET /api/v1/session: the CSRF value, or null when not signed in (401). */
export async function loadSession() {
  try {
    const body = await api('/api/v1/session');
    session.csrf = body.csrf;
    session.auth = body.auth;
    return body;
  } catch (exc) {
    if (exc instanceof ApiError && exc.status === 401) return null;
    throw exc;
  }
}

export const enc = encodeURIComponent;
