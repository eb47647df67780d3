// The overview of every service (the landing view): where each listens,
// its SNI names, its health (backends up of all), connections per second
// and open connections; and the form that creates a service.
//
// The list comes from GET /api/v1/services, read again when the feed says
// a service or a config changed; the figures from /metrics (readMetrics),
// read every two seconds while the overview is on screen.

import { call, get } from './api.js';
import { readMetrics } from './metrics.js';
import { count, h, numeric, rate, showResult } from './util.js';


const $ = (id) => document.getElementById(id);
const POLL_MS = 2000;

export class Overview {
  constructor(app) {
    this.app = app;
    this.root = $('services');
    this.services = [];           // the API's service views, in document order
    this.figures = new Map();     // name -> {accepted, active, up, backends, rate}
    this.lastRead = null;         // {t, figures} of the previous /metrics read
    this.visible = false;
    this.form = $('create-form');
    this.form.addEventListener('submit', (e) => { e.preventDefault(); this.create(); });
  }

  show(visible) {
    this.visible = visible;
    clearTimeout(this.timer);
    if (visible) { this.load(); this.poll(); }
  }

  async load() {
    try {
      const body = await get('/services');
      this.services = body.services;
      this.render();
      return body.services;
    } catch (e) {
      $('overview-count').textContent = e.message;
      return null;
    }
  }

  // Read again soon after a change (one request for a burst of events).
  changed() {
    clearTimeout(this.loadTimer);
    this.loadTimer = setTimeout(() => { if (this.visible) this.load(); }, 120);
  }

  async poll() {
    clearTimeout(this.timer);
    if (!this.visible || this.polling) return;
    this.polling = true;
    try {
      const figures = await readMetrics();
      const t = Date.now() / 1000;
      const last = this.lastRead;
      for (const [name, f] of figures) {
        const before = last && last.figures.get(name);
        f.rate = before ? Math.max(0, f.accepted - before.accepted) / Math.max(0.001, t - last.t) : null;
      }
      this.lastRead = { t, figures };
      this.figures = figures;
      this.render();
    } catch (e) {
      /* the feed status says whether lbproxy is reachable */
    } finally {
      this.polling = false;
    }
    clearTimeout(this.timer);
    if (this.visible) this.timer = setTimeout(() => this.poll(), POLL_MS);
  }

  // A backend changed (health, state): read the figures again shortly.
  soon() {
    if (!this.visible || this.polling) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.poll(), 200);
  }

  render() {
    const list = this.services;
    $('overview-count').textContent = `${list.length} service${list.length === 1 ? '' : 's'}`;
    const rows = list.map((s) => this.row(s));
    if (!rows.length) rows.push(h('p', { class: 'empty', text: 'No services yet: create one below.' }));
    this.root.replaceChildren(...rows);
  }

  row(s) {
    const f = this.figures.get(s.name);
    const total = f ? f.backends : s.backends.length;
    const up = f ? f.up : null;
    const health = up === null ? 'unknown' : total === 0 ? 'empty' : up === total ? 'ok' : up === 0 ? 'none' : 'partial';
    const listen = s.listen.map((d, i) => h('li', {},
      h('code', { class: 'ep', text: d }),
      s.listening[i] && s.listen.length === s.listening.length ? h('span', { class: 'bound', text: s.listening[i] }) : null));
    const bound = s.listen.length !== s.listening.length
      ? h('p', { class: 'bound-all', text: s.listening.length ? `bound: ${s.listening.join(', ')}` : 'not bound' }) : null;
    const sni = s.sni.length
      ? h('p', { class: 'sni' }, h('span', { class: 'k', text: 'SNI' }), ' ', s.sni.join(', '), s.sni_default ? [' ', h('span', { class: 'pill small', text: 'default' })] : null)
      : null;
    const proxy = s.accept_proxy.length
      ? h('p', { class: 'sni' }, h('span', { class: 'k', text: 'PROXY from' }), ' ', s.accept_proxy.join(', ')) : null;
    return h('article', { class: 'svc', dataset: { service: s.name, health }, 'aria-label': `Service ${s.name}` },
      h('header', {},
        h('h3', {}, h('a', { href: `#/services/${encodeURIComponent(s.name)}`, text: s.name })),
        h('span', { class: 'health', title: 'backends taking connections / all backends',
          text: up === null ? `${total} backend${total === 1 ? '' : 's'}` : `${up}/${total} up` })),
      h('dl', { class: 'svc-figures' },
        h('div', { class: 'm m-rate' }, h('dt', { text: 'conn/s' }), h('dd', { text: f && f.rate !== null ? rate(f.rate) : '–' })),
        h('div', { class: 'm m-active' }, h('dt', { text: 'active' }), h('dd', { text: count(f ? f.active : s.active_connections) })),
        h('div', { class: 'm m-strategy' }, h('dt', { text: 'strategy' }), h('dd', { text: s.strategy.name }))),
      h('ul', { class: 'listen', 'aria-label': `Listen endpoints of ${s.name}` }, listen),
      bound, sni, proxy,
      h('div', { class: 'buttons' },
        h('a', { class: 'button', href: `#/services/${encodeURIComponent(s.name)}`, text: 'Open' }),
        h('button', { type: 'button', class: 'danger-soft', text: 'Delete…', onclick: () => this.app.remover.ask(s) })));
  }

  // The create form: what the server needs, as typed; the server judges
  // it and its message is the one shown.
  async create() {
    const f = this.form.elements;
    const out = $('create-result');
    const words = (text) => String(text).split(/[\s,]+/).map((w) => w.trim()).filter(Boolean);
    const body = {
      name: f.name.value.trim(),
      listen: String(f.listen.value).split('\n').map((l) => l.trim()).filter(Boolean),
      backends: String(f.backends.value).split('\n').map((l) => l.trim()).filter(Boolean).map(backend),
    };
    if (f.strategy.value) body.strategy = { name: f.strategy.value };
    if (f.sni.value.trim()) body.sni = words(f.sni.value);
    if (f.sni_default.checked) body.sni_default = true;
    if (f.accept_proxy.value.trim()) body.accept_proxy = words(f.accept_proxy.value);
    const button = this.form.querySelector('button[type=submit]');
    button.disabled = true;
    try {
      const s = await call('POST', '/services', body);
      showResult(out, true, `created ${s.name}, listening on ${s.listening.join(', ') || 'nothing yet'}`);
      this.form.reset();
      this.fillStrategies();
      await this.load();
    } catch (e) {
      showResult(out, false, e.message);
    } finally {
      button.disabled = false;
    }
  }

  fillStrategies(names) {
    const select = this.form.elements.strategy;
    if (names) select.replaceChildren(...names.map((n) => h('option', { value: n, text: n })));
    select.value = [...select.options].some((o) => o.value === 'round-robin') ? 'round-robin' : select.options[0]?.value || '';
  }
}

// "host:port" or "host:port weight=3" (or "host:port,weight=3", as
// --backend takes it) as a backend of the API.
export function backend(line) {
  const [address, ...rest] = line.split(/[\s,]+/);
  const cut = address.lastIndexOf(':');
  let host = cut < 0 ? address : address.slice(0, cut);
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  const b = { host, port: cut < 0 ? '' : numeric(address.slice(cut + 1)) };
  for (const opt of rest) {
    const [k, v] = opt.split('=');
    if (k && v !== undefined) b[k.trim()] = numeric(v);
  }
  return b;
}
