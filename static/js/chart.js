// A time-series line chart on a canvas: connections per second per backend,
// one point a second, up to the last five minutes (seeded from the server's
// history, so a reload keeps them), with markers for events such as a
// strategy switch or a backend going down.  The label says the span shown.

import { colourOf, fitCanvas, rate } from './util.js';

const SPAN = 300;

export class RateChart {
  constructor(canvas, legend, label) {
    this.canvas = canvas;
    this.legend = legend;
    this.label = label;
    this.series = new Map();   // id -> [{t, v}]
    this.markers = [];         // {t, text, colour}
    this.names = [];
    this.dirty = true;
  }

  // One point per backend for the second ending at t (seconds).
  push(t, values) {
    for (const [id, v] of Object.entries(values)) {
      if (!this.series.has(id)) this.series.set(id, []);
      this.series.get(id).push({ t, v });
    }
    const cutoff = t - SPAN - 2;
    for (const [id, points] of this.series) {
      while (points.length && points[0].t < cutoff) points.shift();
      if (!points.length) this.series.delete(id);
    }
    while (this.markers.length && this.markers[0].t < cutoff) this.markers.shift();
    this.now = t;
    this.dirty = true;
  }

  // Replace the series with the server's history: [{t, values: {id: v}}],
  // oldest first, times already on this page's clock.
  seed(points) {
    this.series = new Map();
    for (const { t, values } of points) {
      for (const [id, v] of Object.entries(values)) {
        if (!this.series.has(id)) this.series.set(id, []);
        this.series.get(id).push({ t, v });
      }
    }
    if (points.length) this.now = Math.max(this.now || 0, points[points.length - 1].t);
    this.dirty = true;
  }

  mark(t, text, colour = '#94a3b8') {
    this.markers.push({ t, text, colour });
    if (this.markers.length > 40) this.markers.shift();
    this.dirty = true;
  }

  setBackends(ids) {
    this.names = ids;
    this.renderLegend();
  }

  renderLegend() {
    const latest = (id) => {
      const p = this.series.get(id);
      return p && p.length ? p[p.length - 1].v : 0;
    };
    const items = this.names.map((id) => {
      const li = document.createElement('li');
      const sw = document.createElement('span');
      sw.className = 'swatch';
      sw.style.background = colourOf(id);
      li.append(sw, `${id} `);
      const v = document.createElement('b');
      v.textContent = `${rate(latest(id))}/s`;
      li.append(v);
      return li;
    });
    this.legend.replaceChildren(...items);
  }

  draw() {
    if (!this.dirty) return;
    this.dirty = false;
    const { ctx, width, height } = fitCanvas(this.canvas);
    const pad = { l: 44, r: 12, t: 12, b: 24 };
    const w = width - pad.l - pad.r;
    const hgt = height - pad.t - pad.b;
    ctx.clearRect(0, 0, width, height);
    const now = this.now || Date.now() / 1000;
    let first = now;
    for (const points of this.series.values()) if (points.length) first = Math.min(first, points[0].t);
    // The window grows from one minute to five as history accumulates.
    const span = Math.min(SPAN, Math.max(60, Math.ceil((now - first) / 30) * 30));
    this.showSpan(span);
    const x = (t) => pad.l + ((t - (now - span)) / span) * w;
    const smooth = new Map();
    for (const [id, points] of this.series) {
      smooth.set(id, points.map((p, i) => {
        const from = Math.max(0, i - 2);
        let sum = 0;
        for (let k = from; k <= i; k++) sum += points[k].v;
        return { t: p.t, v: sum / (i - from + 1) };
      }));
    }
    let max = 1;
    for (const points of smooth.values()) for (const p of points) max = Math.max(max, p.v);
    max = niceMax(max);
    const y = (v) => pad.t + hgt - (v / max) * hgt;

    ctx.font = '11px system-ui, sans-serif';
    ctx.fillStyle = '#94a3b8';
    ctx.strokeStyle = 'rgba(148,163,184,0.14)';
    ctx.lineWidth = 1;
    ctx.textAlign = 'right';
    ctx.textBaseline = 'middle';
    for (let i = 0; i <= 4; i++) {
      const v = (max / 4) * i;
      const yy = Math.round(y(v)) + 0.5;
      ctx.beginPath(); ctx.moveTo(pad.l, yy); ctx.lineTo(pad.l + w, yy); ctx.stroke();
      ctx.fillText(rate(v), pad.l - 6, yy);
    }
    ctx.textAlign = 'center';
    ctx.textBaseline = 'top';
    const step = span <= 90 ? 15 : 60;
    for (let s = 0; s <= span; s += step) {
      const xx = x(now - s);
      ctx.fillText(s === 0 ? 'now' : s < 60 || s % 60 ? `-${s}s` : `-${s / 60}m`, xx, pad.t + hgt + 6);
    }

    for (const m of this.markers) {
      const xx = Math.round(x(m.t)) + 0.5;
      if (xx < pad.l) continue;
      ctx.strokeStyle = m.colour;
      ctx.setLineDash([3, 3]);
      ctx.beginPath(); ctx.moveTo(xx, pad.t); ctx.lineTo(xx, pad.t + hgt); ctx.stroke();
      ctx.setLineDash([]);
    }
    // Marker labels, newest first, skipping ones that would overlap.
    let lastX = Infinity;
    ctx.textAlign = 'right';
    ctx.textBaseline = 'top';
    for (let i = this.markers.length - 1; i >= 0; i--) {
      const m = this.markers[i];
      const xx = x(m.t);
      if (xx < pad.l + 40 || lastX - xx < 110) continue;
      ctx.fillStyle = m.colour;
      ctx.fillText(m.text.length > 24 ? `${m.text.slice(0, 23)}…` : m.text, xx - 4, pad.t + 2);
      lastX = xx;
    }

    ctx.save();
    ctx.beginPath(); ctx.rect(pad.l, pad.t - 2, w, hgt + 4); ctx.clip();
    for (const [id, points] of smooth) {
      if (points.length < 2) continue;
      const colour = colourOf(id);
      ctx.beginPath();
      points.forEach((p, i) => (i ? ctx.lineTo(x(p.t), y(p.v)) : ctx.moveTo(x(p.t), y(p.v))));
      ctx.strokeStyle = colour;
      ctx.lineWidth = 2;
      ctx.lineJoin = 'round';
      ctx.stroke();
      ctx.lineTo(x(points[points.length - 1].t), y(0));
      ctx.lineTo(x(points[0].t), y(0));
      ctx.closePath();
      ctx.globalAlpha = 0.08;
      ctx.fillStyle = colour;
      ctx.fill();
      ctx.globalAlpha = 1;
    }
    ctx.restore();
  }
}

// Say how much the chart shows ("last minute", "last 2.5 minutes", ...).
RateChart.prototype.showSpan = function showSpan(span) {
  if (this.shownSpan === span) return;
  this.shownSpan = span;
  const minutes = span / 60;
  const text = minutes === 1 ? 'last minute' : `last ${minutes} minutes`;
  if (this.label) this.label.textContent = `${text}, per backend`;
  this.canvas.setAttribute('aria-label', `Connections per second per backend over the ${text}`);
};

function niceMax(v) {
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}
