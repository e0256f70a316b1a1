// Dead letters: tasks that failed for good, with their error; requeue or purge them.

import {api, enc} from '../api.js';
import {el, errorLine, fmtNum, jobLink, renderIfChanged, shortTask, table, timeAgo} from '../dom.js';
import {Page} from '../page.js';

const LIMIT = 50;

export class DeadLettersPage extends Page {
  constructor(app, params) {
    super(app, params);
    this.offset = 0;
    this.open = new Set(); // entries whose traceback shows
  }

  mount(root) {
    this.total = el('span', {class: 'muted', testid: 'dlq-total'});
    this.requeueAll = el('button', {type: 'button', class: 'primary', testid: 'requeue-all',
      onclick: () => this.act(this.requeueAll, () => api('/api/v1/dlq/requeue', {method: 'POST'}), {
        confirmText: 'Requeue every dead letter? Each entry\'s job runs its unfinished tasks again.',
        done: (r) => this.requeuedAll(r),
      })}, 'Requeue all');
    this.purgeAll = el('button', {type: 'button', class: 'danger', testid: 'purge-all',
      onclick: () => this.act(this.purgeAll, () => api('/api/v1/dlq', {method: 'DELETE'}), {
        confirmText: 'Purge every dead letter? They are deleted for good.',
        done: (r) => `Purged ${fmtNum(r?.purged ?? 0)} dead letters.`,
      })}, 'Purge all');
    this.prev = el('button', {type: 'button', testid: 'dlq-prev', onclick: () => this.page(-1)}, '← Previous');
    this.next = el('button', {type: 'button', testid: 'dlq-next', onclick: () => this.page(1)}, 'Next →');
    this.info = el('span', {class: 'muted'});
    this.body = el('div');
    root.append(
      el('div', {class: 'page-head'}, el('h1', {testid: 'page-title'}, 'Dead letters'), this.total,
        el('span', {class: 'spacer'}), this.requeueAll, this.purgeAll),
      el('p', {class: 'muted intro'}, 'A task lands here when its code failed on every allowed attempt, ' +
        'its worker crashed too often, or no worker could run it. Fix the cause, then requeue: ' +
        'the job runs its unfinished tasks again.'),
      this.body,
      el('div', {class: 'pager bottom'}, this.prev, this.info, this.next));
  }

  requeuedAll(result) {
    const skipped = result?.skipped || [];
    if (skipped.length) this.app.showError(`${skipped.length} not requeued: ${skipped[0].reason}`);
    return `Requeued ${fmtNum(result?.requeued?.length ?? 0)} dead letters.`;
  }

  page(direction) {
    this.offset = Math.max(0, this.offset + direction * LIMIT);
    this.app.refresh(true);
  }

  async load() {
    const data = await api('/api/v1/dlq', {params: {limit: LIMIT, offset: this.offset}, signal: this.signal});
    const entries = data.entries || [];
    const total = data.total || 0;
    if (!entries.length && this.offset > 0 && total > 0) {
      this.offset = Math.max(0, Math.floor((total - 1) / LIMIT) * LIMIT); // the last page emptied
      this.app.refresh(true);
      return;
    }
    this.total.textContent = `${fmtNum(total)} in all`;
    this.requeueAll.disabled = this.purgeAll.disabled = total === 0;
    this.prev.disabled = this.offset === 0;
    this.next.disabled = this.offset + entries.length >= total;
    this.info.textContent = total ? `${this.offset + 1}–${this.offset + entries.length} of ${fmtNum(total)}` : '';
    renderIfChanged(this.body, entries, () => table(
      ['Entry', 'Job', ['Task', 'num'], 'Task name', 'Queue', 'Error', 'When', ''],
      entries.map((e) => this.row(e)),
      {testid: 'dlq-table', empty: 'No dead letters. Everything that failed was retried or is gone.', maxHeight: 'page'}));
  }

  row(entry) {
    const id = entry.id;
    const url = `/api/v1/dlq/${enc(id)}`;
    const requeue = el('button', {type: 'button', testid: 'requeue-button', onclick: () =>
      this.act(requeue, () => api(`${url}/requeue`, {method: 'POST'}), {
        done: (r) => `Requeued ${id}: job ${r?.job ?? ''} has ${fmtNum(r?.queued ?? 0)} tasks queued again.`,
      })}, 'Requeue');
    const purge = el('button', {type: 'button', class: 'danger', testid: 'purge-button', onclick: () =>
      this.act(purge, () => api(url, {method: 'DELETE'}), {
        confirmText: `Purge dead letter ${id}? It is deleted for good.`,
        done: `Purged ${id}.`,
      })}, 'Purge');
    const error = entry.error || {};
    const line = errorLine(error);
    const open = this.open.has(id);
    const detail = el('tr', {class: 'detail', hidden: !open},
      el('td', {colspan: 8}, el('pre', {class: 'traceback', testid: 'dlq-traceback'}, error.traceback || line)));
    const toggle = el('button', {type: 'button', class: 'disclose', 'aria-expanded': String(open), title: line,
      onclick: () => {
        const show = !this.open.has(id);
        if (show) this.open.add(id);
        else this.open.delete(id);
        detail.hidden = !show;
        toggle.setAttribute('aria-expanded', String(show));
      }}, line);
    const row = el('tr', {testid: 'dlq-entry', dataset: {entry: id}},
      el('td', {class: 'mono ellipsis entry-id', title: id}, id),
      el('td', null, entry.job ? jobLink(entry.job) : el('span', {class: 'muted'}, 'none')),
      el('td', {class: 'num'}, entry.task ?? '—'),
      el('td', {class: 'mono ellipsis', title: entry.name || ''}, shortTask(entry.name)),
      el('td', null, entry.queue || '—'),
      el('td', {class: 'error-cell'}, toggle),
      el('td', null, timeAgo(entry.at ?? null)),
      el('td', {class: 'row-actions'}, requeue, purge));
    return [row, detail];
  }

  interested(type) {
    return type === 'task.dead_lettered' || type === 'job.requeued';
  }
}
