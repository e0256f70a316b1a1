// DOM building and formatting. Every value from the API reaches the page as text (text nodes,
// textContent, attributes): job names, errors and logs come from users, so no HTML is ever
// parsed from data.

/** el('a', {href: '#/jobs', class: 'x', testid: 'nav-jobs', onclick: fn}, 'text', child, …) */
export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') node.className = Array.isArray(value) ? value.filter(Boolean).join(' ') : value;
    else if (key === 'testid') node.dataset.testid = value;
    else if (key === 'style') Object.assign(node.style, value); // CSSOM: allowed under the CSP
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key === 'value') node.value = String(value);
    else if (key.startsWith('on') && typeof value === 'function') node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child)); // strings become text nodes
  }
}

/** Replace a container's children. */
export function fill(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

/** Re-render ``node`` with ``render(data)`` only when ``data`` changed since the last call, so
 *  that live refreshes keep selections, open details and scroll positions. */
export function renderIfChanged(node, data, render) {
  const key = JSON.stringify(data);
  if (node.dataset.rendered === key) return false;
  node.dataset.rendered = key;
  fill(node, render(data));
  return true;
}

// -- formatting ------------------------------------------------------------------------------

const NUM = new Intl.NumberFormat('en-US');

export function fmtNum(n) {
  return n === null || n === undefined ? '—' : NUM.format(n);
}

export function fmtRate(perS) {
  if (!perS) return '0';
  if (perS < 0.1) return perS.toFixed(3);
  if (perS < 10) return perS.toFixed(2);
  return NUM.format(Math.round(perS * 10) / 10);
}

export function fmtDuration(s) {
  if (s === null || s === undefined || Number.isNaN(s)) return '—';
  if (s < 0) s = 0;
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

export function fmtAgo(s) {
  if (s < 1) return 'just now';
  if (s < 60) return `${Math.floor(s)} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

export function fmtClock(at) {
  const d = new Date(at * 1000);
  const pad = (n, w = 2) => String(n).padStart(w, '0');
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

export function fmtMB(mb) {
  return mb === null || mb === undefined ? '—' : `${NUM.format(Math.round(mb))} MB`;
}

export function fmtPercent(p) {
  return p === null || p === undefined ? '—' : `${Math.round(p)} %`;
}

export const now = () => Date.now() / 1000;

/** "12 s ago" with the absolute time as tooltip; ``tick()`` keeps the text current. */
export function timeAgo(at) {
  if (!at) return el('span', {class: 'muted'}, '—');
  const date = new Date(at * 1000);
  return el('time', {datetime: date.toISOString(), title: date.toLocaleString(), dataset: {at}},
    fmtAgo(now() - at));
}

/** A duration that keeps growing while ``end`` is unknown (a running job). */
export function duration(start, end) {
  if (!start) return el('span', {class: 'muted'}, '—');
  if (end) return el('span', {class: 'num'}, fmtDuration(end - start));
  return el('span', {class: 'num', dataset: {since: start}}, fmtDuration(now() - start));
}

/** Refresh every relative time and running duration on the page (called once a second). */
export function tick() {
  const t = now();
  for (const node of document.querySelectorAll('time[data-at]')) {
    node.textContent = fmtAgo(t - Number(node.dataset.at));
  }
  for (const node of document.querySelectorAll('[data-since]')) {
    node.textContent = fmtDuration(t - Number(node.dataset.since));
  }
}

// -- widgets ----------------------------------------------------------------------------------

const LABELS = {timed_out: 'timed out'};

/** A coloured state badge (job, task or worker state). */
export function badge(state, testid) {
  const name = state || 'unknown';
  return el('span', {class: `badge badge-${name}`, testid, dataset: {state: name}},
    LABELS[name] || name);
}

/** Task states in the order the progress bar draws them. */
export const TASK_STATES = ['succeeded', 'failed', 'dead', 'cancelled', 'running', 'retrying', 'queued'];
const FINISHED = ['succeeded', 'failed', 'dead', 'cancelled'];

export function progressOf(tasks) {
  const total = tasks?.total || 0;
  const done = FINISHED.reduce((sum, s) => sum + (tasks?.[s] || 0), 0);
  // floor: a bar never shows 100 % before the last task finished
  const percent = total ? Math.floor((100 * Math.min(done, total)) / total) : 0;
  return {total, done, percent};
}

/** A segmented progress bar: one coloured segment per task state. */
export function progressBar(tasks, {compact = false} = {}) {
  const {total, done, percent} = progressOf(tasks);
  const bar = el('div', {
    class: ['progress', compact && 'progress-compact'], testid: 'progress-bar', role: 'progressbar',
    'aria-valuemin': 0, 'aria-valuemax': 100, 'aria-valuenow': percent,
    title: TASK_STATES.filter((s) => tasks?.[s]).map((s) => `${tasks[s]} ${s}`).join(' · ') || 'no tasks',
  });
  for (const state of TASK_STATES) {
    const n = tasks?.[state] || 0;
    if (n && total) bar.append(el('span', {class: `seg seg-${state}`, style: {width: `${(100 * n) / total}%`}}));
  }
  const text = el('span', {class: 'progress-text num', testid: 'progress-text'},
    `${fmtNum(done)} / ${fmtNum(total)} · ${percent} %`);
  return el('div', {class: ['progress-wrap', compact && 'compact']}, bar, text);
}

/** A table inside a scrolling box with a sticky header. ``head`` is a list of column titles
 *  (a string, or [title, class]). */
export function table(head, rows, {testid, empty = 'Nothing here yet.', maxHeight} = {}) {
  const cols = head.map((h) => (Array.isArray(h) ? h : [h, '']));
  const body = rows.length ? rows
    : [el('tr', {class: 'empty'}, el('td', {colspan: cols.length}, empty))];
  return el('div', {class: ['table-wrap', maxHeight && `max-${maxHeight}`]},
    el('table', {testid},
      el('thead', null, el('tr', null, cols.map(([title, cls]) => el('th', {class: cls || null}, title)))),
      el('tbody', null, body)));
}

export function section(title, ...children) {
  return el('section', {class: 'panel'}, title ? el('h2', null, title) : null, ...children);
}

/** The last two parts of a dotted task name (show the full one as a tooltip). */
export function shortTask(task) {
  const parts = (task || '').split('.');
  return parts.length > 2 ? `…${parts.slice(-2).join('.')}` : task || '—';
}

export function shortId(id) {
  return id && id.length > 14 ? `${id.slice(0, 12)}…` : id;
}

export function jobLink(id, testid) {
  return el('a', {href: `#/jobs/${encodeURIComponent(id)}`, class: 'mono', title: id, testid}, shortId(id));
}

/** An error record ({type, message}) or string as one line. */
export function errorLine(error) {
  if (!error) return '';
  if (typeof error === 'string') return error;
  const type = error.type || 'Error';
  return error.message ? `${type}: ${error.message}` : type;
}
