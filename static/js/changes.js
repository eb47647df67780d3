// The event log's lines for backend events and config changes.

// One line of the event log for a backend event, without saying the state
// twice when the reason only repeats it ("removed: removed").
export function backendLine(id, state, reason) {
  let rest = String(reason || '').trim();
  if (rest === state) rest = '';
  else if (rest.startsWith(`${state}:`)) rest = rest.slice(state.length + 1).trim();
  return rest ? `${id} is ${state}: ${rest}` : `${id} is ${state}`;
}

export function describeChange(old, config) {
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
  for (const key of ['listen', 'sni', 'accept_proxy']) {
    if (old[key] && config[key] && JSON.stringify(old[key]) !== JSON.stringify(config[key])) {
      lines.push(`${key.replace('_', ' ')}: ${config[key].join(', ') || 'none'}`);
    }
  }
  for (const key of ['health_check', 'outlier', 'slow_start', 'drain_timeout']) {
    if (JSON.stringify(old[key]) !== JSON.stringify(config[key])) lines.push(`${key.replace('_', ' ')} settings changed`);
  }
  if (!lines.length) lines.push('config saved');
  return lines.map((l) => `v${config.version}: ${l}`);
}
