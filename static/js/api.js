// The admin API: JSON in and out, the bearer token (kept for this tab only,
// in sessionStorage), and a prompt for it when the server answers 401.
// The pool routes (/backends, /strategy, /settings) go to the service in
// view (setService): /api/v1/services/NAME/..., so the panels that call
// them need not know which service the page shows.

const TOKEN_KEY = 'lbproxy.token';
export const API = '/api/v1';

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function token() {
  try { return sessionStorage.getItem(TOKEN_KEY) || ''; } catch { return ''; }
}

export function setToken(value) {
  try {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch { /* storage disabled: the token lives for this page only */ }
  memoryToken = value;
}

let memoryToken = '';
let service = null;

// The service the pool routes mean from now on (null: the top level's).
export function setService(name) { service = name || null; }

const POOL = /^\/(backends|strategy|settings)(\/|\?|$)/;

// A path of the API as it is sent: pool routes under the service in view.
export function servicePath(path) {
  return service && POOL.test(path) ? `/services/${encodeURIComponent(service)}${path}` : path;
}

let asking = null;

function currentToken() { return token() || memoryToken; }

export function authHeaders(extra = {}) {
  const t = currentToken();
  return t ? { ...extra, Authorization: `Bearer ${t}` } : extra;
}

// Ask the user for the token once, however many requests got a 401.
export function askToken(reason) {
  if (asking) return asking;
  const dialog = document.getElementById('token-dialog');
  const input = document.getElementById('token-input');
  const why = document.getElementById('token-why');
  why.textContent = reason || 'This lbproxy requires an admin token. It is kept for this tab only.';
  input.value = '';
  asking = new Promise((resolve) => {
    dialog.addEventListener('close', () => {
      const value = input.value.trim();
      if (value) setToken(value);
      asking = null;
      resolve(Boolean(value));
    }, { once: true });
  });
  dialog.showModal();
  input.focus();
  return asking;
}

// One API call.  Resolves with the JSON body; rejects with an ApiError that
// carries the server's own message.
export async function call(method, path, body) {
  for (let attempt = 0; attempt < 3; attempt++) {
    // X-LBProxy-Client: the config history says the change came from the UI.
    const headers = authHeaders({ Accept: 'application/json', 'X-LBProxy-Client': 'ui' });
    const init = { method, headers, cache: 'no-store' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(API + servicePath(path), init);
    } catch (e) {
      throw new ApiError(0, `cannot reach lbproxy (${e.message})`);
    }
    let data = null;
    const text = await response.text();
    if (text) {
      try { data = JSON.parse(text); } catch { data = { error: text.slice(0, 300) }; }
    }
    if (response.status === 401) {
      const message = (data && data.error) || 'an admin token is required';
      if (currentToken()) setToken('');
      if (await askToken(message)) continue;
      throw new ApiError(401, message);
    }
    if (!response.ok) {
      throw new ApiError(response.status, (data && data.error) || `${response.status} ${response.statusText}`);
    }
    return data;
  }
  throw new ApiError(401, 'the admin token was refused');
}

export const get = (path) => call('GET', path);
