// Where this view comes from and where its config lives: the node's name,
// the config store (kind, durability, availability) and, in cluster mode,
// the live nodes with links to their own UIs.  Feed-driven: read once per
// (re)connect, then kept current by `store` events (etcd availability and
// membership changes) and `config` events; no polling.

import { get } from './api.js';
import { clock, h } from './util.js';

const $ = (id) => document.getElementById(id);
export const UNAVAILABLE = 'config store unavailable: changes are refused; proxying continues with the last known config';

// The store's kind as the UI names it (a store without status() reports
// its class name).
export function storeKind(store) {
  const kind = String((store && store.kind) || '').toLowerCase();
  if (kind === 'memorystore') return 'memory';
  return kind || 'unknown';
}

function uptime(since) {
  const s = Math.max(0, Date.now() / 1000 - since);
  if (s < 60) return `up ${Math.floor(s)}s`;
  if (s < 3600) return `up ${Math.floor(s / 60)}m`;
  return `up ${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

function available(store) {
  return !store || store.available !== false;
}

export class ClusterPanel {
  constructor(dash) {
    this.dash = dash;
    this.status = null;
    this.nodes = null;        // last known list, or null before the first read
    this.nodesError = '';     // why the list could not be read now
    this.nodeChip = $('node-chip');
    this.nodeName = $('node-name');
    this.storeChip = $('store-chip');
    this.banner = $('store-banner');
    this.bannerDetail = $('store-banner-detail');
    this.title = $('cluster-title');
    this.hint = $('cluster-hint');
    this.facts = $('store-facts');
    this.nodesWrap = $('nodes-wrap');
    this.list = $('nodes');
    this.nodesNote = $('nodes-note');
    setInterval(() => this.renderAges(), 5000);
  }

  get cluster() {
    return Boolean(this.status && (this.status.cluster || storeKind(this.status.store) === 'etcd'));
  }

  // Read /status (and /nodes in cluster mode) again, at most once per burst
  // of calls.
  refresh() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.load(), 100);
  }

  async load() {
    try {
      this.status = await get('/status');
    } catch (e) {
      return;  // the feed status says whether lbproxy can be reached
    }
    this.render();
    if (this.cluster) await this.loadNodes();
  }

  async loadNodes() {
    try {
      const body = await get('/nodes');
      this.nodes = body.nodes || [];
      this.nodesError = '';
      if (body.store && this.status) this.status.store = body.store;
    } catch (e) {
      this.nodesError = e.message;
    }
    this.render();
  }

  // A `store` event: availability changed or a node joined or left.
  onStore(event) {
    if (!this.status) { this.refresh(); return; }
    const was = available(this.status.store);
    this.status.store = event.store;
    if (event.node) this.status.node = event.node;
    const now = available(event.store);
    if (was && !now) this.dash.log.add('error', `${UNAVAILABLE} (${event.store.error || 'no answer'})`);
    if (!was && now) this.dash.log.add('store', 'config store available again: changes are accepted');
    this.render();
    if (this.cluster && (event.change === 'nodes' || now)) this.loadNodes();
  }

  render() {
    const s = this.status;
    if (!s) return;
    const store = s.store || {};
    const kind = storeKind(store);
    const up = available(store);

    this.nodeChip.hidden = !s.node;
    this.nodeName.textContent = s.node || '';
    this.nodeChip.title = s.node ? `This page shows node ${s.node}'s view: its health checks and its traffic` : '';

    let chip = `store: ${kind}`;
    let state = 'ok';
    let tip = '';
    if (!up) { chip = `store: ${kind} unavailable`; state = 'down'; tip = store.error || ''; }
    else if (kind === 'memory') { chip = 'store: memory, not durable'; state = 'warn'; tip = 'Changes are lost when lbproxy restarts (no --state-dir)'; }
    else if (kind === 'file') tip = `Changes are saved in ${store.path || 'the state directory'} and survive a restart`;
    else if (kind === 'etcd') tip = `Shared by the cluster through etcd at ${(store.endpoints || []).join(', ')}`;
    this.storeChip.textContent = chip;
    this.storeChip.dataset.state = state;
    this.storeChip.title = tip;

    this.banner.hidden = up;
    this.bannerDetail.textContent = up ? '' : `${store.error || 'etcd does not answer'}${store.since ? ` (since ${clock(new Date(store.since * 1000))})` : ''}`;
    document.body.classList.toggle('store-down', !up);

    this.title.textContent = this.cluster ? 'Cluster' : 'Config store';
    this.hint.textContent = s.node ? `this view: node ${s.node}` : 'single node';
    this.facts.replaceChildren(...this.storeFacts(store, kind, up));
    this.renderNodes(up);
  }

  storeFacts(store, kind, up) {
    const fact = (label, value, cls) => h('div', { class: `fact ${cls || ''}` }, h('dt', { text: label }), h('dd', {}, value));
    const out = [];
    const status = up
      ? h('span', { class: 'store-state', dataset: { state: kind === 'memory' ? 'warn' : 'ok' }, text: 'available' })
      : h('span', { class: 'store-state', dataset: { state: 'down' }, text: 'unavailable' });
    out.push(fact('Store', h('span', {}, h('b', { text: kind }), ' ', status), 'store-kind'));
    if (kind === 'memory') {
      out.push(fact('Durability', h('span', {}, 'none: changes live in memory and are lost when lbproxy restarts (run with ',
        h('code', { class: 'flag', text: '--state-dir' }), ' to keep them)'), 'durability warn'));
    } else if (kind === 'file') {
      out.push(fact('Durability', 'changes are fsync\'d to disk and survive a restart', 'durability'));
      out.push(fact('State file', h('code', { text: store.path || '?' }), 'path'));
    } else if (kind === 'etcd') {
      out.push(fact('Durability', 'shared by every node; a change is accepted only once etcd stored it', 'durability'));
      out.push(fact('etcd', h('code', { text: (store.endpoints || []).join(', ') }), 'endpoints'));
      out.push(fact('Prefix', h('code', { text: store.prefix || '' }), 'prefix'));
    }
    if (!up) out.push(fact('Why', store.error || 'no answer', 'error'));
    else if (store.since && kind === 'etcd') out.push(fact('Since', clock(new Date(store.since * 1000)), 'since'));
    return out;
  }

  renderNodes(up) {
    this.nodesWrap.hidden = !this.cluster;
    if (!this.cluster) return;
    const nodes = this.nodes || [];
    const stale = Boolean(this.nodesError) || !up;
    this.list.classList.toggle('stale', stale && nodes.length > 0);
    this.nodesNote.textContent = stale
      ? (nodes.length ? 'last known list: the store cannot be read now' : `cannot list the nodes: ${this.nodesError || 'the store is unavailable'}`)
      : `${nodes.length} live node${nodes.length === 1 ? '' : 's'}`;
    this.list.replaceChildren(...nodes.map((n) => {
      const name = n.admin_url
        ? h('a', { class: 'node-link', href: n.admin_url, text: n.name, title: `Open node ${n.name}'s UI (${n.admin_url})`, 'aria-current': n.self ? 'page' : null })
        : h('span', { class: 'node-link', text: n.name });
      return h('li', { class: n.self ? 'node self' : 'node', dataset: { node: n.name } },
        h('span', { class: 'node-dot', 'aria-hidden': 'true' }),
        name,
        n.self ? h('span', { class: 'pill small here', text: 'this view' }) : null,
        h('span', { class: 'node-age', dataset: { since: n.since || '' }, text: n.since ? uptime(n.since) : '' }),
        h('span', { class: 'node-url', text: n.admin_url || 'no admin URL' }));
    }));
  }

  renderAges() {
    for (const el of this.list.querySelectorAll('.node-age')) {
      const since = Number(el.dataset.since);
      if (since) el.textContent = uptime(since);
    }
  }
}
