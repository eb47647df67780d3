// Pool-wide settings: the active health check, passive ejection, slow
// start and the drain timeout, saved with one PUT /settings.

import { call } from './api.js';
import { showResult } from './util.js';

const HC = ['interval', 'timeout', 'rise', 'fall', 'path', 'status'];

export class SettingsPanel {
  constructor(dash) {
    this.dash = dash;
    this.form = document.getElementById('settings-form');
    this.out = document.getElementById('settings-result');
    this.summary = document.getElementById('settings-summary');
    this.form.elements.type.addEventListener('change', () => this.toggle());
    this.form.addEventListener('submit', (e) => { e.preventDefault(); this.save(); });
    this.shownVersion = null;
  }

  // Fill the form from the config in force, unless the operator is editing.
  show(config) {
    if (!config) return;
    const hc = config.health_check;
    this.summary.textContent = hc ? `${hc.type} every ${hc.interval}s` : 'no active checks';
    if (this.form.contains(document.activeElement) || this.shownVersion === config.version) return;
    this.shownVersion = config.version;
    const f = this.form.elements;
    const d = { interval: 1, timeout: 1, rise: 2, fall: 2, path: '/', status: '200-399' };  // HealthCheck's defaults
    f.type.value = hc ? hc.type : '';
    for (const k of HC) f[k].value = hc ? hc[k] : d[k];
    const o = config.outlier || {};
    f.consecutive_failures.value = o.consecutive_failures ?? '';
    f.base_ejection.value = o.base_ejection ?? '';
    f.slow_start.value = config.slow_start ?? 0;
    f.drain_timeout.value = config.drain_timeout ?? '';
    f.on_marked_down.value = config.on_marked_down || 'none';
    this.toggle();
  }

  toggle() {
    const http = this.form.elements.type.value === 'http';
    for (const el of this.form.querySelectorAll('.http-only')) el.hidden = !http;
  }

  async save() {
    const f = this.form.elements;
    const config = this.dash.config || {};
    const value = (name) => {
      const raw = f[name].value.trim();
      const n = Number(raw);
      return raw !== '' && Number.isFinite(n) && name !== 'path' && name !== 'status' ? n : raw;
    };
    let health = null;
    if (f.type.value) {
      health = { ...(config.health_check || {}), type: f.type.value };
      for (const k of HC) if (f[k].value.trim() !== '') health[k] = value(k);
    }
    const body = {
      health_check: health,
      outlier: { ...(config.outlier || {}), consecutive_failures: value('consecutive_failures'), base_ejection: value('base_ejection') },
      slow_start: value('slow_start'),
      drain_timeout: f.drain_timeout.value.trim() === '' ? null : value('drain_timeout'),
      on_marked_down: f.on_marked_down.value,
    };
    const button = this.form.querySelector('button[type=submit]');
    button.disabled = true;
    try {
      const saved = await call('PUT', '/settings', body);
      this.shownVersion = null;
      showResult(this.out, true, `saved as config v${saved.version}`);
    } catch (e) {
      showResult(this.out, false, e.message);
    } finally {
      button.disabled = false;
    }
  }
}
