// The demo panel, shown when lbproxy runs with --demo: the simulated users
// coming and going, and controls for the demo backends and user count.

import { ApiError, call, get } from './api.js';
import { colourOf, count, h, showResult } from './util.js';

export class DemoPanel {
  constructor(dash) {
    this.dash = dash;
    this.panel = document.getElementById('demo-panel');
    this.dots = document.getElementById('user-dots');
    this.rows = new Map();
    this.form = document.getElementById('users-form');
    this.range = document.getElementById('users-count');
    this.number = document.getElementById('users-count-number');
    this.range.addEventListener('input', () => { this.number.value = this.range.value; });
    this.number.addEventListener('input', () => { this.range.value = this.number.value; });
    this.form.addEventListener('submit', (e) => { e.preventDefault(); this.setUsers(); });
    this.touched = false;
  }

  async load() {
    try {
      const status = await get('/status');
      if (!status.demo) return;
      this.render(await get('/demo'));
    } catch (e) {
      if (!(e instanceof ApiError) || e.status !== 404) this.dash.log.add('error', `demo: ${e.message}`);
    }
  }

  render(data) {
    this.panel.hidden = false;
    const users = data.users;
    if (users) {
      document.getElementById('users-online').textContent = users.online;
      document.getElementById('users-meta').replaceChildren(
        h('span', { text: `${count(users.went_online)} came online` }),
        h('span', { text: `${count(users.went_offline)} went offline` }),
        h('span', { text: `${count(users.answered)} answered` }),
        h('span', { class: users.failed ? 'bad' : '', text: `${count(users.failed)} failed` }));
      if (!this.touched && document.activeElement !== this.range && document.activeElement !== this.number) {
        this.range.value = users.count;
        this.number.value = users.count;
      }
      this.number.max = users.max;
      this.range.max = users.max;
      this.renderDots(users.users, users.online);
      const moves = (users.recent || []).slice(-6).reverse().map((m) => h('li', { class: `move ${m.event}` },
        h('b', { text: m.user }), m.event === 'online' ? ' came online' : ' went offline'));
      document.getElementById('user-moves').replaceChildren(...moves);
    }
    this.renderBackends(data.backends || []);
  }

  renderDots(list, onlineTotal) {
    const dots = list.map((u) => {
      const [id, online, status, backend] = Array.isArray(u) ? u : [u.id, u.online, u.status, u.backend];
      const title = online
        ? `${id}: online, ${status === 'error' ? 'last request failed' : status === 'waiting' ? 'waiting for an answer' : backend ? `last answered by ${backend}` : status === 'ok' ? 'last request answered' : 'just arrived'}`
        : `${id}: offline`;
      return h('span', {
        class: `dot ${online ? 'on' : 'off'} s-${status}`,
        style: online && backend ? `--c:${colourOf(backend)}` : null,
        title,
      });
    });
    this.dots.replaceChildren(...dots);
    // Smaller dots for a crowd, so every listed user fits without clipping.
    this.dots.dataset.size = list.length > 160 ? 'xs' : list.length > 80 ? 's' : 'm';
    const online = list.filter((u) => (Array.isArray(u) ? u[1] : u.online)).length;
    this.dots.setAttribute('aria-label', `${online} of ${list.length} simulated users online`);
    const more = document.getElementById('user-dots-more');
    const hidden = Math.max(0, (onlineTotal ?? online) - online);
    more.hidden = hidden === 0;
    more.textContent = hidden ? `+${count(hidden)} more online, not drawn` : '';
  }

  renderBackends(list) {
    const root = document.getElementById('demo-backends');
    for (const b of list) {
      let row = this.rows.get(b.name);
      if (!row) {
        row = this.buildRow(b.name);
        this.rows.set(b.name, row);
        root.append(row.root);
      }
      row.root.dataset.online = b.online ? 'yes' : 'no';
      row.status.textContent = b.online ? 'online' : 'offline';
      row.toggle.textContent = b.online ? 'Take offline' : 'Bring online';
      row.toggle.setAttribute('aria-pressed', String(!b.online));
      row.port.textContent = `:${b.port}`;
      row.requests.textContent = `${count(b.requests)} req`;
      row.online = b.online;
      const ms = Math.round(b.delay * 1000);
      if (document.activeElement !== row.delay && row.delay.dataset.shown !== String(ms)) {
        row.delay.value = ms;
        row.delay.dataset.shown = String(ms);
      }
    }
  }

  buildRow(name) {
    const row = {};
    row.status = h('span', { class: 'pill small' });
    row.port = h('span', { class: 'addr' });
    row.requests = h('span', { class: 'req' });
    row.result = h('output', { class: 'result', role: 'status' });
    row.toggle = h('button', { type: 'button', class: 'toggle', onclick: () => this.change(name, row, { online: !row.online }) });
    row.delay = h('input', { name: 'delay', inputmode: 'numeric', autocomplete: 'off', 'aria-label': `Response delay of ${name} in milliseconds` });
    const form = h('form', { class: 'delay-form', novalidate: true },
      h('label', { text: 'delay' }, row.delay, h('span', { class: 'unit', text: 'ms' })),
      h('button', { type: 'submit', text: 'Set' }));
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      const raw = row.delay.value.trim();
      const n = Number(raw);
      this.change(name, row, { delay: raw !== '' && Number.isFinite(n) ? n / 1000 : raw });
    });
    row.root = h('li', { class: 'demo-backend', dataset: { name }, style: `--c:${colourOf(name)}` },
      h('div', { class: 'line' }, h('span', { class: 'swatch', 'aria-hidden': 'true' }), h('b', { text: name }), row.port, row.status, row.requests),
      h('div', { class: 'line' }, row.toggle, form),
      row.result);
    return row;
  }

  async change(name, row, body) {
    try {
      const b = await call('POST', `/demo/backends/${encodeURIComponent(name)}`, body);
      row.online = b.online;
      const text = 'online' in body ? (b.online ? `${name} is listening again on :${b.port}` : `${name} closed its port`) : `delay now ${Math.round(b.delay * 1000)} ms`;
      showResult(row.result, true, text);
      this.renderBackends([b]);
    } catch (e) {
      showResult(row.result, false, e.message);
    }
  }

  async setUsers() {
    const raw = this.number.value.trim();
    const n = Number(raw);
    const out = document.getElementById('users-result');
    try {
      const users = await call('PUT', '/demo/users', { count: raw !== '' && Number.isInteger(n) ? n : raw });
      this.touched = false;
      showResult(out, true, `aiming for ${users.count} users online`);
    } catch (e) {
      showResult(out, false, e.message);
    }
  }
}
