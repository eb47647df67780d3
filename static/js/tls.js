// The expiry of the certificates TLS listeners serve, as chips in the top
// bar: a warning under 14 days, an alarm once expired.  Read from
// GET /api/v1/services/{name} (tls_certificates: never a key).
import { get } from './api.js';
import { h } from './util.js';

const WARN_DAYS = 14;

export function expiryText(seconds) {
  const days = Math.floor(seconds / 86400);
  if (seconds <= 0) return 'expired';
  return days >= 1 ? `expires in ${days} d` : `expires in ${Math.max(1, Math.floor(seconds / 3600))} h`;
}

export async function showCertificateExpiry(bar, every = 60000) {
  const box = h('span', { class: 'tls-chips' });
  bar.append(box);
  const refresh = async () => {
    let listed;
    try { listed = await get('/services'); } catch { return; }
    const chips = [];
    for (const s of listed.services || []) {
      if (!s.tls) continue;
      let view;
      try { view = await get(`/services/${encodeURIComponent(s.name)}`); } catch { continue; }
      for (const cert of view.tls_certificates || []) {
        const left = cert.expires_in;
        const state = left <= 0 ? 'expired' : left < WARN_DAYS * 86400 ? 'warn' : 'ok';
        chips.push(h('span', {
          class: `chip tls-chip tls-${state}`,
          title: `${cert.subject} · issuer ${cert.issuer} · sha256 ${cert.fingerprint_sha256}`,
          text: `TLS ${s.name} ${cert.names[0] || cert.subject}: ${expiryText(left)}`,
        }));
      }
    }
    box.replaceChildren(...chips);
  };
  await refresh();
  setInterval(refresh, every);
}
