// Queues: depth, running, retrying, rates, oldest wait; the next tasks of each queue.

import {api} from '../api.js';
import {el, fmtDuration, fmtNum, fmtRate, jobLink, renderIfChanged, table} from '../dom.js';
import {Page} from '../page.js';

function queueRow(q) {
  return el('tr', {testid: 'queue-row', dataset: {queue: q.name}},
    el('td', {class: 'strong'}, q.name),
    el('td', {class: 'num', testid: 'queue-depth'}, fmtNum(q.depth)),
    el('td', {class: 'num', testid: 'queue-running'}, fmtNum(q.running)),
    el('td', {class: 'num'}, fmtNum(q.retrying)),
    el('td', {class: 'num'}, `${fmtRate(q.succeeded_per_s)} /s`),
    el('td', {class: ['num', q.failed_per_s && 'tone-bad']}, `${fmtRate(q.failed_per_s)} /s`),
    el('td', {class: 'num'}, q.oldest_wait_s ? fmtDuration(q.oldest_wait_s) : '—'));
}

function peek(q) {
  const rows = (q.peek || []).map((p) => el('tr', {testid: 'peek-row'},
    el('td', null, jobLink(p.job)),
    el('td', {class: 'num'}, p.index ?? p.task ?? '—'),
    el('td', {class: 'ellipsis', title: p.name || ''}, p.name || '—'),
    el('td', {class: 'num'}, p.priority ?? 0),
    el('td', {class: 'num'}, fmtDuration(p.waiting_s))));
  return el('section', {class: 'panel', testid: 'queue-peek', dataset: {queue: q.name}},
    el('h2', null, `Next in ${q.name}`),
    table(['Job', ['Task', 'num'], 'Name', ['Priority', 'num'], ['Waiting', 'num']], rows,
      {empty: 'Nothing waiting.'}));
}

function render(data) {
  const queues = data.queues || [];
  const dead = data.dead_letters || 0;
  return [
    table(['Queue', ['Depth', 'num'], ['Running', 'num'], ['Retrying', 'num'], ['Succeeded', 'num'],
      ['Failed', 'num'], ['Oldest wait', 'num']], queues.map(queueRow),
    {testid: 'queues-table', empty: 'No queues yet: they appear with the first job.'}),
    el('p', {class: 'dead-letter-line'},
      el('a', {href: '#/dead-letters', testid: 'dead-letter-link', class: dead ? 'tone-bad' : null},
        `${fmtNum(dead)} dead letter${dead === 1 ? '' : 's'} →`)),
    el('div', {class: 'peek-grid'}, queues.map(peek)),
  ];
}

export class QueuesPage extends Page {
  mount(root) {
    this.body = el('div');
    root.append(el('div', {class: 'page-head'}, el('h1', {testid: 'page-title'}, 'Queues')), this.body);
  }

  async load() {
    const data = await api('/api/v1/queues', {signal: this.signal});
    renderIfChanged(this.body, data, render);
  }
}
