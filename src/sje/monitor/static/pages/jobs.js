// Jobs: filters kept in the hash (#/jobs?state=failed&q=ab12), a table, server-side paging.

import {api, query} from '../api.js';
import {
  badge, duration, el, jobLink, progressBar, renderIfChanged, shortTask, table, timeAgo,
} from '../dom.js';
import {Page} from '../page.js';

const STATES = ['pending', 'running', 'succeeded', 'failed', 'cancelled', 'timed_out'];
const RANGES = [['all', 'any time', null], ['15m', 'last 15 min', 900], ['1h', 'last hour', 3600],
  ['24h', 'last 24 h', 86400]];
const DEFAULT_LIMIT = 50;
const TYPING_MS = 300;

function jobRow(job) {
  const open = (event) => {
    if (!event.target.closest('a')) location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
  };
  return el('tr', {testid: 'job-row', class: 'clickable', dataset: {job: job.id}, onclick: open},
    el('td', null, jobLink(job.id, 'job-link')),
    el('td', {class: 'name'}, job.name || '—'),
    el('td', {class: 'mono ellipsis', title: job.task}, shortTask(job.task)),
    el('td', null, badge(job.state, 'job-state')),
    el('td', {class: 'progress-cell'}, progressBar(job.tasks, {compact: true})),
    el('td', null, timeAgo(job.created_at)),
    el('td', {class: 'num'}, duration(job.started_at, job.finished_at)));
}

export class JobsPage extends Page {
  constructor(app, params) {
    super(app, params);
    this.back = []; // offsets of the pages before this one (the server's `next` is not arithmetic)
  }

  mount(root) {
    const option = ([value, label]) => el('option', {value}, label);
    this.state = el('select', {testid: 'filter-state', onchange: () => this.filter()},
      option(['', 'any state']), STATES.map((s) => option([s, s.replace('_', ' ')])));
    this.name = el('input', {type: 'search', testid: 'filter-name', placeholder: 'job name',
      oninput: () => this.typed(), onkeydown: (e) => e.key === 'Enter' && this.filter()});
    this.range = el('select', {testid: 'filter-range', onchange: () => this.filter()}, RANGES.map(option));
    this.q = el('input', {type: 'search', testid: 'filter-q', placeholder: 'id prefix', class: 'mono',
      oninput: () => this.typed(), onkeydown: (e) => e.key === 'Enter' && this.filter()});
    this.prev = el('button', {type: 'button', testid: 'prev-page', onclick: () => this.previous()}, '← Previous');
    this.next = el('button', {type: 'button', testid: 'next-page', onclick: () => this.following()}, 'Next →');
    this.info = el('span', {class: 'muted', testid: 'page-info'});
    this.body = el('div');
    root.append(
      el('div', {class: 'page-head'}, el('h1', {testid: 'page-title'}, 'Jobs')),
      el('form', {class: 'filters', onsubmit: (e) => e.preventDefault()},
        el('label', null, 'State ', this.state),
        el('label', null, 'Name ', this.name),
        el('label', null, 'Created ', this.range),
        el('label', null, 'Search ', this.q),
        el('span', {class: 'spacer'}),
        el('div', {class: 'pager'}, this.prev, this.info, this.next)),
      this.body);
    this.syncInputs();
  }

  update(params) {
    if (!params.get('offset')) this.back = [];
    this.params = params;
    this.syncInputs();
    return true;
  }

  get offset() {
    return Number(this.params.get('offset')) || 0;
  }

  get limit() {
    return Number(this.params.get('limit')) || DEFAULT_LIMIT;
  }

  syncInputs() {
    const p = this.params;
    this.state.value = p.get('state') || '';
    this.range.value = p.get('range') || 'all';
    for (const [input, key] of [[this.name, 'name'], [this.q, 'q']]) {
      if (document.activeElement !== input) input.value = p.get(key) || '';
    }
  }

  typed() {
    clearTimeout(this.typing);
    this.typing = setTimeout(() => this.filter(), TYPING_MS);
  }

  /** The filters changed: back to the first page. */
  filter() {
    clearTimeout(this.typing);
    this.back = [];
    this.go({state: this.state.value, name: this.name.value.trim(), range: this.range.value,
      q: this.q.value.trim(), limit: this.params.get('limit'), offset: null});
  }

  go(changes) {
    const params = Object.fromEntries(this.params);
    Object.assign(params, changes);
    if (params.range === 'all') delete params.range;
    if (!Number(params.offset)) delete params.offset;
    const hash = `#/jobs${query(params)}`;
    if (location.hash !== hash) location.hash = hash;
  }

  following() {
    if (this.nextOffset === null || this.nextOffset === undefined) return;
    this.back.push(this.offset);
    this.go({offset: this.nextOffset});
  }

  previous() {
    const offset = this.back.length ? this.back.pop() : Math.max(0, this.offset - this.limit);
    this.go({offset});
  }

  async load() {
    const p = this.params;
    const seconds = RANGES.find(([key]) => key === (p.get('range') || 'all'))?.[2];
    const params = {state: p.get('state'), name: p.get('name'), q: p.get('q'), limit: this.limit,
      offset: this.offset, since: seconds ? Math.floor(Date.now() / 1000 - seconds) : null};
    const data = await api('/api/v1/jobs', {params, signal: this.signal});
    const jobs = data.jobs || [];
    this.nextOffset = data.next;
    this.prev.disabled = this.offset === 0;
    this.next.disabled = data.next === null || data.next === undefined;
    const pageNo = this.back.length + 1;
    this.info.textContent = `page ${this.offset === 0 ? 1 : Math.max(2, pageNo)} · ${jobs.length} jobs`;
    renderIfChanged(this.body, jobs, () => table(
      ['Id', 'Name', 'Task', 'State', 'Progress', 'Created', ['Duration', 'num']],
      jobs.map(jobRow),
      {testid: 'jobs-table', empty: 'No jobs match these filters.', maxHeight: 'page'}));
  }

  interested(type) {
    return type.startsWith('job.');
  }

  destroy() {
    super.destroy();
    clearTimeout(this.typing);
  }
}
