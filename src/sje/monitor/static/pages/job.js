// One job: state, progress (moved by the job's own event stream), actions, failures with their
// tracebacks, the per-task table with each task's logs, and the timeline of its events.

import {api, enc} from '../api.js';
import {
  TASK_STATES, badge, duration, el, errorLine, fill, fmtClock, fmtDuration, fmtNum, progressBar,
  renderIfChanged, section, table, timeAgo,
} from '../dom.js';
import {Page} from '../page.js';

const TASK_PAGE = 100;
const TIMELINE = 200;
const FAILURES_SHOWN = 20;
const TRACEBACKS_OPEN = 1;
const ACTIVE = ['pending', 'running'];
const TASK_FINAL = ['succeeded', 'failed', 'dead', 'cancelled'];
const JOB_EVENTS = ['job.submitted', 'job.started', 'job.reducing', 'job.succeeded', 'job.failed',
  'job.cancelled', 'job.timed_out', 'job.requeued'];

const byIndex = ([a], [b]) => (a === 'r') - (b === 'r') || Number(a) - Number(b);
const taskName = (index) => (index === 'r' || index === 'reduce' ? 'reduce step' : `task ${index}`);

function counts(tasks) {
  return TASK_STATES.filter((s) => tasks?.[s]).map((s) =>
    el('span', {class: 'chip', dataset: {state: s}}, el('i', {class: `dot seg-${s}`}), `${fmtNum(tasks[s])} ${s}`));
}

function failure([index, err], n) {
  const where = [taskName(index), err.attempt && `attempt ${err.attempt}`, err.worker && `on ${err.worker}`];
  return el('article', {class: 'failure', testid: 'task-error', dataset: {task: index}},
    el('div', {class: 'failure-head'},
      el('span', {class: 'error-type', testid: 'task-error-type'}, err.type || 'Error'),
      el('span', {class: 'muted'}, where.filter(Boolean).join(' · '))),
    el('p', {class: 'error-message', testid: 'task-error-message'}, err.message || ''),
    err.traceback
      ? el('details', {open: n < TRACEBACKS_OPEN}, el('summary', null, 'Traceback'),
        el('pre', {class: 'traceback', testid: 'task-error-traceback'}, err.traceback))
      : null);
}

function failures(job) {
  // the task that failed the job first, the others in index order
  const culprit = job.error?.task === undefined ? null : String(job.error.task);
  const entries = Object.entries(job.task_errors || {}).sort(byIndex)
    .sort(([a], [b]) => (b === culprit) - (a === culprit));
  if (!entries.length && !job.error) return null;
  const summary = job.error
    ? el('p', {class: 'failure-summary'},
      `The job ${job.state === 'failed' ? 'failed' : 'ended'} in ${taskName(job.error.task ?? '?')}`,
      job.error.dead_letter ? [' (dead letter ', el('a', {href: '#/dead-letters', class: 'mono'},
        job.error.dead_letter), ')'] : null,
      job.error.error ? `: ${errorLine(job.error.error)}` : '')
    : null;
  const more = entries.length - FAILURES_SHOWN;
  return section(`Errors (${entries.length})`, el('div', {testid: 'failures'}, summary,
    entries.slice(0, FAILURES_SHOWN).map(failure),
    more > 0 ? el('p', {class: 'muted'}, `and ${fmtNum(more)} more: filter the tasks below by state.`) : null));
}

function timelineRow(event, first) {
  const task = event.task === undefined || event.task === null || event.task === '' ? '—' : event.task;
  const kind = (event.type || '').split('.').pop();
  return el('tr', {testid: 'timeline-row'},
    el('td', {class: 'mono', title: new Date(event.at * 1000).toLocaleString()}, fmtClock(event.at)),
    el('td', {class: 'num muted'}, `+${fmtDuration(event.at - first)}`),
    el('td', null, el('span', {class: `event event-${kind}`}, event.type)),
    el('td', {class: 'num'}, task),
    el('td', {class: 'mono ellipsis', title: event.worker || ''}, event.worker || '—'),
    el('td', {class: 'num'}, event.attempt ?? '—'),
    el('td', {class: 'num'}, event.duration_ms !== undefined ? fmtDuration(event.duration_ms / 1000) : '—'));
}

function timeline(events) {
  const first = events.length ? events[0].at : 0;
  const rows = events.slice().reverse().map((e) => timelineRow(e, first));
  return table(['Time', ['Since start', 'num'], 'Event', ['Task', 'num'], 'Worker', ['Attempt', 'num'],
    ['Duration', 'num']], rows, {testid: 'timeline', empty: 'No events yet.', maxHeight: 'short'});
}

function logs(index, data) {
  const entries = data?.logs || [];
  if (!entries.length) return el('p', {class: 'muted'}, `${taskName(index)} printed nothing (yet).`);
  return entries.map((log) => el('div', {class: 'log'},
    el('div', {class: 'log-head'}, `Attempt ${log.attempt ?? '?'}`, log.truncated ? ' (truncated: the start is cut)' : ''),
    el('pre', {class: 'log-text'}, log.text || '')));
}

export class JobPage extends Page {
  constructor(app, params, id) {
    super(app, params);
    this.id = id;
    this.taskState = '';
    this.taskOffset = 0;
    this.selected = null; // task index whose logs show
    this.job = null;
  }

  mount(root) {
    this.title = el('h1', {testid: 'job-name'}, '…');
    this.badge = el('span');
    this.actions = el('div', {class: 'actions'});
    this.meta = el('div', {class: 'meta'});
    this.progress = el('div', {class: 'job-progress'});
    this.counts = el('div', {class: 'chips', testid: 'task-counts'});
    this.failures = el('div');
    this.stateFilter = el('select', {testid: 'task-state-filter', onchange: () => this.filterTasks()},
      el('option', {value: ''}, 'every state'), TASK_STATES.map((s) => el('option', {value: s}, s)));
    this.tasksPrev = el('button', {type: 'button', testid: 'tasks-prev', onclick: () => this.pageTasks(-1)}, '←');
    this.tasksNext = el('button', {type: 'button', testid: 'tasks-next', onclick: () => this.pageTasks(1)}, '→');
    this.tasksInfo = el('span', {class: 'muted'});
    this.tasks = el('div');
    this.logsTitle = el('h2', null, 'Logs');
    this.logs = el('div', {testid: 'task-logs', class: 'logs'},
      el('p', {class: 'muted'}, 'Click a task to see what it printed.'));
    this.timeline = el('div');
    root.append(
      el('div', {class: 'page-head'},
        el('div', {class: 'title-line'}, this.title, this.badge), el('span', {class: 'spacer'}), this.actions),
      this.meta,
      el('div', {class: 'panel'}, this.progress, this.counts),
      this.failures,
      el('div', {class: 'split-3-2'},
        el('section', {class: 'panel'},
          el('div', {class: 'panel-head'}, el('h2', null, 'Tasks'), el('span', {class: 'spacer'}),
            this.stateFilter, el('div', {class: 'pager'}, this.tasksPrev, this.tasksInfo, this.tasksNext)),
          this.tasks),
        el('section', {class: 'panel'}, this.logsTitle, this.logs)),
      section('Timeline', this.timeline));
    this.follow();
  }

  /** The job's own stream: `job.progress` snapshots move the bar at once. */
  follow() {
    const source = this.openEvents(`/api/v1/jobs/${enc(this.id)}/events?scope=job`);
    const onProgress = (event) => {
      const data = JSON.parse(event.data);
      if (data.id && data.id !== this.id) return;
      this.applyProgress(data);
      if (!ACTIVE.includes(data.state)) {
        this.closeEvents(source); // the stream ends with the job; do not let it reconnect
        this.app.refresh(true);
      }
    };
    source.addEventListener('job.progress', onProgress);
    source.addEventListener('progress', onProgress); // what the master's stream calls it
    for (const type of JOB_EVENTS) source.addEventListener(type, () => this.app.refresh());
  }

  interested(type, data) {
    if (type.startsWith('worker.')) return type !== 'worker.heartbeat';
    return Boolean(data && data.job === this.id);
  }

  applyProgress(data) {
    if (!this.job) return;
    this.job = {...this.job, state: data.state ?? this.job.state, tasks: data.tasks ?? this.job.tasks};
    this.renderStatus(this.job);
  }

  async load() {
    const base = `/api/v1/jobs/${enc(this.id)}`;
    const signal = this.signal;
    const taskParams = {state: this.taskState, offset: this.taskOffset, limit: TASK_PAGE};
    const [job, tasks, events] = await Promise.all([
      api(base, {params: {errors: 1}, signal}),
      api(`${base}/tasks`, {params: taskParams, signal}),
      api(`${base}/timeline`, {params: {limit: TIMELINE}, signal}),
    ]);
    this.job = job;
    this.renderJob(job);
    this.renderTasks(tasks);
    renderIfChanged(this.timeline, events.events || [], timeline);
    const row = (tasks.tasks || []).find((t) => String(t.index) === String(this.selected));
    if (this.selected !== null && (!this.logsLoaded || (row && !TASK_FINAL.includes(row.state)))) {
      await this.loadLogs();
    }
  }

  renderJob(job) {
    document.title = `${job.name || job.id} · SJE monitor`;
    this.title.textContent = job.name || job.task || job.id;
    const item = (label, ...value) => el('span', {class: 'meta-item'}, el('span', {class: 'muted'}, `${label} `), ...value);
    renderIfChanged(this.meta, {...job, tasks: null, task_errors: null}, () => [
      item('id', el('span', {class: 'mono', testid: 'job-id'}, job.id)),
      item('task', el('span', {class: 'mono', testid: 'job-task'}, job.task || '—')),
      job.reduce ? item('reduce', el('span', {class: 'mono'}, job.reduce)) : null,
      item('queue', job.queue || 'default'),
      item('priority', String(job.priority ?? 0)),
      item('created', timeAgo(job.created_at)),
      item('ran', duration(job.started_at, job.finished_at)),
    ]);
    this.renderStatus(job);
    renderIfChanged(this.failures, {e: job.task_errors, j: job.error, s: job.state}, () => failures(job));
  }

  renderStatus(job) {
    renderIfChanged(this.badge, job.state, (state) => badge(state, 'job-state'));
    renderIfChanged(this.progress, job.tasks, (tasks) => progressBar(tasks));
    renderIfChanged(this.counts, job.tasks, counts);
    renderIfChanged(this.actions, job.state, (state) => this.buttons(state));
  }

  buttons(state) {
    const base = `/api/v1/jobs/${enc(this.id)}`;
    const out = [];
    if (ACTIVE.includes(state)) {
      const cancel = el('button', {type: 'button', class: 'danger', testid: 'cancel-button', onclick: () =>
        this.act(cancel, () => api(`${base}/cancel`, {method: 'POST'}), {
          confirmText: `Cancel job ${this.id}? Its queued tasks are dropped and its running tasks stopped.`,
          done: 'Job cancelled.',
        })}, 'Cancel job');
      out.push(cancel);
    }
    if (state === 'failed') {
      const retry = el('button', {type: 'button', class: 'primary', testid: 'retry-button', onclick: () =>
        this.act(retry, () => api(`${base}/retry`, {method: 'POST'}), {
          done: (r) => `${fmtNum(r?.requeued ?? 0)} failed tasks queued again.`,
        })}, 'Retry failed tasks');
      out.push(retry);
    }
    return out;
  }

  renderTasks(data) {
    const total = data.total || 0;
    const rows = data.tasks || [];
    this.tasksInfo.textContent = total
      ? `${fmtNum(this.taskOffset + 1)}–${fmtNum(this.taskOffset + rows.length)} of ${fmtNum(total)}`
      : '0';
    this.tasksPrev.disabled = this.taskOffset === 0;
    this.tasksNext.disabled = this.taskOffset + rows.length >= total;
    renderIfChanged(this.tasks, {rows, selected: this.selected}, () => table(
      [['#', 'num'], 'State', ['Attempts', 'num'], ['Ran', 'num'], 'Worker', 'Error'],
      rows.map((t) => this.taskRow(t)),
      {testid: 'tasks-table', empty: this.taskState ? `No ${this.taskState} tasks.` : 'No tasks.', maxHeight: 'medium'}));
  }

  taskRow(task) {
    const index = String(task.index);
    return el('tr', {
      testid: 'task-row', dataset: {task: index}, class: ['clickable', index === String(this.selected) && 'selected'],
      onclick: () => this.select(index),
    },
    el('td', {class: 'num'}, index === 'r' ? 'reduce' : index),
    el('td', null, badge(task.state, 'task-state')),
    el('td', {class: 'num'}, task.attempts ?? '—'),
    el('td', {class: 'num'}, fmtDuration(task.duration_s)),
    el('td', {class: 'mono ellipsis', title: task.worker || ''}, task.worker || '—'),
    el('td', {class: 'ellipsis error-cell', title: errorLine(task.error)}, errorLine(task.error)));
  }

  filterTasks() {
    this.taskState = this.stateFilter.value;
    this.taskOffset = 0;
    this.app.refresh(true);
  }

  pageTasks(direction) {
    this.taskOffset = Math.max(0, this.taskOffset + direction * TASK_PAGE);
    this.app.refresh(true);
  }

  async select(index) {
    this.selected = index;
    this.logsLoaded = false;
    for (const row of this.tasks.querySelectorAll('tr[data-task]')) {
      row.classList.toggle('selected', row.dataset.task === index);
    }
    this.logsTitle.textContent = `Logs of ${taskName(index)}`;
    delete this.logs.dataset.rendered;
    fill(this.logs, el('p', {class: 'muted'}, 'Loading…'));
    try {
      await this.loadLogs();
    } catch (exc) {
      if (exc.name !== 'AbortError') this.app.showError(exc.message);
    }
  }

  async loadLogs() {
    const index = this.selected;
    const data = await api(`/api/v1/jobs/${enc(this.id)}/logs`, {params: {task: index}, signal: this.signal});
    if (index !== this.selected) return;
    this.logsLoaded = true;
    renderIfChanged(this.logs, {index, data}, () => logs(index, data));
  }
}
