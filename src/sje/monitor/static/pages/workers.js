// Workers: one row per registered worker; lost ones stay listed (an hour), marked.

import {api} from '../api.js';
import {badge, el, fmtMB, fmtNum, fmtPercent, now, renderIfChanged, table, timeAgo} from '../dom.js';
import {Page} from '../page.js';

const stateOf = (w) => w.state || (w.alive === false ? 'lost' : 'alive');
const list = (value) => (Array.isArray(value) ? value.join(', ') : value || '—');

function busy(w) {
  const slots = w.concurrency || 0;
  const used = w.busy || 0;
  const bar = el('span', {class: 'meter'}, el('span', {style: {width: `${slots ? (100 * Math.min(used, slots)) / slots : 0}%`}}));
  return el('span', {class: 'busy'}, bar, el('span', {class: 'num'}, `${fmtNum(used)} / ${fmtNum(slots)}`));
}

function workerRow(w, at) {
  const state = stateOf(w);
  return el('tr', {testid: 'worker-row', class: state === 'lost' && 'lost', dataset: {name: w.name, state}},
    el('td', {class: 'strong', title: w.id || ''}, w.name || w.id),
    el('td', null, w.host || '—'),
    el('td', {class: 'num mono'}, w.pid ?? '—'),
    el('td', null, list(w.queues)),
    el('td', null, busy(w)),
    el('td', {class: 'num'}, fmtPercent(w.cpu_percent)),
    el('td', {class: 'num'}, fmtMB(w.rss_mb)),
    el('td', {class: 'num'}, fmtNum(w.done)),
    el('td', {class: ['num', w.failed && 'tone-bad']}, fmtNum(w.failed)),
    el('td', null, w.last_seen_s === undefined ? '—' : timeAgo(at - w.last_seen_s)),
    el('td', null, badge(state, 'worker-state')));
}

export class WorkersPage extends Page {
  mount(root) {
    this.summary = el('span', {class: 'muted', testid: 'workers-summary'});
    this.body = el('div');
    root.append(el('div', {class: 'page-head'}, el('h1', {testid: 'page-title'}, 'Workers'),
      el('span', {class: 'spacer'}), this.summary), this.body);
  }

  async load() {
    const data = await api('/api/v1/workers', {signal: this.signal});
    const workers = data.workers || [];
    const at = now();
    const lost = workers.filter((w) => stateOf(w) === 'lost').length;
    const slots = workers.filter((w) => stateOf(w) === 'alive').reduce((n, w) => n + (w.concurrency || 0), 0);
    const used = workers.filter((w) => stateOf(w) === 'alive').reduce((n, w) => n + (w.busy || 0), 0);
    this.summary.textContent = `${workers.length - lost} alive · ${lost} lost · ${used} / ${slots} slots busy`;
    renderIfChanged(this.body, workers, () => table(
      ['Name', 'Host', ['PID', 'num'], 'Queues', 'Busy', ['CPU', 'num'], ['RSS', 'num'],
        ['Done', 'num'], ['Failed', 'num'], 'Last heartbeat', 'State'],
      workers.map((w) => workerRow(w, at)),
      {testid: 'workers-table', empty: 'No worker has registered. Start one with `sje worker --tasks MODULE`.',
        maxHeight: 'page'}));
  }

  interested(type) {
    return type.startsWith('worker.') || type.startsWith('task.');
  }
}
