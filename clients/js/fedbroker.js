// @fedbroker/client: send to and listen on a fedbroker broker, from a browser or Node.js >= 20.
// Uses only `fetch` and `WebSocket`; no dependencies. Types: fedbroker.d.ts. Usage: README.md.

/**
 * What `send` accepts as a message body. `null`/`undefined` send an empty message.
 * A string is sent as UTF-8.
 * @typedef {string | ArrayBuffer | ArrayBufferView | Blob | null | undefined} MessageData
 */

/**
 * @typedef {object} SendOptions
 * @property {string} [token] Bearer token, sent as `Authorization: Bearer <token>`.
 * @property {AbortSignal} [signal] Aborts the request (the promise then rejects with the abort reason).
 * @property {typeof fetch} [fetch] A `fetch` implementation (default: the global one).
 */

/**
 * Passed to `onClose` each time a connection, or an attempt to connect, ends.
 * @typedef {object} CloseInfo
 * @property {number} code WebSocket close code (`1006`: the connection failed or was lost without a Close frame).
 * @property {string} reason Close reason sent by the broker (`replaced`, `token expired`, `shutting down`, …).
 * @property {boolean} wasClean Whether the close handshake completed.
 * @property {boolean} opened Whether this connection had opened (`false`: the attempt failed before the upgrade).
 * @property {boolean} refused The attempt failed before opening although the broker answers HTTP
 *   (`GET /healthz` is 200): the broker refused the upgrade (401, 403, 400 invalid id, …).
 * @property {boolean} willReconnect Whether the client will connect again.
 * @property {number} [delay] Milliseconds until that next attempt, when `willReconnect`.
 */

/**
 * @typedef {object} ListenOptions
 * @property {string | (() => string | Promise<string>)} [token] Token, sent as `?token=` (browsers cannot set
 *   headers on a WebSocket). A function is called before every connection attempt, so it can hand out a fresh JWT.
 * @property {(data: ArrayBuffer) => void} [onMessage] Called with each message's bytes.
 * @property {() => void} [onOpen] Called each time the listener is connected (also after a reconnect).
 * @property {(info: CloseInfo) => void} [onClose] Called each time a connection or connection attempt ends.
 * @property {AbortSignal} [signal] Aborting it is the same as calling `close()`.
 * @property {number} [minDelay=500] Back-off base in milliseconds.
 * @property {number} [maxDelay=30000] Back-off cap in milliseconds.
 * @property {number} [stableAfter=5000] A connection that stayed open this long (ms) resets the back-off.
 * @property {number} [probeTimeout=5000] Time limit (ms) of the `GET /healthz` probe after a failed attempt.
 * @property {number} [maxRefusals=2] Stop after this many consecutive refused attempts (see `CloseInfo.refused`).
 * @property {any} [WebSocket] A WebSocket class (default: the global one; on Node 20 pass `ws`'s or run with
 *   `--experimental-websocket`).
 * @property {typeof fetch} [fetch] A `fetch` implementation for the probe (default: the global one).
 */

/**
 * @typedef {object} ListenHandle
 * @property {() => void} close Closes the connection (code 1000) and stops reconnecting. Idempotent.
 * @property {Promise<CloseInfo>} closed Resolves with the last `CloseInfo` once the listener has stopped for good.
 * @property {boolean} connected Whether a connection is open now.
 * @property {string} url The WebSocket URL, without the token.
 */

/** Close codes after which `listen` does not reconnect. */
export const NO_RECONNECT_CODES = Object.freeze([
  1003, // the broker closed a listener that sent data: a client bug, it would happen again
  1008, // policy violation
  4000, // replaced: another connection now listens on this id; reconnecting would steal it back
  4001, // token expired: get a new token, then call listen() again
]);

/** An error answer from the broker. */
export class FedbrokerError extends Error {
  /**
   * @param {string} message The broker's one-sentence error text (or the status line when it sent none).
   * @param {number} status HTTP status.
   * @param {number | undefined} retryAfter Seconds from `Retry-After` (sent with 503), if any.
   */
  constructor(message, status, retryAfter) {
    super(message);
    this.name = 'FedbrokerError';
    /** @type {number} */
    this.status = status;
    /** @type {number | undefined} */
    this.retryAfter = retryAfter;
  }
}

/**
 * The URL of `id` under a broker URL (`http://host:port`, `https://host/mq`, `ws://…`, or relative to the page).
 * @param {string | URL} brokerUrl
 * @param {string | number} id
 * @param {'http' | 'ws'} kind
 */
function idUrl(brokerUrl, id, kind) {
  const base = typeof location === 'object' && location ? location.href : undefined;
  const u = new URL(String(brokerUrl), base);
  u.hash = '';
  u.pathname = u.pathname.replace(/\/+$/, '') + '/' + encodeURIComponent(String(id));
  const secure = u.protocol === 'https:' || u.protocol === 'wss:';
  if (!['http:', 'https:', 'ws:', 'wss:'].includes(u.protocol)) {
    throw new TypeError(`broker URL must be http(s):// or ws(s)://, not ${u.protocol}`);
  }
  u.protocol = kind === 'ws' ? (secure ? 'wss:' : 'ws:') : secure ? 'https:' : 'http:';
  return u;
}

/** @param {string | null} value @returns {number | undefined} */
function parseRetryAfter(value) {
  if (value == null) return undefined;
  const v = value.trim();
  if (/^\d+$/.test(v)) return Number(v);
  const at = Date.parse(v);
  return Number.isNaN(at) ? undefined : Math.max(0, Math.ceil((at - Date.now()) / 1000));
}

/**
 * Sends `data` to the node listening on `id` at `brokerUrl` (`POST /{id}`).
 * Resolves when the broker answers `204` (the message is in the listener's queue). Rejects with a
 * `FedbrokerError` (`message` = the broker's error text, `status`, `retryAfter` on 503) on any other
 * answer, and with `fetch`'s own error when no answer could be read (network failure, abort, or in a
 * browser a response without CORS headers: the page's origin is not allowed).
 * @param {string | URL} brokerUrl e.g. `http://127.0.0.1:8080` or `https://broker.example/mq`
 * @param {string | number} id 1 ..= 2147483647
 * @param {MessageData} data
 * @param {SendOptions} [options]
 * @returns {Promise<void>}
 */
export async function send(brokerUrl, id, data, options = {}) {
  const { token, signal } = options;
  const fetchImpl = options.fetch ?? globalThis.fetch;
  /** @type {Record<string, string>} */
  const headers = {};
  if (token) headers.authorization = `Bearer ${token}`;
  const res = await fetchImpl(idUrl(brokerUrl, id, 'http'), {
    method: 'POST',
    body: /** @type {BodyInit} */ (data ?? new Uint8Array(0)),
    headers,
    signal,
    credentials: 'omit', // tokens travel in Authorization, never in cookies
    cache: 'no-store',
  });
  if (res.status === 204) return;
  let text = '';
  try {
    text = (await res.text()).trim();
  } catch {
    // the body could not be read: fall back to the status line
  }
  throw new FedbrokerError(
    text || `${res.status} ${res.statusText}`.trim(),
    res.status,
    parseRetryAfter(res.headers.get('retry-after')),
  );
}

const encoder = new TextEncoder();

/**
 * Calls a user callback; what it throws is reported like an error in an event handler, and does not
 * break the listener's own bookkeeping.
 * @param {((...a: any[]) => void) | undefined} fn
 * @param {...any} args
 */
function callback(fn, ...args) {
  if (!fn) return;
  try {
    fn(...args);
  } catch (e) {
    if (typeof globalThis.reportError === 'function') globalThis.reportError(e);
    else
      setTimeout(() => {
        throw e;
      });
  }
}

/** @param {unknown} d @returns {ArrayBuffer} */
function toArrayBuffer(d) {
  if (d instanceof ArrayBuffer) return d;
  if (typeof d === 'string') return encoder.encode(d).buffer; // the broker only sends binary messages
  if (ArrayBuffer.isView(d)) return new Uint8Array(d.buffer, d.byteOffset, d.byteLength).slice().buffer;
  if (Array.isArray(d)) {
    // `ws` with binaryType 'fragments': join them
    const out = new Uint8Array(d.reduce((n, b) => n + b.byteLength, 0));
    let at = 0;
    for (const b of d) {
      out.set(new Uint8Array(b.buffer ?? b, b.byteOffset ?? 0, b.byteLength), at);
      at += b.byteLength;
    }
    return out.buffer;
  }
  throw new TypeError('unexpected WebSocket message type; the WebSocket must honour binaryType "arraybuffer"');
}

/**
 * Listens on `id` at `brokerUrl` (a WebSocket on `GET /{id}`), reconnecting after network loss.
 *
 * Reconnection: after a connection closes (a lost connection: 1006; the broker shutting down or
 * dropping a silent client: 1001), the client waits a random time between 0 and
 * min(maxDelay, minDelay * 2^n) ms (full jitter, n = attempts so far) and connects again. It does not
 * reconnect after close codes 1003, 1008, 4000 (replaced) and 4001 (token expired), nor after
 * `close()`, nor once the broker has refused the upgrade (401/403/…) `maxRefusals` times in a row.
 *
 * How a refusal is told from network loss: a WebSocket gives a page no HTTP status; a refused
 * upgrade looks like any failed connection (close code 1006 before open). So after an attempt fails
 * before opening, the client fetches `GET {brokerUrl}/healthz`. If the broker answers 200, it is
 * reachable and refused this upgrade: `CloseInfo.refused` is true. Which refusal (401, 403 or 400) the
 * client cannot know. A healthz failure (no answer, a proxy's 502, or in a browser a page origin the
 * broker does not allow) counts as network loss, retried with back-off.
 *
 * @param {string | URL} brokerUrl e.g. `http://127.0.0.1:8080` (or `ws://…`)
 * @param {string | number} id 1 ..= 2147483647
 * @param {ListenOptions} [options]
 * @returns {ListenHandle}
 */
export function listen(brokerUrl, id, options = {}) {
  const {
    token,
    onMessage,
    onOpen,
    onClose,
    signal,
    minDelay = 500,
    maxDelay = 30000,
    stableAfter = 5000,
    probeTimeout = 5000,
    maxRefusals = 2,
  } = options;
  const WS = options.WebSocket ?? globalThis.WebSocket;
  const fetchImpl = options.fetch ?? globalThis.fetch;
  if (typeof WS !== 'function') {
    throw new TypeError(
      'no WebSocket class: on Node.js 20 run with --experimental-websocket, or pass {WebSocket} from the "ws" package',
    );
  }
  const wsUrl = idUrl(brokerUrl, id, 'ws');
  const healthz = idUrl(brokerUrl, 'healthz', 'http');
  healthz.search = '';

  /** @type {any} */
  let ws = null;
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  let timer;
  let stopped = false;
  let finished = false;
  let attempt = 0;
  let refusals = 0;
  let openedAt = 0;
  let currentOpened = false; // whether the current socket opened
  /** @type {(info: CloseInfo) => void} */
  let resolveClosed = () => {};
  /** @type {Promise<CloseInfo>} */
  const closed = new Promise((resolve) => {
    resolveClosed = resolve;
  });

  /** @param {CloseInfo} info */
  function report(info) {
    if (info.willReconnect === false) {
      if (finished) return;
      finished = true;
      stopped = true;
      signal?.removeEventListener('abort', close);
    }
    callback(onClose, info);
    if (!info.willReconnect) resolveClosed(info);
  }

  /** Whether the broker answers plain HTTP (so a failed upgrade was refused, not lost). */
  async function reachable() {
    if (typeof fetchImpl !== 'function') return false;
    try {
      const res = await fetchImpl(healthz, {
        cache: 'no-store',
        credentials: 'omit',
        signal: AbortSignal.timeout(probeTimeout),
      });
      await res.arrayBuffer().catch(() => {});
      return res.status === 200;
    } catch {
      return false;
    }
  }

  async function connect() {
    timer = undefined;
    if (stopped) return;
    const url = new URL(wsUrl);
    try {
      const t = typeof token === 'function' ? await token() : token;
      if (t) url.searchParams.set('token', t);
    } catch (e) {
      if (stopped) return;
      // The token source failed: retry it like a failed connection.
      schedule({ code: 1006, reason: `token: ${e instanceof Error ? e.message : e}`, wasClean: false, opened: false, refused: false, willReconnect: true });
      return;
    }
    if (stopped) return;
    let sock;
    try {
      sock = new WS(url.href);
    } catch (e) {
      // A URL the WebSocket class refuses: it would be refused again.
      report({ code: 1006, reason: e instanceof Error ? e.message : String(e), wasClean: false, opened: false, refused: false, willReconnect: false });
      return;
    }
    ws = sock;
    sock.binaryType = 'arraybuffer';
    let opened = false;
    currentOpened = false;
    sock.onopen = () => {
      opened = true;
      currentOpened = true;
      openedAt = Date.now();
      refusals = 0;
      if (stopped) {
        sock.close(1000);
        return;
      }
      callback(onOpen);
    };
    sock.onmessage = (/** @type {{data: unknown}} */ ev) => {
      if (stopped) return; // close() was called: deliver nothing more
      callback(onMessage, toArrayBuffer(ev.data));
    };
    let ended = false;
    /** @param {number} code @param {string} reason @param {boolean} wasClean */
    const end = (code, reason, wasClean) => {
      if (ended) return;
      ended = true;
      if (ws === sock) ws = null;
      closedSocket(opened, code, reason, wasClean);
    };
    sock.onclose = (/** @type {{code: number, reason?: string, wasClean?: boolean}} */ ev) =>
      end(ev.code, ev.reason ?? '', !!ev.wasClean);
    // Browsers follow an error with a close event. Node 20's WebSocket (undici) fires only an error
    // when the connection or the upgrade fails, so an error is the end of the attempt as well; once
    // open, wait a little for the close event and its code.
    sock.onerror = () => {
      if (!opened) end(1006, '', false);
      else /** @type {any} */ (setTimeout(() => end(1006, '', false), 1000)).unref?.();
    };
  }

  /**
   * @param {boolean} opened
   * @param {number} code
   * @param {string} reason
   * @param {boolean} wasClean
   */
  async function closedSocket(opened, code, reason, wasClean) {
    /** @type {CloseInfo} */
    const info = { code, reason, wasClean, opened, refused: false, willReconnect: false };
    if (stopped) return report(info);
    if (opened) {
      if (NO_RECONNECT_CODES.includes(code)) return report(info);
      if (Date.now() - openedAt >= stableAfter) attempt = 0;
    } else {
      info.refused = await reachable();
      if (stopped) return report(info);
      refusals = info.refused ? refusals + 1 : 0;
      if (refusals >= maxRefusals) return report(info);
    }
    info.willReconnect = true;
    schedule(info);
  }

  /** @param {CloseInfo} info */
  function schedule(info) {
    const delay = Math.round(Math.random() * Math.min(maxDelay, minDelay * 2 ** attempt));
    attempt = Math.min(attempt + 1, 64);
    info.delay = delay;
    report(info);
    if (!stopped) timer = setTimeout(connect, delay);
  }

  function close() {
    if (stopped) return;
    stopped = true;
    if (timer !== undefined) clearTimeout(timer);
    timer = undefined;
    if (ws) {
      ws.close(1000); // the close event reports the end...
      // ...or, should none come (a connection that never completes its close handshake), this does.
      const t = setTimeout(
        () => report({ code: 1006, reason: '', wasClean: false, opened: currentOpened, refused: false, willReconnect: false }),
        3000,
      );
      /** @type {any} */ (t).unref?.();
      closed.then(() => clearTimeout(t));
    } else {
      // Between attempts, or while a probe or the token source runs: nothing else will report.
      queueMicrotask(() =>
        report({ code: 1000, reason: '', wasClean: true, opened: false, refused: false, willReconnect: false }),
      );
    }
  }

  if (signal?.aborted) {
    stopped = true;
    queueMicrotask(() =>
      report({ code: 1000, reason: '', wasClean: true, opened: false, refused: false, willReconnect: false }),
    );
  } else {
    signal?.addEventListener('abort', close);
    connect();
  }

  return {
    close,
    closed,
    get connected() {
      return ws != null && ws.readyState === 1;
    },
    url: wsUrl.href,
  };
}
