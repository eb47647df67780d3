// Choosing the strategy: every discovered plugin with its description, and
// a small form made from its options' JSON Schema.

import { call, get } from './api.js';
import { h, showResult } from './util.js';

export class StrategyPanel {
  constructor(dash) {
    this.dash = dash;
    this.form = document.getElementById('strategy-form');
    this.select = document.getElementById('strategy-select');
    this.desc = document.getElementById('strategy-desc');
    this.options = document.getElementById('strategy-options');
    this.out = document.getElementById('strategy-result');
    this.active = document.getElementById('strategy-active');
    this.plugins = new Map();
    this.select.addEventListener('change', () => this.renderOptions());
    this.form.addEventListener('submit', (e) => { e.preventDefault(); this.apply(); });
  }

  async load() {
    const body = await get('/strategies');
    this.plugins = new Map(body.strategies.map((s) => [s.name, s]));
    this.select.replaceChildren(...body.strategies.map((s) => h('option', { value: s.name, text: s.name })));
    this.select.value = this.current() || body.active;
    this.renderOptions();
    this.showActive();
    this.dash.cards.render();
  }

  current() { return this.dash.config ? this.dash.config.strategy.name : null; }

  showActive() {
    const name = this.current();
    if (!name) return;
    this.active.textContent = `in use: ${name}`;
    for (const opt of this.select.options) opt.textContent = opt.value === name ? `${opt.value} (in use)` : opt.value;
  }

  renderOptions() {
    const plugin = this.plugins.get(this.select.value);
    this.desc.textContent = plugin ? plugin.description + (plugin.uses_weights === false ? ' It ignores backend weights.' : '') : '';
    const props = (plugin && plugin.options_schema && plugin.options_schema.properties) || {};
    const inUse = this.dash.config && this.dash.config.strategy.name === this.select.value ? this.dash.config.strategy.options || {} : {};
    const fields = Object.entries(props).map(([name, schema]) => field(name, schema, inUse[name]));
    this.options.replaceChildren(h('legend', { text: fields.length ? 'Options' : 'No options' }), ...fields);
    this.options.classList.toggle('none', !fields.length);
  }

  collect() {
    const plugin = this.plugins.get(this.select.value);
    const props = (plugin && plugin.options_schema && plugin.options_schema.properties) || {};
    const options = {};
    for (const [name, schema] of Object.entries(props)) {
      const input = this.options.querySelector(`[name="${CSS.escape(name)}"]`);
      if (!input) continue;
      const types = [].concat(schema.type || []);
      if (types.includes('boolean')) { options[name] = input.checked; continue; }
      const raw = input.value.trim();
      if (raw === '') continue;
      if (types.includes('integer') || types.includes('number')) {
        const n = Number(raw);
        options[name] = Number.isFinite(n) ? n : raw;
      } else {
        options[name] = raw;
      }
    }
    return options;
  }

  async apply() {
    const name = this.select.value;
    const button = this.form.querySelector('button[type=submit]');
    button.disabled = true;
    try {
      const body = await call('PUT', '/strategy', { name, options: this.collect() });
      showResult(this.out, true, `now using ${body.name} (config v${body.version})`);
    } catch (e) {
      showResult(this.out, false, e.message);
    } finally {
      button.disabled = false;
    }
  }
}

function field(name, schema, value) {
  const types = [].concat(schema.type || []);
  const id = `opt-${name}`;
  const hint = [schema.description, schema.minimum !== undefined ? `min ${schema.minimum}` : null,
    schema.maximum !== undefined ? `max ${schema.maximum}` : null,
    schema.default !== undefined ? `default ${schema.default}` : null].filter(Boolean).join(' · ');
  let input;
  if (types.includes('boolean')) {
    input = h('input', { id, name, type: 'checkbox' });
    input.checked = value !== undefined ? Boolean(value) : Boolean(schema.default);
    return h('div', { class: 'opt check' }, input, h('label', { for: id, text: name }), hint ? h('small', { text: hint }) : null);
  }
  if (schema.enum) {
    input = h('select', { id, name }, h('option', { value: '', text: '(default)' }), ...schema.enum.filter((v) => v !== null).map((v) => h('option', { value: v, text: v })));
    if (value !== undefined && value !== null) input.value = value;
  } else {
    const numeric = types.includes('integer') || types.includes('number');
    input = h('input', { id, name, autocomplete: 'off', inputmode: numeric ? 'numeric' : null, placeholder: schema.default !== undefined ? String(schema.default) : 'default' });
    if (value !== undefined && value !== null) input.value = value;
  }
  return h('div', { class: 'opt' }, h('label', { for: id, text: name }), input, hint ? h('small', { text: hint }) : null);
}
