// Small DOM and formatting helpers.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function rate(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return '–';
  if (n >= 10000) return `${(n / 1000).toFixed(1)}k`;
  if (n >= 1000) return `${(n / 1000).toFixed(2)}k`;
  if (n >= 100) return Math.round(n).toString();
  if (n >= 10) return n.toFixed(1);
  return n.toFixed(n === 0 ? 0 : 1);
}

export function count(n) {
  if (n === null || n === undefined) return '–';
  if (n >= 1e9) return `${(n / 1e9).toFixed(1)}G`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (n >= 1e4) return `${(n / 1e3).toFixed(1)}k`;
  return String(n);
}

export function bytes(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return '–';
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${n >= 100 || i === 0 ? Math.round(n) : n.toFixed(1)} ${units[i]}`;
}

export function ago(seconds) {
  if (seconds < 1) return 'just now';
  if (seconds < 60) return `${Math.floor(seconds)}s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ago`;
  return `${Math.floor(seconds / 3600)}h ago`;
}

export function clock(date = new Date()) {
  return date.toLocaleTimeString([], { hour12: false });
}

// Distinct colours for backends, in order of first appearance.
const PALETTE = ['#38bdf8', '#f472b6', '#a3e635', '#fbbf24', '#c084fc', '#fb923c', '#2dd4bf', '#f87171', '#818cf8', '#facc15'];
const colours = new Map();
export function colourOf(id) {
  if (!colours.has(id)) colours.set(id, PALETTE[colours.size % PALETTE.length]);
  return colours.get(id);
}

export const STATE_COLOURS = {
  up: '#22c55e', down: '#ef4444', draining: '#f59e0b', disabled: '#94a3b8', removing: '#a78bfa', removed: '#64748b',
};

// Show an action's outcome next to its control.  An error stays until the
// form it belongs to is edited or a later action succeeds, so it never
// outlives what it was about.
export function showResult(output, ok, message) {
  output.textContent = message;
  output.dataset.kind = ok ? 'ok' : 'error';
  output.title = message;
  clearTimeout(output._timer);
  if (ok) {
    output._timer = setTimeout(() => { if (output.textContent === message) output.textContent = ''; }, 6000);
    for (const other of document.querySelectorAll('.result[data-kind="error"]')) {
      if (other !== output) clearResult(other);
    }
  } else {
    const form = output.closest('form') || output.parentElement;
    if (form && !form._clearsErrors) {
      form._clearsErrors = true;
      form.addEventListener('input', () => {
        for (const o of form.querySelectorAll('.result[data-kind="error"]')) clearResult(o);
      });
    }
  }
}

function clearResult(output) {
  output.textContent = '';
  output.title = '';
  delete output.dataset.kind;
}

// Size a canvas to its box at the device pixel ratio; returns the context.
export function fitCanvas(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const { width, height } = canvas.getBoundingClientRect();
  const w = Math.max(1, Math.round(width * ratio));
  const hgt = Math.max(1, Math.round(height * ratio));
  if (canvas.width !== w || canvas.height !== hgt) { canvas.width = w; canvas.height = hgt; }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  return { ctx, width, height };
}

// A form value as a number when it is one, else as typed, so the server
// judges it and its message is the one shown.
export function numeric(value) {
  const text = String(value ?? '').trim();
  if (text === '') return text;
  const n = Number(text);
  return Number.isFinite(n) ? n : text;
}
