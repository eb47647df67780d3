// The head of one service's view: its name, where it listens (each listen
// endpoint with the address it is bound to, removable, and a field to add
// one: PATCH /api/v1/services/NAME with the new listen list), its SNI
// names; and the confirmation dialog that deletes a service, gracefully
// (its connections finish) or by force (they are closed now).

import { call, get } from './api.js';
import { count, h, showResult } from './util.js';

const $ = (id) => document.getElementById(id);

export class ServiceHead {
  constructor(app) {
    this.app = app;
    this.service = null;   // the API's view of the service shown
    this.form = $('listen-form');
    this.out = $('listen-result');
    this.form.addEventListener('submit', (e) => {
      e.preventDefault();
      const endpoint = this.form.elements.endpoint.value.trim();
      if (!this.service) return;
      this.change([...this.service.listen, endpoint], `now also listening on ${endpoint}`)
        .then((ok) => { if (ok) this.form.elements.endpoint.value = ''; });
    });
    $('service-delete').addEventListener('click', () => { if (this.service) app.remover.ask(this.service); });
  }

  async load(name) {
    try {
      this.show(await get(`/services/${encodeURIComponent(name)}`));
    } catch (e) {
      if (e.status === 404) this.gone(name);
      else showResult(this.out, false, e.message);
    }
  }

  gone(name) {
    this.service = null;
    $('service-listen').replaceChildren();
    $('service-sni').textContent = '';
    showResult(this.out, false, `there is no service ${name} (any more)`);
  }

  show(s) {
    this.service = s;
    $('service-name').textContent = s.name;
    const same = s.listen.length === s.listening.length;
    $('service-listen').replaceChildren(...s.listen.map((d, i) => h('li', { dataset: { endpoint: d } },
      h('code', { class: 'ep', text: d }),
      same ? h('span', { class: 'bound', text: s.listening[i] }) : null,
      h('button', { type: 'button', class: 'small danger-soft', text: 'Remove',
        'aria-label': `Stop listening on ${d}`,
        onclick: () => this.change(s.listen.filter((x) => x !== d), `no longer listening on ${d}`) }))));
    const parts = [];
    if (!same) parts.push(s.listening.length ? `bound: ${s.listening.join(', ')}` : 'not bound');
    if (s.sni.length) parts.push(`SNI ${s.sni.join(', ')}${s.sni_default ? ' (default of its endpoints)' : ''}`);
    if (s.accept_proxy.length) parts.push(`PROXY header from ${s.accept_proxy.join(', ')}`);
    $('service-sni').textContent = parts.join(' · ');
  }

  async change(listen, done) {
    const name = this.service.name;
    try {
      this.show(await call('PATCH', `/services/${encodeURIComponent(name)}`, { listen }));
      showResult(this.out, true, done);
      return true;
    } catch (e) {
      showResult(this.out, false, e.message);
      return false;
    }
  }
}

export class Remover {
  constructor(app) {
    this.app = app;
    this.dialog = $('delete-dialog');
    this.form = $('delete-form');
    this.out = $('delete-result');
    this.target = null;
    this.form.addEventListener('submit', (e) => {
      e.preventDefault();
      // Enter submits with the first button, Cancel: deleting takes a click on Delete.
      if (!e.submitter || e.submitter.value !== 'delete') { this.dialog.close(); return; }
      this.remove();
    });
  }

  // Ask first, saying what deleting stops; the open connections are read
  // afresh, since that is what graceful or force is about.
  ask(service) {
    const name = service.name;
    this.target = name;
    $('delete-name').textContent = name;
    this.why(service);
    this.form.elements.how.value = 'graceful';
    this.out.textContent = '';
    delete this.out.dataset.kind;
    this.dialog.showModal();
    get(`/services/${encodeURIComponent(name)}`).then((s) => { if (this.target === name) this.why(s); }, () => {});
  }

  why(service) {
    const open = service.active_connections || 0;
    $('delete-why').textContent = `Its listeners (${service.listen.join(', ') || 'none'}) stop at once. `
      + `It has ${count(open)} open connection${open === 1 ? '' : 's'} now.`;
  }

  async remove() {
    const name = this.target;
    const force = this.form.elements.how.value === 'force';
    const button = this.form.querySelector('button[value=delete]');
    button.disabled = true;
    try {
      const r = await call('DELETE', `/services/${encodeURIComponent(name)}${force ? '?force=true' : ''}`);
      this.dialog.close();
      const text = r.state === 'removing'
        ? `${name} deleted: waiting for ${r.connections} connection${r.connections === 1 ? '' : 's'} to finish`
        : `${name} deleted${r.closed ? `, ${r.closed} connection${r.closed === 1 ? '' : 's'} closed` : ''}`;
      this.app.deleted(name, text);
    } catch (e) {
      showResult(this.out, false, e.message);
    } finally {
      button.disabled = false;
    }
  }
}
