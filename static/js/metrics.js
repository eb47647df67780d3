// Per-service figures for the overview, from one read of /metrics (the
// Prometheus text lbproxy serves, every sample labelled with its service):
// the JSON API has no call that gives every service's counters at once.

import { authHeaders } from './api.js';

// [{name, labels, value}] of a Prometheus text exposition.
export function parseMetrics(text) {
  const out = [];
  for (const line of text.split('\n')) {
    if (!line || line[0] === '#') continue;
    const m = /^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    for (const l of (m[2] || '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) {
      labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
    }
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}

// service name -> {accepted, active, up, backends} from parsed samples.
export function perService(samples) {
  const out = new Map();
  const of = (name) => {
    if (!out.has(name)) out.set(name, { accepted: 0, active: 0, up: 0, backends: 0 });
    return out.get(name);
  };
  for (const s of samples) {
    const name = s.labels.service;
    if (name === undefined) continue;
    if (s.name === 'lbproxy_connections_accepted_total') of(name).accepted = s.value;
    else if (s.name === 'lbproxy_connections_active') of(name).active = s.value;
    else if (s.name === 'lbproxy_backend_up') {
      const f = of(name);
      f.backends += 1;
      if (s.value >= 1) f.up += 1;
    }
  }
  return out;
}

// One read of /metrics; rejects with the HTTP status when refused.
export async function readMetrics() {
  const response = await fetch('/metrics', { headers: authHeaders({ Accept: 'text/plain' }), cache: 'no-store' });
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  return perService(parseMetrics(await response.text()));
}
