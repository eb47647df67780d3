// The event log: backend state changes (health checks, ejections,
// operators), config changes and the feed's own connection.

import { clock, colourOf, h } from './util.js';

const MAX = 200;
const LABELS = { up: 'up', down: 'down', backend: 'backend', config: 'config', feed: 'feed', error: 'error', demo: 'demo' };

export class EventLog {
  constructor(root) { this.root = root; }

  add(kind, text, backend) {
    const li = h('li', { class: `ev ev-${kind}` },
      h('time', { text: clock() }),
      h('span', { class: 'badge', text: LABELS[kind] || kind }),
      h('span', { class: 'text', style: backend ? `--c:${colourOf(backend)}` : null, text }));
    this.root.prepend(li);
    while (this.root.children.length > MAX) this.root.lastChild.remove();
  }
}
