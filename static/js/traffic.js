// Traffic control of one service: its access lists, per-client limits,
// max connections and queue, with their counters (refused by reason,
// queued now, longest wait), edited with one PATCH /services/NAME.
//
// A module of its own that mounts on any element with data-traffic-panel
// (index.html has one; the dashboard remounts it with mountTraffic(el, name)
// for each service it shows).

import { call, get } from './api.js';
import { h, showResult } from './util.js';

const REASONS = {
  denied: 'deny list', 'not-allowed': 'not in allow list', 'client-connections': 'client connections',
  'client-rate': 'client rate', 'queue-full': 'queue full', 'queue-timeout': 'queue timeout',
};
const POLL_MS = 2000;

const lines = (text) => text.split(/[\s,]+/).map((s) => s.trim()).filter(Boolean);
const numberOrNull = (raw) => {
  const text = raw.trim();
  if (text === '') return null;
  const n = Number(text);
  return Number.isFinite(n) ? n : text;  // the server names what is wrong
};

export class TrafficPanel {
  constructor(root, service) {
    this.root = root;
    this.service = service || '';
    this.shownVersion = null;
    this.timer = null;
    this.build();
  }

  build() {
    const field = (label, name, attrs = {}) => h('label', {}, label, h('input', { name, autocomplete: 'off', ...attrs }));
    this.select = h('select', { name: 'service', 'aria-label': 'Service', onchange: () => this.choose(this.select.value) });
    this.counters = h('dl', { class: 'facts traffic-counters', 'aria-label': 'Traffic control counters' });
    this.form = h('form', { class: 'settings-form traffic-form', novalidate: true },
      h('fieldset', {}, h('legend', { text: 'Access lists (CIDR, one per line)' }),
        h('label', {}, 'Allow (empty: everyone)', h('textarea', { name: 'allow', rows: 2, spellcheck: 'false' })),
        h('label', {}, 'Deny', h('textarea', { name: 'deny', rows: 2, spellcheck: 'false' }))),
      h('fieldset', {}, h('legend', { text: 'Per client' }),
        field('Max connections', 'client_max_connections', { inputmode: 'numeric', placeholder: 'no limit' }),
        field('New per second', 'rate', { inputmode: 'decimal', placeholder: 'no limit' }),
        field('Burst', 'burst', { inputmode: 'numeric', placeholder: 'the rate' }),
        field('IPv4 prefix', 'prefix_v4', { inputmode: 'numeric' }),
        field('IPv6 prefix', 'prefix_v6', { inputmode: 'numeric' })),
      h('fieldset', {}, h('legend', { text: 'Service' }),
        field('Max connections', 'max_connections', { inputmode: 'numeric', placeholder: 'the command line\'s' }),
        field('Queue length', 'max_queue', { inputmode: 'numeric' }),
        field('Queue timeout (s)', 'queue_timeout', { inputmode: 'decimal' })),
      h('div', { class: 'actions-row' },
        h('button', { type: 'submit', class: 'primary', text: 'Save traffic control' }),
        this.out = h('output', { class: 'result', role: 'status' })));
    this.form.addEventListener('submit', (e) => { e.preventDefault(); this.save(); });
    this.summary = h('span', { class: 'hint traffic-summary' });
    this.root.replaceChildren(
      h('details', { open: true },
        h('summary', {}, h('h2', { id: 'traffic-title', text: 'Traffic control' }), this.summary),
        h('div', { class: 'row-form' }, this.select),
        this.counters, this.form));
  }

  async start() {
    await this.refreshServices();
    this.poll();
  }

  async refreshServices() {
    try {
      const { services } = await get('/services');
      const names = services.map((s) => s.name);
      if (!names.includes(this.service)) this.service = names.includes('default') ? 'default' : (names[0] || '');
      this.select.replaceChildren(...names.map((n) => h('option', { value: n, text: n, selected: n === this.service })));
    } catch (e) {
      showResult(this.out, false, e.message);
    }
  }

  choose(name) {
    this.service = name;
    this.shownVersion = null;
    this.poll();
  }

  // Stop polling for good (the view mounted a panel for another service).
  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  async poll() {
    clearTimeout(this.timer);
    if (this.stopped) return;
    if (this.service) {
      try {
        this.show(await get(`/services/${encodeURIComponent(this.service)}`));
      } catch (e) {
        showResult(this.out, false, e.message);
      }
    }
    if (!this.stopped) this.timer = setTimeout(() => this.poll(), POLL_MS);
  }

  show(view) {
    const t = view.traffic || { refused: {}, queue: {}, clients: {} };
    const refused = Object.entries(REASONS).map(([k, label]) => [label, t.refused[k] || 0]);
    const facts = [
      ...refused.map(([label, n]) => [`refused: ${label}`, n, 'refused']),
      ['queued now', t.queue.length ?? 0, 'queued'],
      ['waiting now', `${(t.queue.wait_now ?? 0).toFixed(1)} s`, 'wait-now'],
      ['longest wait', `${(t.queue.longest_wait ?? 0).toFixed(1)} s`, 'longest-wait'],
      ['clients tracked', t.clients.entries ?? 0, 'clients'],
    ];
    this.counters.replaceChildren(...facts.flatMap(([k, v, key]) => [h('dt', { text: k }), h('dd', { text: String(v), dataset: { counter: key } })]));
    const limits = view.client_limits;
    const rules = [
      view.allow.length ? `allow ${view.allow.length}` : '', view.deny.length ? `deny ${view.deny.length}` : '',
      limits ? 'per-client limits' : '', view.max_queue ? `queue ${view.max_queue}` : '',
    ].filter(Boolean);
    // With --workers, each worker enforces the limits on its own connections.
    const workers = t.workers || 0;
    if (workers > 1) rules.push(`summed over ${workers} workers; per-client limits hold per worker`);
    this.summary.textContent = rules.length ? rules.join(', ') : 'no rules';
    if (this.form.contains(document.activeElement) || this.shownVersion === view.version) return;
    this.shownVersion = view.version;
    const f = this.form.elements;
    f.allow.value = view.allow.join('\n');
    f.deny.value = view.deny.join('\n');
    f.client_max_connections.value = limits?.max_connections ?? '';
    f.rate.value = limits?.rate ?? '';
    f.burst.value = limits?.burst ?? '';
    f.prefix_v4.value = limits?.prefix_v4 ?? 32;
    f.prefix_v6.value = limits?.prefix_v6 ?? 128;
    f.max_connections.value = view.max_connections ?? '';
    f.max_queue.value = view.max_queue ?? 0;
    f.queue_timeout.value = view.queue_timeout ?? 10;
  }

  body() {
    const f = this.form.elements;
    const limits = {
      max_connections: numberOrNull(f.client_max_connections.value),
      rate: numberOrNull(f.rate.value),
      burst: numberOrNull(f.burst.value),
      prefix_v4: numberOrNull(f.prefix_v4.value) ?? 32,
      prefix_v6: numberOrNull(f.prefix_v6.value) ?? 128,
    };
    const none = limits.max_connections === null && limits.rate === null;
    return {
      allow: lines(f.allow.value),
      deny: lines(f.deny.value),
      client_limits: none ? null : limits,
      max_connections: numberOrNull(f.max_connections.value),
      max_queue: numberOrNull(f.max_queue.value) ?? 0,
      queue_timeout: numberOrNull(f.queue_timeout.value) ?? 10,
    };
  }

  async save() {
    const button = this.form.querySelector('button[type=submit]');
    button.disabled = true;
    try {
      const saved = await call('PATCH', `/services/${encodeURIComponent(this.service)}`, this.body());
      this.shownVersion = null;
      document.activeElement?.blur?.();
      this.show(saved);
      showResult(this.out, true, `saved as config v${saved.version}`);
    } catch (e) {
      showResult(this.out, false, e.message);
    } finally {
      button.disabled = false;
    }
  }
}

// Mount a panel for `service` on `root`, replacing (and stopping) the one
// there: the dashboard remounts it with each service it shows.
export function mountTraffic(root, service) {
  if (root.trafficPanel) root.trafficPanel.stop();
  const panel = new TrafficPanel(root, service);
  root.trafficPanel = panel;
  panel.start();
  return panel;
}

for (const root of document.querySelectorAll('[data-traffic-panel]')) {
  root.trafficPanel = mountTraffic(root, root.dataset.service);
}
