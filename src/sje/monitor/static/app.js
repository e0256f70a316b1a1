// The SJE monitor dashboard: sign-in, hash routes, live refresh (docs/monitor.md).
//
// No build step, no framework: ES modules served from /static under
// `Content-Security-Policy: default-src 'self'`. Every value from the API is rendered as text
// (dom.js `el`), never parsed as HTML.
//
// data-testid hooks (stable; the browser tests in tests/browser rely on them):
//   chrome     nav-overview nav-jobs nav-workers nav-queues nav-dead-letters (the current one
//              has aria-current="page"), live-status, error-banner, notice, page-title
//   sign-in    signin-form signin-token signin-submit signin-error
//   widgets    progress-bar (aria-valuenow = percent of tasks finished) progress-text; state
//              badges (job-state, task-state, worker-state) carry data-state
//   overview   card-active-jobs card-succeeded card-failed card-workers card-slots
//              card-dead-letters; numbers active-jobs succeeded-rate succeeded-total
//              failed-rate failed-total workers-alive workers-lost slots-busy
//              dead-letters-count; throughput-chart (holds uPlot's canvas) chart-window
//              queue-depths queue-row (data-queue) queue-depth
//   jobs       filter-state filter-name filter-range filter-q jobs-table job-row (data-job)
//              job-link job-state progress-bar prev-page next-page page-info
//   job        job-name job-state job-id job-task progress-bar progress-text task-counts
//              cancel-button retry-button failures task-error (data-task) task-error-type
//              task-error-message task-error-traceback tasks-table task-row (data-task)
//              task-state task-state-filter tasks-prev tasks-next task-logs timeline
//              timeline-row
//   workers    workers-summary workers-table worker-row (data-name, data-state) worker-state
//   queues     queues-table queue-row (data-queue) queue-depth queue-running queue-peek
//              (data-queue) peek-row dead-letter-link
//   dead       dlq-total requeue-all purge-all dlq-table dlq-entry (data-entry)
//              requeue-button purge-button dlq-traceback dlq-prev dlq-next

import {hooks, loadSession} from './api.js';
import {fill, tick} from './dom.js';
import {EVENT_TYPES} from './page.js';
import {DeadLettersPage} from './pages/deadletters.js';
import {JobPage} from './pages/job.js';
import {JobsPage} from './pages/jobs.js';
import {OverviewPage} from './pages/overview.js';
import {QueuesPage} from './pages/queues.js';
import {WorkersPage} from './pages/workers.js';

const ROUTES = [
  {pattern: /^\/?$/, Page: OverviewPage, nav: 'overview', title: 'Overview'},
  {pattern: /^\/jobs\/?$/, Page: JobsPage, nav: 'jobs', title: 'Jobs'},
  {pattern: /^\/jobs\/([^/]+)$/, Page: JobPage, nav: 'jobs', title: 'Job'},
  {pattern: /^\/workers\/?$/, Page: WorkersPage, nav: 'workers', title: 'Workers'},
  {pattern: /^\/queues\/?$/, Page: QueuesPage, nav: 'queues', title: 'Queues'},
  {pattern: /^\/dead-letters\/?$/, Page: DeadLettersPage, nav: 'dead-letters', title: 'Dead letters'},
];

/** At most one refresh per THROTTLE_MS per page; a refresh at least every FALLBACK_MS. */
const THROTTLE_MS = 500;
const FALLBACK_MS = 2000;

const $ = (id) => document.getElementById(id);

// -- banner and notices ------------------------------------------------------------------------

const errors = {connection: '', action: ''};

function renderBanner() {
  const text = errors.connection || errors.action;
  $('banner').hidden = !text;
  $('banner-text').textContent = text;
  $('banner-close').hidden = Boolean(errors.connection);
}

function showError(text, kind = 'action') {
  errors[kind] = text;
  renderBanner();
}

function clearError(kind) {
  if (errors[kind]) {
    errors[kind] = '';
    renderBanner();
  }
}

let noticeTimer = null;

function notify(text) {
  $('notice').textContent = text;
  $('notice').hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => ($('notice').hidden = true), 6000);
}

// -- refreshing the current page ----------------------------------------------------------------

class Refresher {
  constructor(page) {
    this.page = page;
    this.last = -Infinity;
    this.timer = null;
    this.running = false;
    this.again = false;
    this.stopped = false;
  }

  /** Ask for a refresh: runs now, or when THROTTLE_MS has passed since the last one. */
  request(soon = false) {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    if (this.timer) return;
    const wait = soon ? 0 : Math.max(0, this.last + THROTTLE_MS - performance.now());
    this.timer = setTimeout(() => this.run(), wait);
  }

  async run() {
    this.timer = null;
    if (this.stopped) return;
    this.running = true;
    this.last = performance.now();
    try {
      await this.page.load();
      clearError('connection');
    } catch (exc) {
      if (exc.name !== 'AbortError' && !this.stopped) loadFailed(exc);
    } finally {
      this.running = false;
      if (this.again) {
        this.again = false;
        this.request();
      }
    }
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
  }
}

function loadFailed(exc) {
  if (exc.status === 401) return; // the sign-in form is showing
  if (exc.status === 0) showError('monitor unreachable: retrying every 2 s', 'connection');
  else if (exc.status === 503) showError(`broker unreachable: ${exc.message}`, 'connection');
  else if (exc.status) showError(exc.message, 'action');
  else {
    showError(`The page failed: ${exc.message}`, 'action');
    console.error(exc);
  }
}

// -- routing -----------------------------------------------------------------------------------

let current = null; // {route, key, page, refresher}

const app = {
  refresh: (soon = false) => current?.refresher.request(soon),
  notify,
  showError: (text) => showError(text, 'action'),
};

function parseHash() {
  const raw = location.hash.replace(/^#/, '') || '/';
  const at = raw.indexOf('?');
  const path = at < 0 ? raw : raw.slice(0, at);
  return {path, params: new URLSearchParams(at < 0 ? '' : raw.slice(at + 1))};
}

function route() {
  const {path, params} = parseHash();
  let match = null;
  const found = ROUTES.find((r) => (match = r.pattern.exec(path)));
  if (!found) {
    location.replace('#/');
    return;
  }
  const key = path;
  if (current && current.key === key && current.page.update(params)) {
    current.refresher.request(true);
    return;
  }
  leavePage();
  clearError('action');
  let arg = match[1];
  try {
    arg = arg === undefined ? arg : decodeURIComponent(arg);
  } catch {
    // not percent-encoded after all: use it as it is
  }
  const page = new found.Page(app, params, arg);
  const main = fill($('main'));
  main.dataset.page = found.nav;
  page.mount(main);
  document.title = `${found.title} · SJE monitor`;
  for (const link of document.querySelectorAll('#nav a')) {
    const on = link.dataset.nav === found.nav;
    link.classList.toggle('current', on);
    if (on) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  current = {key, page, refresher: new Refresher(page)};
  current.refresher.request(true);
}

function leavePage() {
  if (current) {
    current.refresher.stop();
    current.page.destroy();
    current = null;
  }
}

// -- live updates --------------------------------------------------------------------------------

let globalEvents = null;
let timers = [];

function openGlobalEvents() {
  const source = new EventSource('/api/v1/events');
  const onEvent = (event) => {
    let data = null;
    try {
      data = JSON.parse(event.data);
    } catch {
      data = null;
    }
    if (current && current.page.interested(event.type, data)) current.refresher.request();
  };
  for (const type of EVENT_TYPES) source.addEventListener(type, onEvent);
  source.onmessage = onEvent;
  source.onopen = () => setLive(true);
  source.onerror = () => setLive(false);
  return source;
}

function setLive(on) {
  const status = $('live-status');
  status.textContent = on ? 'live' : 'reconnecting…';
  status.classList.toggle('off', !on);
  status.title = on ? 'Following the event stream' : 'The event stream is reconnecting';
}

// -- sign-in and start -----------------------------------------------------------------------------

function showSignin() {
  stopAll();
  $('app').hidden = true;
  $('signin').hidden = false;
  const failed = new URLSearchParams(location.search).get('signin') === 'failed';
  $('signin-error').hidden = !failed;
  $('signin-token').focus();
}

function stopAll() {
  leavePage();
  globalEvents?.close();
  globalEvents = null;
  for (const timer of timers) clearInterval(timer);
  timers = [];
}

/** The token of a sign-in link must not stay in the address bar or the history. */
function forgetToken() {
  const url = new URL(location.href);
  if (url.searchParams.has('token')) {
    url.searchParams.delete('token');
    history.replaceState(null, '', url.pathname + url.search + url.hash);
  }
}

async function start() {
  forgetToken();
  let signedIn;
  try {
    signedIn = await loadSession();
  } catch {
    showError('monitor unreachable: retrying every 2 s', 'connection');
    setTimeout(start, FALLBACK_MS);
    return;
  }
  clearError('connection');
  if (!signedIn) {
    showSignin();
    return;
  }
  $('signin').hidden = true;
  $('app').hidden = false;
  $('auth-mode').textContent = signedIn.auth === 'none' ? 'no auth (loopback)' : '';
  globalEvents = openGlobalEvents();
  timers.push(setInterval(() => current?.refresher.request(), FALLBACK_MS));
  timers.push(setInterval(tick, 1000));
  route();
}

hooks.unauthorized = showSignin;
hooks.reachable = (ok) => {
  if (!ok) showError('monitor unreachable: retrying every 2 s', 'connection');
};
window.addEventListener('hashchange', () => {
  if (!$('app').hidden) route();
});
$('banner-close').addEventListener('click', () => clearError('action'));
start();
