// The live figures of a service the event feed does not carry.  An older
// lbproxy's feed sent route and stats events for one service only (the one
// its snapshot names; today's sends them for every service); for any other, the view reads the service's backends once a
// second and turns the change of each backend's counters into the same
// shapes: a route batch of counts (no per-client sample) and a stats
// snapshot.  It stops for good once the feed brings that service's routes.

import { get } from './api.js';

export class ServicePoller {
  constructor(onViews, onRoute, onStats) {
    this.onViews = onViews;
    this.onRoute = onRoute;
    this.onStats = onStats;
    this.last = null;        // {t, backends: {id: stats}}
    this.busy = false;
  }

  reset() { this.last = null; }

  async tick(strategy) {
    if (this.busy) return;
    this.busy = true;
    try {
      const body = await get('/backends');
      const t = Date.now() / 1000;
      const now = Object.fromEntries(body.backends.map((v) => [v.id, v.stats || {}]));
      this.onViews(body.backends);
      const last = this.last;
      this.last = { t, backends: now };
      const seconds = last ? Math.max(0.001, t - last.t) : 1;
      const counts = {};
      const backends = {};
      const totals = { active: 0, accepted: 0, bytes_up_per_second: 0, bytes_down_per_second: 0 };
      for (const [id, s] of Object.entries(now)) {
        const before = last && last.backends[id];
        const delta = (key) => (before ? Math.max(0, (s[key] || 0) - (before[key] || 0)) : 0);
        if (delta('total')) counts[id] = delta('total');
        backends[id] = {
          ...s,
          bytes_up_per_second: delta('bytes_up') / seconds,
          bytes_down_per_second: delta('bytes_down') / seconds,
        };
        totals.active += s.active || 0;
        totals.accepted += s.total || 0;
        totals.bytes_up_per_second += backends[id].bytes_up_per_second;
        totals.bytes_down_per_second += backends[id].bytes_down_per_second;
      }
      this.onStats({ time: t, totals, backends, polled: true });
      const total = Object.values(counts).reduce((a, b) => a + b, 0);
      if (total) this.onRoute({ counts, total, sample: [], dropped: 0, strategy, polled: true, time: t });
    } catch (e) {
      /* the feed status says whether lbproxy is reachable */
    } finally {
      this.busy = false;
    }
  }
}
