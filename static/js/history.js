// Config history: the last versions (who, when, what), one version's diff
// against the one before, and a roll-back button (POST .../rollback makes
// a new version; history is never rewritten).

import { call, get } from './api.js';
import { h, showResult } from './util.js';

const show = (v) => (v === null || v === undefined ? '—' : typeof v === 'object' ? JSON.stringify(v) : String(v));

export class HistoryPanel {
  constructor(dash) {
    this.dash = dash;
    this.details = document.getElementById('history-details');
    this.list = document.getElementById('history-list');
    this.summary = document.getElementById('history-summary');
    this.entry = document.getElementById('history-entry');
    this.title = document.getElementById('history-entry-title');
    this.diff = document.getElementById('history-diff');
    this.button = document.getElementById('history-rollback');
    this.out = document.getElementById('history-result');
    this.selected = null;
    this.details.addEventListener('toggle', () => { if (this.details.open) this.load(); });
    this.button.addEventListener('click', () => this.rollback());
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
    this.diff.replaceChildren(...e.diff.map((d) => h('tr', {},
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
