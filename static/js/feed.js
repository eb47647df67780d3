// The live feed: server-sent events read through fetch (so the bearer token
// can go in a header), with automatic reconnects and Last-Event-ID resume.

import { API, authHeaders, askToken, setToken, token } from './api.js';

const STALL_MS = 25000;   // the server sends something at least every 15 s

export class Feed {
  constructor({ onEvent, onStatus }) {
    this.onEvent = onEvent;
    this.onStatus = onStatus;
    this.lastId = null;
    this.backoff = 500;
    this.stopped = false;
    this.lastData = null;   // when the feed last brought anything (ms), for "not live since"
  }

  start() { this.connect(); }

  status(state, text) { this.onStatus(state, text); }

  async connect() {
    if (this.stopped) return;
    const controller = new AbortController();
    let stall = null;
    const kick = () => {
      clearTimeout(stall);
      stall = setTimeout(() => controller.abort(), STALL_MS);
    };
    this.status('connecting', this.lastId === null ? 'Connecting…' : 'Reconnecting…');
    try {
      const headers = authHeaders({ Accept: 'text/event-stream' });
      if (this.lastId !== null) headers['Last-Event-ID'] = String(this.lastId);
      kick();
      const response = await fetch(`${API}/events`, { headers, cache: 'no-store', signal: controller.signal });
      if (response.status === 401) {
        clearTimeout(stall);
        let message = 'an admin token is required';
        try { message = (await response.json()).error || message; } catch { /* not JSON */ }
        if (token()) setToken('');
        this.status('auth', 'Admin token needed');
        await askToken(message);
        return this.connect();
      }
      if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
      this.backoff = 500;
      this.lastData = Date.now();
      this.status('live', 'Live');
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        kick();
        this.lastData = Date.now();
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          this.dispatch(block);
        }
      }
      throw new Error('the feed closed');
    } catch (e) {
      clearTimeout(stall);
      if (this.stopped) return;
      const wait = this.backoff;
      this.backoff = Math.min(this.backoff * 2, 8000);
      this.retryAt = Date.now() + wait;
      this.countdown(e);
      setTimeout(() => this.connect(), wait);
    }
  }

  countdown(error) {
    const tick = () => {
      const left = Math.ceil((this.retryAt - Date.now()) / 1000);
      if (left <= 0 || this.stopped) return;
      this.status('down', `Disconnected, retrying in ${left}s`);
      setTimeout(tick, 250);
    };
    this.status('down', `Disconnected (${error.message || error}), retrying…`);
    tick();
  }

  dispatch(block) {
    let type = 'message';
    let id = null;
    const data = [];
    for (const line of block.split('\n')) {
      if (!line || line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'event') type = value;
      else if (field === 'data') data.push(value);
      else if (field === 'id') id = value;
    }
    if (id !== null && /^\d+$/.test(id)) this.lastId = Number(id);
    if (!data.length) return;
    let payload;
    try { payload = JSON.parse(data.join('\n')); } catch { return; }
    this.onEvent(type, payload);
  }
}
