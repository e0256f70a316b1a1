// What every page shares: its lifetime (mount → load, load, … → destroy), its event streams
// (closed when the page is left) and how its buttons run actions.

import {ApiError} from './api.js';

/** The event types of the global stream (sje.events); a page says which ones concern it. */
export const EVENT_TYPES = [
  'job.submitted', 'job.started', 'job.progress', 'job.reducing', 'job.succeeded', 'job.failed',
  'job.cancelled', 'job.timed_out', 'job.requeued',
  'task.queued', 'task.started', 'task.succeeded', 'task.retrying', 'task.failed', 'task.dead',
  'task.dead_lettered',
  'worker.joined', 'worker.heartbeat', 'worker.left', 'worker.lost', 'worker.back',
];

export class Page {
  /** ``app``: {refresh(), notify(text), showError(text)}; ``params``: the hash's query. */
  constructor(app, params) {
    this.app = app;
    this.params = params;
    this.sources = [];
    this.controller = new AbortController();
  }

  get signal() {
    return this.controller.signal;
  }

  /** Build the page's fixed parts into ``root`` (the data comes with ``load``). */
  mount(_root) {}

  /** Fetch this page's data and render it; throws ApiError. */
  async load() {}

  /** The hash changed but still names this page: take the new params in place (true) or
   *  let the router build a new page (false). */
  update(_params) {
    return false;
  }

  /** Whether an event of the global stream should refresh this page. */
  interested(type, _data) {
    return type !== 'worker.heartbeat';
  }

  /** An EventSource that lives as long as the page. */
  openEvents(url) {
    const source = new EventSource(url);
    this.sources.push(source);
    return source;
  }

  closeEvents(source) {
    source.close();
    this.sources = this.sources.filter((s) => s !== source);
  }

  destroy() {
    this.controller.abort();
    for (const source of this.sources) source.close();
    this.sources = [];
  }

  /** Run an action from a button: confirm first when ``confirmText``, disable the button while
   *  it runs, show the API's message on failure, then refresh. Returns the response or null. */
  async act(button, action, {confirmText, done} = {}) {
    if (confirmText && !window.confirm(confirmText)) return null;
    if (button) button.disabled = true;
    try {
      const result = await action();
      if (done) this.app.notify(typeof done === 'function' ? done(result) : done);
      return result;
    } catch (exc) {
      if (exc instanceof ApiError && exc.status !== 401) this.app.showError(exc.message);
      else if (!(exc instanceof ApiError)) throw exc;
      return null;
    } finally {
      if (button) button.disabled = false;
      this.app.refresh(true);
    }
  }
}
