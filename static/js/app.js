// lbproxy's dashboard: the overview of every service (services.js) and one
// service's view: pool management through the admin API, live state from
// the event feed.  The URL hash says which: #/ the overview,
// #/services/NAME a service; no hash opens the only service if there is
// one, else the overview.

import { call, get, askToken, token, setService } from './api.js';
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
import { Overview } from './services.js';
import { ServiceHead, Remover } from './servicehead.js';
import { ServicePoller } from './poll.js';
import { mountTraffic } from './traffic.js';
import { backendLine, describeChange } from './changes.js';
import { showRecent } from './recent.js';
import { ago, bytes, clock, count, h, numeric, rate, showResult, colourOf } from './util.js';

export { numeric, backendLine };

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
    this.service = null;           // the service in view (null: the overview)
    this.feedService = null;       // the service the feed's snapshot, routes and stats are of
    this.routesFromFeed = false;   // whether the feed brings this service's routes
    this.feedAll = false;          // whether the feed brings every service's routes and stats

    this.flow = new FlowView($('flow'), $('flow-scale'));
    this.chart = new RateChart($('chart'), $('legend'), $('chart-span'));
    this.log = new EventLog($('log'));
    this.cards = new BackendCards($('cards'), this);
    this.strategy = new StrategyPanel(this);
    this.demo = new DemoPanel(this);
    this.settings = new SettingsPanel(this);
    this.history = new HistoryPanel(this);
    this.cluster = new ClusterPanel(this);
    this.overview = new Overview(this);
    this.head = new ServiceHead(this);
    this.remover = new Remover(this);
    this.poller = new ServicePoller((list) => this.setViews(list), (b) => this.onRoute(b), (s) => this.onStats(s));
    this.feed = new Feed({
      onEvent: (type, data) => this.onEvent(type, data),
      onStatus: (state, text) => this.onStatus(state, text),
    });
    this.addForm();
    $('token-button').addEventListener('click', () => askToken('Enter the admin token for this lbproxy.'));
  }

  async start() {
    this.strategy.load().then(() => this.overview.fillStrategies([...this.strategy.plugins.keys()]))
      .catch((e) => this.log.add('error', `cannot load strategies: ${e.message}`));
    window.addEventListener('hashchange', () => this.route());
    // The view first, then the feed: until the page knows which service it
    // shows, every event would be dropped as another service's (a route
    // batch then never shows, and the snapshot is read again from the API).
    this.route(true).catch(() => {}).then(() => this.feed.start());
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

  // Which view the hash asks for; at landing, no hash opens the only
  // service if there is just one (so a one-service lbproxy looks as before).
  async route(landing = false) {
    const hash = location.hash;
    const m = /^#\/services\/([^/]+)$/.exec(hash);
    if (m) return this.view(decodeURIComponent(m[1]));
    if (hash === '' || hash === '#' || hash === '#/') {
      if (landing && hash === '') {
        const list = await this.overview.load();
        if (list && list.length === 1) return this.view(list[0].name);
      }
      return this.view(null);
    }
    return undefined;   // an in-page anchor (the skip link): the view stays
  }

  // Show service `name`, or the overview (null).
  view(name) {
    document.body.dataset.view = name === null ? 'overview' : 'service';
    $('overview').hidden = name !== null;
    $('service-head').hidden = name === null;
    $('service-view').hidden = name === null;
    $('crumb-service').hidden = name === null;
    $('crumb-name').textContent = name || '';
    document.title = name === null ? 'lbproxy: services' : `lbproxy: ${name}`;
    this.overview.show(name === null);
    if (name === this.service) return;
    this.service = name;
    setService(name);
    this.config = null;
    this.stats = null;
    this.views = new Map();
    this.lastChange = new Map();
    this.window = [];
    this.bucket = {};
    this.clients = new Map();
    this.poller.reset();
    this.routesFromFeed = name !== null && (name === this.feedService || this.feedAll);
    this.chart.seed([]);
    this.chart.markers = [];
    $('recent').replaceChildren();
    for (const id of ['kpi-rate', 'kpi-active', 'kpi-accepted', 'kpi-bytes', 'kpi-strategy', 'kpi-version']) $(id).textContent = '–';
    this.settings.shownVersion = null;
    this.history.reset();
    this.cards.render();
    this.flowBackends();
    if (name !== null) {
      const panel = $('traffic-panel');
      if (panel) mountTraffic(panel, name);
      this.load();
    }
  }

  // Read the service in view from the API (a change of view, a reconnect,
  // a service the feed's snapshot is not of).
  async load() {
    const name = this.service;
    this.head.load(name);
    try {
      const [config, body] = await Promise.all([get(`/services/${encodeURIComponent(name)}`), get('/backends')]);
      if (name !== this.service) return;
      this.config = config;
      this.setViews(body.backends);
      this.renderHeader();
      if (this.strategy.plugins.has(config.strategy.name)) {
        this.strategy.select.value = config.strategy.name;
        this.strategy.renderOptions();
      }
      this.strategy.showActive();
      this.loadHistory();
    } catch (e) {
      if (name === this.service) this.log.add('error', `cannot read service ${name}: ${e.message}`);
    }
  }

  // An event of another service than the one in view (events without a
  // service name are of the one in view, as before services).
  foreign(data) {
    return this.service === null || (data && data.service !== undefined && data.service !== this.service);
  }

  deleted(name, text) {
    this.log.add('config', text);
    if (this.service === name) location.hash = '#/';
    showResult($('create-result'), true, text);
    this.overview.load();
  }

  onEvent(type, data) {
    if (type === 'snapshot' || type === 'reset') this.feedService = data.service ?? this.service;
    if (type === 'service' || type === 'config' || type === 'snapshot' || type === 'reset') this.overview.changed();
    if (type === 'backend') this.overview.soon();
    if (type === 'service') { this.onService(data); return; }
    if ((type === 'snapshot' || type === 'reset') && this.foreign(data)) {
      if (this.service !== null) this.load();
      call('GET', '/status').then((s) => this.onLifecycle(s), () => {});
      return;
    }
    if ((type === 'route' || type === 'stats') && data && data.service !== undefined && data.service !== this.feedService) {
      this.feedAll = true;   // an lbproxy whose feed carries every service: no polling needed
      if (this.service !== null) this.routesFromFeed = true;
    }
    if (['route', 'stats', 'backend', 'config'].includes(type) && this.foreign(data)) return;
    switch (type) {
      case 'snapshot':
      case 'reset':
        this.routesFromFeed = true;
        this.head.load(this.service);
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

  // A service other than the feed's main one changed: its config comes
  // with the event; one removed sends the view back to the overview.
  onService(data) {
    if (data.service !== this.service) return;
    if (data.config) {
      this.onConfig({ config: data.config });
    } else if (data.state === 'removing' || data.state === 'removed') {
      this.log.add('config', `service ${data.service} ${data.state === 'removing' ? 'deleted; its connections finish' : 'removed'}`);
      location.hash = '#/';
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
    if (!batch.polled) this.routesFromFeed = true;
    else if (this.routesFromFeed) return;
    const now = Date.now();
    this.window.push({ t: now, counts: batch.counts });
    for (const [id, n] of Object.entries(batch.counts)) this.bucket[id] = (this.bucket[id] || 0) + n;
    for (const s of batch.sample || []) this.clients.set(s.client, now);
    if (batch.strategy) this.flow.strategy = batch.strategy;
    this.flow.routes(batch.counts, batch.polled ? 1 : undefined);
    this.recent(batch);
  }

  recent(batch) { showRecent($('recent'), batch); }

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
    if (this.service === null) return;
    if (!this.routesFromFeed && this.config) this.poller.tick(this.config.strategy.name);
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
    if (stats.polled && this.routesFromFeed) return;
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
    this.head.load(this.service);
    this.cluster.refresh();
    this.history.load();
  }

  // The server's last minutes of rates, so the chart does not start empty.
  async loadHistory() {
    const name = this.service;
    if (name === null) return;
    try {
      let history;
      try {
        history = await get(`/services/${encodeURIComponent(name)}/stats/history`);
      } catch (e) {
        if (name !== this.feedService) throw e;
        history = await get('/stats/history');   // an lbproxy before per-service stats
      }
      if (name !== this.service) return;
      const offset = Date.now() / 1000 - history.time;
      this.chart.seed(history.points.map((p) => ({ t: p.time + offset, values: p.backends })));
    } catch (e) { /* an older lbproxy: the chart fills from the feed instead */ }
  }

  // After a reconnect the server may have restarted (and numbered its
  // events afresh), so read the state once instead of trusting the resume.
  async resync() {
    try {
      if (this.service === null) return;
      const config = await get(`/services/${encodeURIComponent(this.service)}`);
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

const app = new Dashboard();
window.lbproxy = app;
app.start();
