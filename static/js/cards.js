// One card per backend: state, reason of the last change, counters, and
// the controls that change it.  Cards are built once and updated in place,
// so focus and half-typed values survive live updates.

import { call } from './api.js';
import { ago, bytes, colourOf, count, h, rate, showResult } from './util.js';

const DRAINED = 'drained (no connections): Remove it, or Enable it again';

export class BackendCards {
  constructor(root, dash) {
    this.root = root;
    this.dash = dash;
    this.cards = new Map();
    this.rates = {};
  }

  render() {
    const views = [...this.dash.views.values()];
    const seen = new Set();
    for (const view of views) {
      seen.add(view.id);
      let card = this.cards.get(view.id);
      if (!card) {
        card = this.build(view.id);
        this.cards.set(view.id, card);
      }
      this.fill(card, view);
    }
    for (const [id, card] of this.cards) {
      if (!seen.has(id)) { card.root.remove(); this.cards.delete(id); }
    }
    const order = views.map((v) => this.cards.get(v.id).root);
    order.forEach((el, i) => { if (this.root.children[i] !== el) this.root.insertBefore(el, this.root.children[i] || null); });
    if (!views.length) {
      if (!this.empty) this.empty = h('p', { class: 'empty', text: 'No backends yet: add one below.' });
      this.root.append(this.empty);
    } else if (this.empty) {
      this.empty.remove();
    }
  }

  update(rates) {
    this.rates = rates;
    for (const view of this.dash.views.values()) {
      const card = this.cards.get(view.id);
      if (card) this.fill(card, view);
    }
  }

  build(id) {
    const c = {};
    const act = (label, handler, cls = '') => h('button', { type: 'button', class: cls, onclick: handler, text: label });
    c.state = h('span', { class: 'pill' });
    c.address = h('p', { class: 'addr' });
    c.reason = h('p', { class: 'reason' });
    c.metrics = {};
    const metric = (key, label) => {
      c.metrics[key] = h('dd', { text: '–' });
      return h('div', { class: `m m-${key}` }, h('dt', { text: label }), c.metrics[key]);
    };
    c.weightInput = h('input', { name: 'weight', inputmode: 'numeric', autocomplete: 'off', 'aria-label': `Weight of ${id}` });
    c.result = h('output', { class: 'result', role: 'status' });
    c.weightNote = h('small', { class: 'weight-note', hidden: true });
    const weightForm = h('form', { class: 'weight-form', novalidate: true },
      h('label', { text: 'Weight' }, c.weightInput),
      h('button', { type: 'submit', text: 'Set' }),
      c.weightNote);
    weightForm.addEventListener('submit', (e) => {
      e.preventDefault();
      const raw = c.weightInput.value.trim();
      const n = Number(raw);
      this.act(id, c, 'PATCH', { weight: raw !== '' && Number.isFinite(n) ? n : raw }, (v) => `weight set to ${v.weight}`);
    });
    c.drain = act('Drain', () => this.act(id, c, 'PATCH', { state: 'draining' },
      (v) => ((v.stats && v.stats.active) ? 'draining: no new connections' : 'drained at once: it had no connections')));
    c.disable = act('Disable', () => this.act(id, c, 'PATCH', { state: 'disabled' }, () => 'disabled'));
    c.enable = act('Enable', () => this.act(id, c, 'PATCH', { state: 'up' }, () => 'enabled'));
    c.remove = act('Remove', () => this.remove(id, c, false), 'danger-soft');
    c.force = act('Force remove', () => this.force(id, c), 'danger');
    c.force.title = 'Remove now and close its open connections';
    c.remove.title = 'Remove once its open connections finish';
    c.root = h('article', { class: 'card', dataset: { id }, 'aria-label': `Backend ${id}`, style: `--c:${colourOf(id)}` },
      h('header', {},
        h('span', { class: 'swatch', 'aria-hidden': 'true' }),
        h('h3', { text: id }),
        c.state),
      c.address,
      c.reason,
      h('dl', { class: 'metrics' },
        metric('rate', 'conn/s'), metric('active', 'active'), metric('bytes', 'bytes/s'),
        metric('failures', 'failures'), metric('total', 'total'), metric('latency', 'response')),
      h('div', { class: 'controls' },
        weightForm,
        h('div', { class: 'buttons' }, c.drain, c.disable, c.enable, c.remove, c.force)),
      c.result);
    return c;
  }

  fill(c, view) {
    // Draining with nothing open is done: say so, and offer the next step.
    const open = this.open(view);
    const drained = view.state === 'draining' && open === 0;
    const state = drained ? 'drained' : (view.state || 'up');
    c.root.dataset.state = state;
    c.state.textContent = state;
    c.state.dataset.state = state;
    c.address.textContent = view.address || `${view.host}:${view.port}`;
    // TLS to the backend: say so, and warn when its certificate is not verified.
    if (view.tls) {
      const verified = view.tls.verify !== false;
      c.address.append(h('small', {
        class: verified ? 'tls-note' : 'tls-note tls-unverified',
        text: verified ? ' · TLS' : ' · TLS, not verified',
        title: verified ? `verified as ${view.tls.server_name || view.host}` : 'verify: false: anyone on the path can pose as this backend',
      }));
    }
    const change = this.dash.lastChange.get(view.id);
    const health = view.health || {};
    let reason = health.reason || '';
    let since = health.since;
    if (change && (!since || change.time >= since)) { reason = change.reason; since = change.time; }
    if (drained) {
      reason = DRAINED;
    } else if (state === 'draining' || state === 'disabled' || state === 'removing') {
      if (!change || change.state !== state) reason = state === 'removing' ? 'removed from the pool; finishing its connections' : `set to ${state} by operator`;
    }
    const serverNow = this.dash.stats ? this.dash.stats.time : null;
    c.reason.textContent = reason ? `${reason}${since && serverNow ? ` · ${ago(Math.max(0, serverNow - since))}` : ''}` : '';
    c.reason.title = reason;
    const s = (this.dash.stats && this.dash.stats.backends && this.dash.stats.backends[view.id]) || {};
    const st = view.stats || {};
    c.metrics.rate.textContent = rate(this.rates[view.id] || 0);
    c.metrics.active.textContent = count(s.active ?? st.active ?? 0);
    c.metrics.bytes.textContent = bytes((s.bytes_up_per_second || 0) + (s.bytes_down_per_second || 0));
    c.metrics.failures.textContent = count(s.failures ?? st.failures ?? 0);
    c.metrics.total.textContent = count(s.total ?? st.total ?? 0);
    const lat = s.response_ewma ?? st.response_ewma;
    c.metrics.latency.textContent = lat == null ? '–' : `${Math.round(lat * 1000)} ms`;
    c.root.querySelector('.m-failures').classList.toggle('bad', (s.failures ?? st.failures ?? 0) > 0);
    if (document.activeElement !== c.weightInput && c.weightInput.dataset.shown !== String(view.weight)) {
      c.weightInput.value = view.weight;
      c.weightInput.dataset.shown = String(view.weight);
    }
    this.noteWeight(c);
    const admin = view.admin_state || state;
    const removing = state === 'removing';
    c.drain.hidden = removing || admin === 'draining';
    c.disable.hidden = removing || admin === 'disabled';
    c.enable.hidden = removing || admin === 'up';
    c.remove.hidden = removing;
    c.remove.classList.toggle('next', drained);
    c.enable.classList.toggle('next', drained);
    // A backend already removing can still have its connections cut.
    c.force.title = removing ? 'Close its remaining connections now' : 'Remove now and close its open connections';
    c.weightInput.disabled = removing;
  }

  // A strategy whose plugin says uses_weights: false never looks at the
  // weight (only 0, which takes a backend out, still matters): say so.
  noteWeight(c) {
    const name = this.dash.config ? this.dash.config.strategy.name : '';
    const plugin = this.dash.strategy && this.dash.strategy.plugins.get(name);
    const ignored = Boolean(plugin && plugin.uses_weights === false);
    c.weightNote.hidden = !ignored;
    c.weightNote.textContent = ignored ? `weight ignored by ${name}` : '';
    c.weightNote.title = ignored ? `${name} does not use weights; only weight 0 (no new connections) still counts` : '';
  }

  // Connections open on a backend, from the latest stats (else its view).
  open(view) {
    const s = (this.dash.stats && this.dash.stats.backends && this.dash.stats.backends[view.id]) || {};
    return s.active ?? (view.stats || {}).active ?? 0;
  }

  async act(id, c, method, body, describe) {
    try {
      const view = await call(method, `/backends/${encodeURIComponent(id)}`, body);
      showResult(c.result, true, describe(view));
      this.dash.apply(view);
    } catch (e) {
      showResult(c.result, false, e.message);
    }
  }

  async remove(id, c, force) {
    try {
      const r = await call('DELETE', `/backends/${encodeURIComponent(id)}${force ? '?force=true' : ''}`);
      const closed = r.closed ? `, ${r.closed} connection${r.closed === 1 ? '' : 's'} closed` : '';
      const text = r.state === 'removing' && !force
        ? `removing: waiting for ${r.connections} connection${r.connections === 1 ? '' : 's'} to finish`
        : `removed${closed}`;
      showResult(c.result, true, text);
      this.dash.refresh();
    } catch (e) {
      showResult(c.result, false, e.message);
    }
  }

  // Force removal cuts live connections: ask for a second click.
  force(id, c) {
    if (c.force.dataset.armed) {
      delete c.force.dataset.armed;
      c.force.textContent = 'Force remove';
      clearTimeout(c.forceTimer);
      this.remove(id, c, true);
      return;
    }
    c.force.dataset.armed = '1';
    c.force.textContent = 'Confirm: close connections';
    c.forceTimer = setTimeout(() => { delete c.force.dataset.armed; c.force.textContent = 'Force remove'; }, 5000);
  }
}
