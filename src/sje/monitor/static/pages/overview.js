// Overview: headline numbers, the throughput chart (uPlot), queue depths.

import {api} from '../api.js';
import {el, fmtClock, fmtNum, fmtRate, renderIfChanged, section, table} from '../dom.js';
import {Page} from '../page.js';

const WINDOWS = [[900, 'last 15 min'], [3600, 'last hour'], [7200, 'last 2 hours']];
const CHART_HEIGHT = 230;

function card(testid, title, value, sub, {href, tone} = {}) {
  const body = [
    el('div', {class: 'card-title'}, title),
    el('div', {class: ['card-value', tone && `tone-${tone}`]}, value),
    el('div', {class: 'card-sub'}, sub),
  ];
  return href
    ? el('a', {class: 'card card-link', href, testid}, body)
    : el('div', {class: 'card', testid}, body);
}

const num = (testid, value) => el('span', {testid, class: 'num'}, fmtNum(value));

function cards(d) {
  const {jobs = {}, tasks = {}, rates = {}, workers = {}} = d;
  const slots = workers.slots || 0;
  const busyPct = slots ? Math.round((100 * (workers.busy || 0)) / slots) : 0;
  return [
    card('card-active-jobs', 'Active jobs', num('active-jobs', jobs.active),
      `${fmtNum(jobs.submitted)} submitted · ${fmtNum(jobs.failed)} failed`),
    card('card-succeeded', 'Succeeded',
      [el('span', {testid: 'succeeded-rate', class: 'num'}, fmtRate(rates.succeeded_per_s)), el('small', null, ' /s')],
      [num('succeeded-total', tasks.succeeded), ' tasks in all'], {tone: 'good'}),
    card('card-failed', 'Failed',
      [el('span', {testid: 'failed-rate', class: 'num'}, fmtRate(rates.failed_per_s)), el('small', null, ' /s')],
      [num('failed-total', tasks.failed), ' failed · ', fmtNum(tasks.dead), ' dead · ',
        fmtNum(tasks.retried), ' retried'],
      {tone: rates.failed_per_s ? 'bad' : null}),
    card('card-workers', 'Workers', [num('workers-alive', workers.alive), el('small', null, ' alive')],
      [num('workers-lost', workers.lost), ' lost'], {href: '#/workers', tone: workers.lost ? 'warn' : null}),
    card('card-slots', 'Busy slots',
      [num('slots-busy', workers.busy), el('small', null, ` / ${fmtNum(slots)}`)], `${busyPct} % in use`),
    card('card-dead-letters', 'Dead letters', num('dead-letters-count', d.dead_letters),
      'tasks that failed for good', {href: '#/dead-letters', tone: d.dead_letters ? 'bad' : null}),
  ];
}

function queueTable(queues) {
  const rows = queues.map((q) => el('tr', {testid: 'queue-row', dataset: {queue: q.name}},
    el('td', null, el('a', {href: '#/queues'}, q.name)),
    el('td', {class: 'num', testid: 'queue-depth'}, fmtNum(q.depth))));
  return table(['Queue', ['Depth', 'num']], rows, {testid: 'queue-depths', empty: 'No queues yet.'});
}

export class OverviewPage extends Page {
  mount(root) {
    this.cards = el('div', {class: 'cards'});
    this.chartBox = el('div', {class: 'chart', testid: 'throughput-chart'});
    this.queues = el('div');
    this.span = el('select', {testid: 'chart-window', onchange: () => this.app.refresh(true)},
      WINDOWS.map(([seconds, label]) => el('option', {value: seconds}, label)));
    root.append(
      el('h1', {testid: 'page-title'}, 'Overview'),
      this.cards,
      el('div', {class: 'split-2-1'},
        el('section', {class: 'panel'},
          el('div', {class: 'panel-head'}, el('h2', null, 'Throughput: tasks per 10 s'),
            el('span', {class: 'spacer'}), this.span),
          this.chartBox),
        section('Queue depth', this.queues)));
    this.resizer = new ResizeObserver(() => this.chart?.setSize(this.chartSize()));
    this.resizer.observe(this.chartBox);
  }

  async load() {
    const data = await api('/api/v1/overview', {params: {window: this.span.value}, signal: this.signal});
    renderIfChanged(this.cards, {...data, series: null, queues: null}, cards);
    this.draw(data.series || []);
    renderIfChanged(this.queues, data.queues || [], queueTable);
  }

  interested(type) {
    return type !== 'worker.heartbeat';
  }

  chartSize() {
    return {width: Math.max(200, this.chartBox.clientWidth), height: CHART_HEIGHT};
  }

  draw(series) {
    const data = [series.map((s) => s.t), series.map((s) => s.succeeded), series.map((s) => s.failed)];
    if (this.chart) {
      this.chart.setData(data);
      return;
    }
    if (!window.uPlot) {
      this.chartBox.textContent = 'The chart library did not load.';
      return;
    }
    // one bar per 10 s slot; failures drawn over successes
    const bars = window.uPlot.paths.bars({size: [0.9, 12], align: 1});
    const count = (_u, v) => (v === null || v === undefined ? '—' : fmtNum(v));
    const line = (label, stroke, fill) => ({label, stroke, fill, width: 1, paths: bars, points: {show: false}, value: count});
    const axis = {stroke: '#57606a', grid: {stroke: '#eef0f3', width: 1}, ticks: {stroke: '#d0d7de', width: 1}};
    this.chart = new window.uPlot({
      ...this.chartSize(),
      scales: {x: {time: true}, y: {range: (_u, _min, max) => [0, Math.max(5, max * 1.1)]}},
      series: [
        {label: 'slot', value: (_u, t) => (t === null || t === undefined ? '—' : fmtClock(t).slice(0, 8))},
        line('succeeded', '#2da44e', 'rgba(45, 164, 78, 0.55)'),
        line('failed', '#d1242f', 'rgba(209, 36, 47, 0.75)'),
      ],
      axes: [axis, {...axis, size: 56}],
      legend: {live: true},
      cursor: {drag: {x: false, y: false}},
    }, data, this.chartBox);
  }

  destroy() {
    super.destroy();
    this.resizer?.disconnect();
    this.chart?.destroy();
    this.chart = null;
  }
}
