// lbproxy's dashboard: pool management through the admin API, live state
// from the event feed (no polling).

import { call, get, askToken, token } from './api.js';
import { Feed } from './feed.js';
import { FlowView } from './flow.js';
import { RateChart } from './chart.js';
import { BackendCards } from './cards.js';
import { StrategyPanel } from './strategy.js';
import { EventLog } from './log.js';
import { DemoPanel } from './demo.js';
import { SettingsPanel } from './settings.js';
import { HistoryPanel } from './history.js';
import { ClusterPanel } from './cluster.js';
import { showCertificateExpiry } from './tls.js';
import { ago, bytes, clock, count, h, rate, showResult, colourOf } from './util.js';

const $ = (id) => document.getElementById(id);
const RATE_WINDOW = 2;   // seconds of routing decisions behind a conn/s figure

class Dashboard {
  constructor() {
    this.config = null;
    this.stats = null;
    this.views = new Map();        // backend id -> view from the API
    this.lastChange = new Map();   // backend id -> {state, reason, time}
    this.window = [];              // [{t, counts}] route batches of the last seconds
    this.bucket = {};              // counts of the current second
    this.clients = new Map();      // client address -> last seen (ms)
    this.strategyName = '';

    this.flow = new FlowView($('flow'), $('flow-scale'));
    this.chart = new RateChart($('chart'), $('legend'), $('chart-span'));
    this.log = new EventLog($('log'));
    this.cards = new BackendCards($('cards'), this);
    this.strategy = new StrategyPanel(this);
    this.demo = new DemoPanel(this);
    this.settings = new SettingsPanel(this);
    this.history = new HistoryPanel(this);
    this.cluster = new ClusterPanel(this);
    this.feed = new Feed({
      onEvent: (type, data) => this.onEvent(type, data),
      onStatus: (state, text) => this.onStatus(state, text),
    });
    this.addForm();
    $('token-button').addEventListener('click', () => askToken('Enter the admin token for this lbproxy.'));
  }

  async start() {
    this.feed.start();
    this.strategy.load().catch((e) => this.log.add('error', `cannot load strategies: ${e.message}`));
    this.demo.load();
    showCertificateExpiry(document.querySelector('.topbar')).catch(() => {});
    setInterval(() => this.everySecond(), 1000);
    const frame = () => {
      if (!this.staleSince) this.flow.draw();
      this.chart.draw();
      requestAnimationFrame(frame);
    };
    requestAnimationFrame(frame);
    window.addEventListener('resize', () => { this.chart.dirty = true; });
  }

  onStatus(state, text) {
    const el = $('feed-status');
    const was = el.dataset.state;
    el.dataset.state = state;
    el.textContent = text;
    $('token-button').hidden = !token();
    if (state === 'live' && was !== 'live') this.cluster.refresh();
    if (state === 'live' && was !== 'live' && this.hadFeed) {
      this.log.add('feed', 'live feed reconnected');
      this.resync();
    }
    if (state === 'down' && was === 'live') this.log.add('feed', 'live feed lost; reconnecting');
    if (state === 'live') this.hadFeed = true;
    this.showStale();
  }

  // Once the feed is gone, nothing on the page is live any more: grey out
  // what was live and say since when, until the feed is back.
  showStale() {
    const state = $('feed-status').dataset.state;
    const stale = Boolean(this.hadFeed) && state !== 'live';
    if (stale && !this.staleSince) this.staleSince = this.feed.lastData || Date.now();
    if (!stale) this.staleSince = null;
    document.body.classList.toggle('stale', stale);
    $('stale-banner').hidden = !stale;
    if (!stale) return;
    const since = new Date(this.staleSince);
    $('stale-text').replaceChildren('no data from lbproxy since ',
      h('time', { id: 'stale-since', datetime: since.toISOString(), text: clock(since) }),
      ` (${ago((Date.now() - this.staleSince) / 1000)}): what is shown is the last data received, not the current state; reconnecting…`);
  }

  // The feed --------------------------------------------------------------

  onEvent(type, data) {
    switch (type) {
      case 'snapshot':
      case 'reset':
        this.log.add('feed', type === 'reset'
          ? 'feed resumed after a long gap: state reloaded'
          : `connected: config v${data.config.version}, ${data.backends.length} backends, strategy ${data.config.strategy.name}`);
        this.config = data.config;
        this.setViews(data.backends);
        if (data.stats) this.onStats(data.stats);
        this.renderHeader();
        this.loadHistory();
        call('GET', '/status').then((s) => this.onLifecycle(s), () => {});
        break;
      case 'lifecycle': this.onLifecycle(data); break;
      case 'route': this.onRoute(data); break;
      case 'stats': this.onStats(data); break;
      case 'backend': this.onBackend(data); break;
      case 'config': this.onConfig(data); break;
      case 'demo': this.demo.render(data); break;
      case 'store': this.cluster.onStore(data); break;
      default: break;
    }
  }

  // A graceful stop (SIGTERM or a takeover): say so while it lasts.
  onLifecycle(data) {
    const stopping = data.state === 'stopping';
    $('lifecycle-banner').hidden = !stopping;
    if (stopping) {
      const since = data.since ?? data.stopping_since;
      const at = since ? ` since ${clock(new Date(since * 1000))}` : '';
      $('lifecycle-banner-detail').textContent = `${at}; grace period ${data.grace}s`;
      this.log.add('feed', `lbproxy is stopping (grace ${data.grace}s)`);
    } else if (data.state === 'stopped') {
      this.log.add('feed', `lbproxy stopped: ${data.finished} connections finished, ${data.cut} cut`);
    }
  }

  onRoute(batch) {
    const now = Date.now();
    this.window.push({ t: now, counts: batch.counts });
    for (const [id, n] of Object.entries(batch.counts)) this.bucket[id] = (this.bucket[id] || 0) + n;
    for (const s of batch.sample || []) this.clients.set(s.client, now);
    if (batch.strategy) this.flow.strategy = batch.strategy;
    this.flow.routes(batch.counts);
    this.recent(batch);
  }

  recent(batch) {
    const list = $('recent');
    const items = (batch.sample || []).slice(-6).reverse().map((s) => h('li', {},
      h('time', { text: clock(new Date(s.time * 1000)) }),
      h('span', { class: 'client', text: s.client }),
      h('span', { class: 'arrow', 'aria-hidden': 'true', text: '→' }),
      h('span', { class: 'to', style: `--c:${colourOf(s.backend)}`, text: s.backend, dataset: { backend: s.backend } }),
      h('span', { class: 'via', text: batch.strategy || '' })));
    const dropped = batch.dropped ? h('li', { class: 'dropped', text: `+${count(batch.dropped)} more in this batch` }) : null;
    list.replaceChildren(...items, ...(dropped ? [dropped] : []));
  }

  rates() {
    const cutoff = Date.now() - RATE_WINDOW * 1000;
    while (this.window.length && this.window[0].t < cutoff) this.window.shift();
    const out = {};
    let total = 0;
    for (const { counts } of this.window) {
      for (const [id, n] of Object.entries(counts)) { out[id] = (out[id] || 0) + n; total += n; }
    }
    for (const id of Object.keys(out)) out[id] /= RATE_WINDOW;
    return { rates: out, total: total / RATE_WINDOW };
  }

  everySecond() {
    if (this.staleSince) { this.showStale(); return; }
    const t = Date.now() / 1000;
    const values = {};
    for (const id of this.views.keys()) values[id] = this.bucket[id] || 0;
    for (const [id, n] of Object.entries(this.bucket)) values[id] = n;
    this.bucket = {};
    this.chart.push(t, values);
    this.chart.setBackends([...this.views.keys()]);
    const cutoff = Date.now() - 10000;
    for (const [c, seen] of this.clients) if (seen < cutoff) this.clients.delete(c);
    const { rates, total } = this.rates();
    this.flow.setRates(rates, total, this.clients.size);
    $('kpi-rate').textContent = rate(total);
    this.cards.update(rates);
  }

  onStats(stats) {
    this.stats = stats;
    const t = stats.totals || {};
    $('kpi-active').textContent = count(t.active ?? 0);
    $('kpi-accepted').textContent = count(t.accepted ?? 0);
    $('kpi-bytes').textContent = `${bytes((t.bytes_up_per_second || 0) + (t.bytes_down_per_second || 0))}/s`;
    this.flow.noBackend = t.no_backend_per_second || 0;
    this.flow.rejected = t.rejected_per_second || 0;
  }

  onBackend(event) {
    const { id, state, reason } = event;
    this.lastChange.set(id, { state, reason, time: event.time });
    const kind = state === 'down' ? 'down' : state === 'up' ? 'up' : 'backend';
    this.log.add(kind, backendLine(id, state, reason), id);
    if (state === 'down' || state === 'up' || state === 'removed') {
      this.chart.mark(Date.now() / 1000, `${id} ${state}`, state === 'down' ? '#ef4444' : state === 'up' ? '#22c55e' : '#94a3b8');
    }
    const view = this.views.get(id);
    if (state === 'drained') {
      // Not a state of its own: a draining backend with nothing left open.
      this.cards.render();
    } else if (state === 'removed') {
      this.views.delete(id);
      this.cards.render();
      this.flowBackends();
    } else if (view) {
      view.state = state;
      this.cards.render();
      this.flowBackends();
    }
    this.refresh();
  }

  onConfig(event) {
    const old = this.config;
    this.config = event.config;
    for (const line of describeChange(old, event.config)) this.log.add('config', line);
    if (old && old.strategy.name !== event.config.strategy.name) {
      this.chart.mark(Date.now() / 1000, `→ ${event.config.strategy.name}`, '#38bdf8');
    }
    this.renderHeader();
    this.strategy.showActive();
    this.refresh();
    this.cluster.refresh();
    this.history.load();
  }

  // The server's last minutes of rates, so the chart does not start empty.
  async loadHistory() {
    try {
      const history = await get('/stats/history');
      const offset = Date.now() / 1000 - history.time;
      this.chart.seed(history.points.map((p) => ({ t: p.time + offset, values: p.backends })));
    } catch (e) { /* an older lbproxy: the chart fills from the feed instead */ }
  }

  // After a reconnect the server may have restarted (and numbered its
  // events afresh), so read the state once instead of trusting the resume.
  async resync() {
    try {
      const config = await get('/config');
      if (this.config && config.version !== this.config.version) this.onConfig({ config });
      else { this.config = config; this.renderHeader(); }
      this.refresh();
      this.demo.load();
    } catch (e) { /* the feed status already says we are not connected */ }
  }

  // Fetch the full backend views again after a change (one request per
  // change, never on a timer).
  refresh() {
    clearTimeout(this.refreshTimer);
    this.refreshTimer = setTimeout(async () => {
      try {
        const body = await get('/backends');
        this.setViews(body.backends);
      } catch (e) { /* the feed says whether we are connected */ }
    }, 120);
  }

  setViews(list) {
    this.views = new Map(list.map((v) => [v.id, v]));
    for (const v of list) colourOf(v.id);
    this.cards.render();
    this.flowBackends();
    $('backends-count').textContent = `${list.length} in pool`;
  }

  flowBackends() {
    this.flow.setBackends([...this.views.values()].map((v) => ({ id: v.id, state: v.state })));
  }

  renderHeader() {
    if (!this.config) return;
    this.settings.show(this.config);
    $('kpi-strategy').textContent = this.config.strategy.name;
    $('kpi-version').textContent = `v${this.config.version}`;
    this.flow.strategy = this.config.strategy.name;
  }

  apply(view) {
    if (view && view.id && view.address) {
      this.views.set(view.id, view);
      this.cards.render();
      this.flowBackends();
    }
  }

  // Adding a backend ------------------------------------------------------

  addForm() {
    const form = $('add-form');
    const out = $('add-result');
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const data = new FormData(form);
      const body = { host: String(data.get('host')).trim(), port: numeric(data.get('port')) };
      const weight = String(data.get('weight')).trim();
      if (weight !== '') body.weight = numeric(weight);
      const button = form.querySelector('button');
      button.disabled = true;
      try {
        const view = await call('POST', '/backends', body);
        showResult(out, true, `Added ${view.id} (${view.address})`);
        this.apply(view);
        form.elements.port.value = '';
      } catch (err) {
        showResult(out, false, err.message);
      } finally {
        button.disabled = false;
      }
    });
  }
}

// One line of the event log for a backend event, without saying the state
// twice when the reason only repeats it ("removed: removed").
export function backendLine(id, state, reason) {
  let rest = String(reason || '').trim();
  if (rest === state) rest = '';
  else if (rest.startsWith(`${state}:`)) rest = rest.slice(state.length + 1).trim();
  return rest ? `${id} is ${state}: ${rest}` : `${id} is ${state}`;
}

// A form value as a number when it is one, else as typed, so the server
// judges it and its message is the one shown.
export function numeric(value) {
  const text = String(value ?? '').trim();
  if (text === '') return text;
  const n = Number(text);
  return Number.isFinite(n) ? n : text;
}

function describeChange(old, config) {
  if (!old) return [`config version ${config.version} loaded`];
  const lines = [];
  const before = new Map(old.backends.map((b) => [b.id, b]));
  const after = new Map(config.backends.map((b) => [b.id, b]));
  for (const [id, b] of after) {
    const o = before.get(id);
    if (!o) { lines.push(`backend ${id} added: ${b.host}:${b.port}, weight ${b.weight}`); continue; }
    if (o.weight !== b.weight) lines.push(`${id} weight ${o.weight} → ${b.weight}`);
    if (o.state !== b.state) lines.push(`${id} set to ${b.state}`);
  }
  for (const id of before.keys()) if (!after.has(id)) lines.push(`backend ${id} removed from the pool`);
  if (old.strategy.name !== config.strategy.name || JSON.stringify(old.strategy.options) !== JSON.stringify(config.strategy.options)) {
    const opts = Object.entries(config.strategy.options || {}).map(([k, v]) => `${k}=${v}`).join(', ');
    lines.push(`strategy ${old.strategy.name} → ${config.strategy.name}${opts ? ` (${opts})` : ''}`);
  }
  for (const key of ['health_check', 'outlier', 'slow_start', 'drain_timeout']) {
    if (JSON.stringify(old[key]) !== JSON.stringify(config[key])) lines.push(`${key.replace('_', ' ')} settings changed`);
  }
  if (!lines.length) lines.push('config saved');
  return lines.map((l) => `v${config.version}: ${l}`);
}

const app = new Dashboard();
window.lbproxy = app;
app.start();
