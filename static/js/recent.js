// The latest routing decisions under the flow view: the feed's sample of
// clients and the backend each went to, or, for a service the feed does
// not carry (poll.js), how many new connections each backend took.

import { clock, colourOf, count, h } from './util.js';

export function showRecent(list, batch) {
  const to = (id) => h('span', { class: 'to', style: `--c:${colourOf(id)}`, text: id, dataset: { backend: id } });
  const arrow = () => h('span', { class: 'arrow', 'aria-hidden': 'true', text: '→' });
  const via = () => h('span', { class: 'via', text: batch.strategy || '' });
  if (batch.polled) {
    const at = clock(new Date(batch.time * 1000));
    list.replaceChildren(...Object.entries(batch.counts).map(([id, n]) => h('li', { class: 'polled' },
      h('time', { text: at }), h('span', { class: 'client', text: `${count(n)} new` }), arrow(), to(id), via())));
    return;
  }
  const items = (batch.sample || []).slice(-6).reverse().map((s) => h('li', {},
    h('time', { text: clock(new Date(s.time * 1000)) }), h('span', { class: 'client', text: s.client }),
    arrow(), to(s.backend), via()));
  const dropped = batch.dropped ? h('li', { class: 'dropped', text: `+${count(batch.dropped)} more in this batch` }) : null;
  list.replaceChildren(...items, ...(dropped ? [dropped] : []));
}
