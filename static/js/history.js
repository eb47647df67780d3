// Config history: the last versions (who, when, what), one version's diff
// against the one before, and a roll-back button (POST .../rollback makes
// a new version; history is never rewritten).

import { call, get } from './api.js';
import { h, showResult } from './util.js';

const show = (v) => (v === null || v === undefined ? '—' : typeof v === 'object' ? JSON.stringify(v) : String(v));
const pointer = (part) => String(part).replace(/~/g, '~0').replace(/\//g, '~1');
const serviceOf = (doc, name) => (doc && Array.isArray(doc.services) ? doc.services.find((s) => s.name === name) : undefined);

// The part of a version's diff (paths of the whole document, like
// /services/web/strategy/name) that concerns service `name`, with paths
// relative to the service (/strategy/name); the service added or removed
// whole is one row with the path "/".  A first version (path "/", the
// whole document) gives the service's config as it was.
export function serviceDiff(diff, name) {
  const prefix = `/services/${pointer(name)}`;
  const rows = [];
  for (const d of diff) {
    if (d.path === prefix) rows.push({ path: '/', old: d.old, new: d.new });
    else if (d.path.startsWith(`${prefix}/`)) rows.push({ ...d, path: d.path.slice(prefix.length) });
    else if (d.path === '/' || d.path === '/services') {
      const before = serviceOf(d.path === '/' ? d.old : { services: d.old }, name);
      const after = serviceOf(d.path === '/' ? d.new : { services: d.new }, name);
      if (JSON.stringify(before) !== JSON.stringify(after)) rows.push({ path: '/', old: before, new: after });
    }
  }
  return rows;
}

export class HistoryPanel {
  constructor(dash) {
    this.dash = dash;
    this.details = document.getElementById('history-details');
    this.list = document.getElementById('history-list');
    this.summary = document.getElementById('history-summary');
    this.entry = document.getElementById('history-entry');
    this.title = document.getElementById('history-entry-title');
    this.scope = document.getElementById('history-scope');
    this.diff = document.getElementById('history-diff');
    this.button = document.getElementById('history-rollback');
    this.out = document.getElementById('history-result');
    this.selected = null;
    this.details.addEventListener('toggle', () => { if (this.details.open) this.load(); });
    this.button.addEventListener('click', () => this.rollback());
  }

  // Another service in view: what was selected was shown for the last one.
  reset() {
    this.selected = null;
    this.entry.hidden = true;
    this.load();
  }

  // Read the list (only while the panel is open: no request otherwise).
  async load() {
    if (!this.details.open) return;
    let entries;
    try { entries = await get('/history'); } catch (e) { this.summary.textContent = e.message; return; }
    this.summary.textContent = `${entries.length} versions`;
    this.list.replaceChildren(...entries.map((e) => h('li', { dataset: { version: e.version } },
      h('button', { type: 'button', class: 'history-item', onclick: () => this.select(e.version) },
        h('strong', { text: `v${e.version}` }), ' ',
        h('span', { class: 'history-by', text: e.by }), ' ',
        h('time', { text: new Date(e.time * 1000).toLocaleString() }), ' ',
        h('span', { class: 'history-what', text: e.summary })))));
  }

  async select(version) {
    let e;
    try { e = await get(`/history/${version}`); } catch (err) { showResult(this.out, false, err.message); return; }
    this.selected = version;
    this.entry.hidden = false;
    this.title.textContent = `v${e.version}: ${e.summary}` + (e.previous ? ` (against v${e.previous})` : '');
    // In a service's view, only what changed in that service (a version
    // may change another service, or several).
    const name = this.dash.service;
    const rows = name === null || name === undefined ? e.diff : serviceDiff(e.diff, name);
    const other = e.diff.length - rows.length;
    this.entry.dataset.touched = String(rows.length > 0);
    if (name === null || name === undefined) this.scope.textContent = '';
    else if (!rows.length) {
      this.scope.textContent = e.diff.length
        ? `v${e.version} did not change service ${name} (it changed ${e.diff.length} thing${e.diff.length === 1 ? '' : 's'} elsewhere in the config).`
        : `v${e.version} did not change service ${name}.`;
    } else {
      this.scope.textContent = `What v${e.version} changed in service ${name}` +
        (other > 0 ? ` (and ${other} change${other === 1 ? '' : 's'} elsewhere in the config, not shown)` : '') + '; paths are within the service.';
    }
    this.diff.replaceChildren(...rows.map((d) => h('tr', {},
      h('td', { text: d.path }), h('td', { text: show(d.old) }), h('td', { text: show(d.new) }))));
    const current = this.dash.config && this.dash.config.version === version;
    this.button.disabled = current;
    this.button.textContent = current ? 'This version is in force' : `Roll back to v${version}`;
  }

  async rollback() {
    if (this.selected === null) return;
    this.button.disabled = true;
    try {
      const config = await call('POST', `/history/${this.selected}/rollback`, {});
      showResult(this.out, true, `v${this.selected} is back in force as v${config.version}`);
      this.load();
    } catch (e) {
      showResult(this.out, false, e.message);
    } finally {
      this.button.disabled = false;
    }
  }
}
