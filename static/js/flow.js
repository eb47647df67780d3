// The flow view: clients -> lbproxy -> backends, drawn on a canvas.
// Decisions are aggregated, never drawn one by one: band widths follow each
// backend's share of the last seconds, and moving dots stand for a fixed
// number of connections each, so the picture reads the same at 1 and at
// 10,000 connections a second.

import { colourOf, fitCanvas, rate, STATE_COLOURS } from './util.js';

const DOTS_PER_SECOND = 36;
const TRAVEL = 1.3;       // seconds a dot takes end to end
const MAX_DOTS = 400;

export class FlowView {
  constructor(canvas, scaleLabel) {
    this.canvas = canvas;
    this.scaleLabel = scaleLabel;
    this.backends = [];      // [{id, state}]
    this.rates = {};         // id -> conn/s
    this.total = 0;
    this.clients = 0;
    this.strategy = '';
    this.noBackend = 0;
    this.rejected = 0;
    this.dots = [];
    this.carry = {};
    this.perDot = 1;
    this.reduceMotion = window.matchMedia && window.matchMedia('(prefers-reduced-motion: reduce)').matches;
  }

  setBackends(list) { this.backends = list; }

  setRates(rates, total, clients) {
    this.rates = rates;
    this.total = total;
    this.clients = clients;
    const k = niceStep(total / DOTS_PER_SECOND);
    if (k !== this.perDot) {
      this.perDot = k;
    }
    const parts = this.backends.map((b) => `${b.id} ${b.state === 'up' ? `${rate(rates[b.id] || 0)} per second` : b.state}`);
    this.canvas.setAttribute('aria-label', `Clients to lbproxy: ${rate(total)} connections per second, using ${this.strategy || 'its strategy'}; ${parts.join('; ') || 'no backends'}`);
    this.scaleLabel.textContent = total > 0 ? `each dot ≈ ${k} connection${k === 1 ? '' : 's'}` : 'waiting for connections';
  }

  // A batch of routing decisions: counts per backend over `span` seconds.
  routes(counts, span = 0.1) {
    if (this.reduceMotion || document.hidden) return;
    const now = performance.now() / 1000;
    for (const [id, n] of Object.entries(counts)) {
      const acc = (this.carry[id] || 0) + n / this.perDot;
      const whole = Math.floor(acc);
      this.carry[id] = acc - whole;
      for (let i = 0; i < whole && this.dots.length < MAX_DOTS; i++) {
        this.dots.push({ id, born: now + Math.random() * span, lane: Math.random() * 2 - 1 });
      }
    }
  }

  layout(width, height) {
    const n = Math.max(1, this.backends.length);
    const narrow = width < 560;
    const bw = narrow ? Math.max(96, width * 0.3) : Math.min(190, Math.max(120, width * 0.2));
    const bx = width - bw - (narrow ? 6 : 12);
    const gap = Math.min(58, (height - 24) / n);
    const top = height / 2 - (gap * (n - 1)) / 2;
    const nodes = new Map();
    this.backends.forEach((b, i) => nodes.set(b.id, { x: bx, y: top + i * gap, w: bw, h: Math.min(44, gap - 8) }));
    return {
      client: narrow
        ? { x: 6, y: height / 2, w: Math.max(66, width * 0.2), h: 56 }
        : { x: 20, y: height / 2, w: Math.min(150, width * 0.16), h: 64 },
      proxy: narrow
        ? { x: width * 0.3, y: height / 2, w: Math.max(80, width * 0.25), h: 60 }
        : { x: width * 0.36, y: height / 2, w: Math.min(170, width * 0.18), h: 70 },
      nodes,
    };
  }

  draw() {
    const { ctx, width, height } = fitCanvas(this.canvas);
    ctx.clearRect(0, 0, width, height);
    const L = this.layout(width, height);
    const px0 = L.client.x + L.client.w;
    const px1 = L.proxy.x;
    const pxOut = L.proxy.x + L.proxy.w;
    const total = this.total || 0;

    // Band from clients to lbproxy.
    const band = total > 0 ? 4 + Math.min(22, Math.log10(1 + total) * 6) : 2;
    const grad = ctx.createLinearGradient(px0, 0, px1, 0);
    grad.addColorStop(0, 'rgba(148,163,184,0.10)');
    grad.addColorStop(1, 'rgba(56,189,248,0.28)');
    ctx.fillStyle = grad;
    ctx.fillRect(px0, L.client.y - band / 2, px1 - px0, band);

    // Curves from lbproxy to each backend.
    const paths = new Map();
    for (const b of this.backends) {
      const node = L.nodes.get(b.id);
      const share = total > 0 ? (this.rates[b.id] || 0) / total : 0;
      const up = b.state === 'up';
      const path = { x0: pxOut, y0: L.proxy.y, x3: node.x, y3: node.y };
      path.x1 = pxOut + (node.x - pxOut) * 0.5; path.y1 = L.proxy.y;
      path.x2 = pxOut + (node.x - pxOut) * 0.5; path.y2 = node.y;
      paths.set(b.id, path);
      ctx.beginPath();
      ctx.moveTo(path.x0, path.y0);
      ctx.bezierCurveTo(path.x1, path.y1, path.x2, path.y2, path.x3, path.y3);
      ctx.lineCap = 'round';
      if (up) {
        ctx.strokeStyle = hexA(colourOf(b.id), share > 0 ? 0.45 : 0.18);
        ctx.lineWidth = 1.5 + share * 20;
        ctx.setLineDash([]);
      } else {
        ctx.strokeStyle = hexA(STATE_COLOURS[b.state] || '#94a3b8', 0.55);
        ctx.lineWidth = 1.5;
        ctx.setLineDash([4, 5]);
      }
      ctx.stroke();
      ctx.setLineDash([]);
    }

    // Dots.
    const now = performance.now() / 1000;
    const keep = [];
    for (const d of this.dots) {
      const age = now - d.born;
      if (age < 0) { keep.push(d); continue; }
      const f = age / TRAVEL;
      const path = paths.get(d.id);
      if (f >= 1 || !path) continue;
      keep.push(d);
      let x; let y;
      const split = (px1 - px0 + L.proxy.w) / (px1 - px0 + L.proxy.w + (path.x3 - path.x0));
      if (f < split) {
        const g = f / split;
        x = px0 + g * (pxOut - px0);
        y = L.client.y + d.lane * (band / 2 - 1.5) * (1 - Math.max(0, (x - px1) / L.proxy.w));
      } else {
        const g = (f - split) / (1 - split);
        [x, y] = bezier(path, g);
      }
      ctx.beginPath();
      ctx.arc(x, y, 3, 0, Math.PI * 2);
      ctx.fillStyle = colourOf(d.id);
      ctx.fill();
    }
    this.dots = keep;

    // Nodes on top.
    box(ctx, L.client, '#1e293b', '#334155');
    label(ctx, L.client, 'Clients', `${this.clients} seen · ${rate(total)}/s`);
    box(ctx, L.proxy, '#0c4a6e', '#38bdf8');
    label(ctx, L.proxy, 'lbproxy', this.strategy || '…', '#e0f2fe');
    const trouble = [];
    if (this.noBackend > 0) trouble.push(`${rate(this.noBackend)}/s found no backend`);
    if (this.rejected > 0) trouble.push(`${rate(this.rejected)}/s over the connection limit`);
    ctx.textAlign = 'center';
    ctx.textBaseline = 'top';
    ctx.font = '600 12px system-ui, sans-serif';
    ctx.fillStyle = '#fca5a5';
    trouble.forEach((t, i) => ctx.fillText(`⚠ ${t}`, L.proxy.x + L.proxy.w / 2, L.proxy.y + L.proxy.h / 2 + 8 + i * 16));
    if (!this.backends.length) {
      ctx.textAlign = 'left';
      ctx.textBaseline = 'middle';
      ctx.font = '13px system-ui, sans-serif';
      ctx.fillStyle = '#94a3b8';
      ctx.fillText('no backends in the pool', pxOut + 24, L.proxy.y);
    }
    for (const b of this.backends) {
      const node = L.nodes.get(b.id);
      const r = { x: node.x, y: node.y, w: node.w, h: node.h };
      const stateColour = STATE_COLOURS[b.state] || '#94a3b8';
      box(ctx, r, b.state === 'up' ? '#111c2e' : '#1f1720', b.state === 'up' ? '#334155' : stateColour);
      ctx.fillStyle = colourOf(b.id);
      ctx.fillRect(r.x, r.y - r.h / 2 + 4, 4, r.h - 8);
      ctx.beginPath();
      ctx.arc(r.x + r.w - 12, r.y - r.h / 2 + 12, 5, 0, Math.PI * 2);
      ctx.fillStyle = stateColour;
      ctx.fill();
      ctx.textAlign = 'left';
      ctx.textBaseline = 'middle';
      ctx.fillStyle = '#f1f5f9';
      ctx.font = '600 13px system-ui, sans-serif';
      ctx.fillText(clip(ctx, b.id, r.w - 40), r.x + 12, r.y - (r.h > 30 ? 8 : 0));
      if (r.h > 30) {
        ctx.font = '12px system-ui, sans-serif';
        ctx.fillStyle = b.state === 'up' ? '#94a3b8' : stateColour;
        ctx.fillText(b.state === 'up' ? `${rate(this.rates[b.id] || 0)}/s` : b.state, r.x + 12, r.y + 10);
      }
    }
  }
}

function niceStep(v) {
  if (v <= 1) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function bezier(p, t) {
  const u = 1 - t;
  const x = u * u * u * p.x0 + 3 * u * u * t * p.x1 + 3 * u * t * t * p.x2 + t * t * t * p.x3;
  const y = u * u * u * p.y0 + 3 * u * u * t * p.y1 + 3 * u * t * t * p.y2 + t * t * t * p.y3;
  return [x, y];
}

function box(ctx, r, fill, stroke) {
  const x = r.x; const y = r.y - r.h / 2;
  ctx.beginPath();
  ctx.roundRect(x, y, r.w, r.h, 10);
  ctx.fillStyle = fill;
  ctx.fill();
  ctx.lineWidth = 1.5;
  ctx.strokeStyle = stroke;
  ctx.stroke();
}

function label(ctx, r, title, sub, colour = '#f1f5f9') {
  ctx.textAlign = 'center';
  ctx.textBaseline = 'middle';
  ctx.fillStyle = colour;
  ctx.font = `600 ${r.w < 110 ? 12 : 14}px system-ui, sans-serif`;
  ctx.fillText(clip(ctx, title, r.w - 8), r.x + r.w / 2, r.y - 9);
  ctx.font = `${r.w < 110 ? 11 : 12}px system-ui, sans-serif`;
  ctx.fillStyle = '#94a3b8';
  ctx.fillText(clip(ctx, sub, r.w - 8), r.x + r.w / 2, r.y + 11);
}

function clip(ctx, text, max) {
  if (ctx.measureText(text).width <= max) return text;
  let t = text;
  while (t.length > 1 && ctx.measureText(`${t}…`).width > max) t = t.slice(0, -1);
  return `${t}…`;
}

function hexA(hex, a) {
  const n = parseInt(hex.slice(1), 16);
  return `rgba(${(n >> 16) & 255},${(n >> 8) & 255},${n & 255},${a})`;
}
