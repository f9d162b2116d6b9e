// @fedbroker/client: send to and listen on a fedbroker broker, from a browser or Node.js >= 20.
// Uses only `fetch` and `WebSocket`; no dependencies. Types: fedbroker.d.ts. Usage: README.md.
// The patterns (multi-target send, topics, the fedbroker.v1 envelope, request-reply, presence) are
// specified in docs/patterns.md; mailboxes and replay (202, seq, since, gaps) in docs/mailbox.md.

/**
 * What `send` accepts as a message body. `null`/`undefined` send an empty message.
 * A string is sent as UTF-8.
 * @typedef {string | ArrayBuffer | ArrayBufferView | Blob | null | undefined} MessageData
 */

/**
 * What `send` resolves with. `results` has one entry per target id, in request order.
 * @typedef {object} SendResult
 * @property {202 | 204 | 207} status `204`: every target accepted the message for a live listener; `202` (one
 *   mailbox id): nobody listens, the message is kept for a later listener; `207`: see `results`.
 * @property {number} [seq] One mailbox id: `Fedbroker-Seq`, the message's number on that id.
 * @property {number} [recipients] One topic id: `Fedbroker-Recipients`, the number of its listeners that got it.
 * @property {TargetResult[]} results
 */

/**
 * @typedef {object} TargetResult
 * @property {number} id
 * @property {number} status What a `POST` to that id alone would have answered (`204`, `202`, `404`, `503`, `507`).
 * @property {number} [seq] A mailbox id: the message's seq on it (when the broker said).
 * @property {string} [error] That answer's sentence, when it is not `204` or `202`.
 * @property {number} [recipients] For a topic id: how many listeners got the message (when the broker said).
 */

/**
 * What `request` resolves with: the reply of the listener, or the broker's own answer (`504` no reply in
 * time, `502` listener gone, `409` plain listener, `404` nobody listens, …) with its sentence as body.
 * @typedef {object} RequestResult
 * @property {number} status
 * @property {ArrayBuffer} body
 * @property {string} contentType `Content-Type` of the answer (`''` when none).
 * @property {number | undefined} retryAfter Seconds from `Retry-After`, if any.
 */

/**
 * @typedef {object} SendOptions
 * @property {string} [token] Bearer token, sent as `Authorization: Bearer <token>`.
 * @property {AbortSignal} [signal] Aborts the request (the promise then rejects with the abort reason).
 * @property {typeof fetch} [fetch] A `fetch` implementation (default: the global one).
 */

/**
 * @typedef {SendOptions & {timeoutMs?: number}} RequestOptions `timeoutMs` (default 5000) becomes `?reply=`:
 *   how long the broker waits for the reply (it caps it at its `--max-reply-timeout`).
 */

/**
 * Passed to `onClose` each time a connection, or an attempt to connect, ends.
 * @typedef {object} CloseInfo
 * @property {number} code WebSocket close code (`1006`: the connection failed or was lost without a Close frame).
 * @property {string} reason Close reason sent by the broker (`replaced`, `token expired`, `shutting down`, …).
 * @property {boolean} wasClean Whether the close handshake completed.
 * @property {boolean} opened Whether this connection had opened (`false`: the attempt failed before the upgrade).
 * @property {boolean} refused The attempt failed before opening although the broker answers HTTP
 *   (`GET /healthz` is 200): the broker refused the upgrade (401, 403, 400 invalid id, 409, 410, …).
 * @property {number} [status] The HTTP status of a refused upgrade, when the WebSocket class exposes it (the
 *   `ws` package does; browsers and Node's built-in WebSocket do not). `reason` is then the broker's sentence.
 * @property {boolean} willReconnect Whether the client will connect again.
 * @property {number} [delay] Milliseconds until that next attempt, when `willReconnect`.
 */

/**
 * @typedef {object} ListenOptions
 * @property {string | (() => string | Promise<string>)} [token] Token, sent as `?token=` (browsers cannot set
 *   headers on a WebSocket). A function is called before every connection attempt, so it can hand out a fresh JWT.
 * @property {boolean} [envelope=false] Negotiate the `fedbroker.v1` subprotocol: messages carry a header
 *   (`MessageMeta`), and the handle can `send`, `reply`, `watch` and `unwatch`.
 * @property {(data: ArrayBuffer, meta?: MessageMeta) => void} [onMessage] Called with each message's bytes
 *   (with `meta` when `envelope`, or on a mailbox id with a WebSocket class that exposes the `101`, like `ws`).
 * @property {number} [since] Mailbox ids: start after this seq (`0`: everything kept), `GET /{id}?since=`.
 *   Without `resume` it applies until a connection opens; reconnections then listen from "now".
 * @property {boolean} [resume=false] Mailbox ids: every reconnection asks for `since=` the last seq delivered
 *   to `onMessage`, so nothing is lost or repeated across reconnects. `since` or `resume` choose the envelope
 *   unless `envelope: false` is given, which needs a WebSocket class that exposes the upgrade's response
 *   headers (the `ws` package): a plain listener learns its seqs only from the `101`'s `Fedbroker-Seq`.
 * @property {(gap: GapInfo) => void} [onGap] Messages that should have come were dropped before they were read
 *   (the envelope's `gap` event, or a plain listener's `410`). The listener goes on after them.
 * @property {(info: ResetInfo) => void} [onReset] The mailbox was reset (a `since` above its last seq: `409`; a
 *   broker without `--store` restarted): the listener starts again from `since=0`, so seqs restart.
 * @property {(req: IncomingRequest) => any} [onRequest] Envelope only: called with each request (`POST
 *   /{id}?reply=MS`). Return a reply (`{status, body, contentType}`, or a body alone for `200`), or a promise
 *   of one, to have it sent; return `undefined` and call `req.reply(…)` yourself. A handler that throws
 *   sends `500`. Without a handler every request is answered `501`.
 * @property {(id: number, online: boolean) => void} [onPresence] Envelope only: a watched id started
 *   (`true`) or stopped (`false`) being listened on; after `watch`, once per id with its current state.
 * @property {(error: unknown) => void} [onError] Envelope only: errors that belong to no promise (a request
 *   handler that threw, an automatic reply or a re-watch the broker refused, a frame that is not an
 *   envelope). Default: reported like an error thrown in an event handler.
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
 * Passed to `onGap`: messages `from` ..= `to` of `id` are gone (dropped or expired before they were read).
 * @typedef {object} GapInfo
 * @property {number} id
 * @property {number} from
 * @property {number} to
 */

/**
 * Passed to `onReset`: the broker refused `since` as ahead of its last seq (`409`): the mailbox was reset.
 * @typedef {object} ResetInfo
 * @property {number} since The `since` that was refused.
 * @property {number | undefined} last The broker's last seq on the id (`Fedbroker-Seq` of the `409`), when the
 *   WebSocket class exposes it (`ws`); `undefined` in browsers.
 * @property {boolean} certain `true` when the client saw the `409`; `false` when it inferred it (browsers):
 *   `since` was refused `maxRefusals` times in a row but `since=0` was not (see the README).
 */

/**
 * @typedef {object} ListenHandle
 * @property {() => void} close Closes the connection (code 1000) and stops reconnecting. Idempotent.
 * @property {number | undefined} lastSeq The last seq delivered to `onMessage` (or passed by a gap, or `0` after a
 *   reset); what the next connection of a `resume` listener asks `since=` for. `undefined` while unknown.
 * @property {Promise<CloseInfo>} closed Resolves with the last `CloseInfo` once the listener has stopped for good.
 * @property {boolean} connected Whether a connection is open now.
 * @property {string} url The WebSocket URL, without the token.
 * @property {(to: string | number, data: MessageData) => Promise<Ack>} send Envelope only: sends `data` to `to`
 *   over this connection (the receiver sees `from`). Resolves on the broker's `ack`; rejects with a
 *   `FedbrokerError` on its `error`, or a `FedbrokerClosedError` when there is no connection or it ends first.
 * @property {(seq: number, status: number, body?: MessageData, contentType?: string) => Promise<Ack>} reply
 *   Envelope only: answers the request `seq` (see `onRequest`).
 * @property {(ids: Iterable<string | number> | string | number) => Promise<Ack>} watch Envelope only: follows
 *   when these ids start and stop being listened on (`onPresence`); watched again after each reconnect.
 * @property {(ids: Iterable<string | number> | string | number) => Promise<Ack | undefined>} unwatch
 * @property {Map<number, boolean>} presence A copy of the last known state of each watched id.
 */

/**
 * The header of an envelope message (`seq`, `id`, `from` when an envelope listener sent it).
 * @typedef {object} MessageMeta
 * @property {number} seq Counts the messages and requests of the listened id, from 1, without gaps (on a mailbox
 *   id: the message's number, kept across reconnects; a gap is reported to `onGap`).
 * @property {number} id The id it was sent to (the listened id; useful on topics).
 * @property {number} [from] The sender's listened id, when it was sent by an envelope listener.
 * @property {Record<string, any>} header The whole header.
 */

/**
 * A request for a reply (`POST /{id}?reply=MS`) received by an envelope listener.
 * @typedef {object} IncomingRequest
 * @property {number} seq
 * @property {number} id
 * @property {number} timeoutMs How long the sender waits (`timeout_ms`).
 * @property {ArrayBuffer} body
 * @property {Record<string, any>} header
 * @property {(status: number, body?: MessageData, contentType?: string) => Promise<Ack>} reply
 */

/**
 * The broker's `ack` of a listener message.
 * @typedef {object} Ack
 * @property {number} status `204` for a send, `200` for a reply, watch or unwatch.
 * @property {number} [recipients] For a send to a topic.
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
   * @param {number | undefined} retryAfter Seconds from `Retry-After` (sent with 503 and 507), if any.
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

/** A message sent over an envelope listener got no answer: there was no connection, or it ended first. */
export class FedbrokerClosedError extends Error {
  /**
   * @param {string} message
   * @param {number} [code] The close code of the connection, when it had one.
   * @param {string} [reason]
   */
  constructor(message, code, reason) {
    super(message);
    this.name = 'FedbrokerClosedError';
    /** @type {number | undefined} */
    this.code = code;
    /** @type {string | undefined} */
    this.reason = reason;
  }
}

/** The WebSocket subprotocol of the envelope (docs/patterns.md §3). */
export const SUBPROTOCOL = 'fedbroker.v1';
/** The largest envelope header, in bytes. */
export const MAX_HEADER_LENGTH = 16384;

/**
 * The path segment of one id, or of several (`7,8,9`) for a multi-target send.
 * @param {string | number | Array<string | number>} id
 */
function segment(id) {
  if (Array.isArray(id)) {
    if (id.length === 0) throw new TypeError('no target ids');
    return id.map((i) => encodeURIComponent(String(i))).join(',');
  }
  return encodeURIComponent(String(id));
}

/**
 * The URL of `id` under a broker URL (`http://host:port`, `https://host/mq`, `ws://…`, or relative to the page).
 * @param {string | URL} brokerUrl
 * @param {string | number | Array<string | number>} id
 * @param {'http' | 'ws'} kind
 */
function idUrl(brokerUrl, id, kind) {
  const base = typeof location === 'object' && location ? location.href : undefined;
  const u = new URL(String(brokerUrl), base);
  u.hash = '';
  u.pathname = u.pathname.replace(/\/+$/, '') + '/' + segment(id);
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
 * Sends `data` to the node listening on `id` at `brokerUrl` (`POST /{id}`), or to several ids at once
 * (an array: `POST /7,8,9`, the multi-target send of docs/patterns.md §1).
 *
 * Resolves when the broker answers `204` (the message is in the queue of every target's listener), `202`
 * (a mailbox id nobody listens on: the message is kept for a later listener, docs/mailbox.md) or, for
 * several ids, `207` (some targets did not take it, or only kept it: `results` says which and why).
 * `seq` is the `Fedbroker-Seq` of a mailbox id (the message's number), `recipients` the
 * `Fedbroker-Recipients` of a topic id. Rejects with a `FedbrokerError` (`message` = the broker's
 * error text, `status`, `retryAfter` on 503 and 507) on any other answer, and with `fetch`'s own error when no
 * answer could be read (network failure, abort, or in a browser a response without CORS headers: the
 * page's origin is not allowed).
 * @param {string | URL} brokerUrl e.g. `http://127.0.0.1:8080` or `https://broker.example/mq`
 * @param {string | number | Array<string | number>} id 1 ..= 2147483647, or up to 1024 distinct ids
 * @param {MessageData} data
 * @param {SendOptions} [options]
 * @returns {Promise<SendResult>}
 */
export async function send(brokerUrl, id, data, options = {}) {
  const res = await post(idUrl(brokerUrl, id, 'http'), data, options);
  const multi = Array.isArray(id);
  if (res.status === 204 || (res.status === 202 && !multi)) {
    const status = res.status;
    const recipients = multi ? undefined : parseCount(res.headers.get('fedbroker-recipients'));
    const seq = multi ? undefined : parseCount(res.headers.get('fedbroker-seq'));
    const ids = multi ? id : [id];
    /** @type {SendResult} */
    const result = {
      status,
      results: ids.map((i) => {
        /** @type {TargetResult} */
        const r = { id: Number(i), status };
        if (seq !== undefined) r.seq = seq;
        if (recipients !== undefined) r.recipients = recipients;
        return r;
      }),
    };
    if (seq !== undefined) result.seq = seq;
    if (recipients !== undefined) result.recipients = recipients;
    await res.arrayBuffer().catch(() => {}); // a 202 has an empty body: read it to free the connection
    return result;
  }
  if (res.status === 207 && multi) {
    let body;
    try {
      body = await res.json();
    } catch {
      // handled below
    }
    if (!body || !Array.isArray(body.results)) throw new FedbrokerError('207 without a list of results', 207, undefined);
    return { status: 207, results: body.results };
  }
  throw await errorOf(res);
}

/**
 * Sends `data` to the envelope listener of `id` as a request and waits for its reply
 * (`POST /{id}?reply=MS`, docs/patterns.md §4).
 *
 * Resolves with every answer of the broker, like `fetch`: the listener's reply (its `status`, body and
 * `contentType`; `application/octet-stream` when it gave none), or the broker's own answer, its sentence
 * in the body: `504` no reply in time, `502` the listener went away before replying, `409` the listener
 * did not negotiate the envelope, `404` nobody listens, `503` queue full or too many requests waiting,
 * `400`, `401`, `403`. (A listener may reply with those statuses too: the client cannot tell them apart.)
 * Rejects only when there is no answer to read (network failure, abort, CORS).
 * @param {string | URL} brokerUrl
 * @param {string | number} id
 * @param {MessageData} data
 * @param {RequestOptions} [options]
 * @returns {Promise<RequestResult>}
 */
export async function request(brokerUrl, id, data, options = {}) {
  if (Array.isArray(id)) throw new TypeError('request() takes one id: the broker refuses ?reply= on a multi-target send');
  const { timeoutMs = 5000 } = options;
  if (!Number.isSafeInteger(timeoutMs) || timeoutMs < 1) {
    throw new RangeError(`timeoutMs must be a whole number of milliseconds from 1, not ${timeoutMs}`);
  }
  const url = idUrl(brokerUrl, id, 'http');
  url.searchParams.set('reply', String(timeoutMs));
  const res = await post(url, data, options);
  return {
    status: res.status,
    body: await res.arrayBuffer(),
    contentType: res.headers.get('content-type') ?? '',
    retryAfter: parseRetryAfter(res.headers.get('retry-after')),
  };
}

/** @param {URL} url @param {MessageData} data @param {SendOptions} options */
function post(url, data, options) {
  const { token, signal } = options;
  const fetchImpl = options.fetch ?? globalThis.fetch;
  /** @type {Record<string, string>} */
  const headers = {};
  if (token) headers.authorization = `Bearer ${token}`;
  return fetchImpl(url, {
    method: 'POST',
    body: /** @type {BodyInit} */ (data ?? new Uint8Array(0)),
    headers,
    signal,
    credentials: 'omit', // tokens travel in Authorization, never in cookies
    cache: 'no-store',
  });
}

/** A `FedbrokerError` of an error answer. @param {Response} res */
async function errorOf(res) {
  let text = '';
  try {
    text = (await res.text()).trim();
  } catch {
    // the body could not be read: fall back to the status line
  }
  return new FedbrokerError(
    text || `${res.status} ${res.statusText}`.trim(),
    res.status,
    parseRetryAfter(res.headers.get('retry-after')),
  );
}

/** A response header of Node's `http.IncomingMessage` (as `ws` shows it). @param {any} res @param {string} name */
function headerOf(res, name) {
  const v = res?.headers?.[name];
  return Array.isArray(v) ? v[0] : typeof v === 'string' ? v : null;
}

/** @param {string | null} value @returns {number | undefined} */
function parseCount(value) {
  return value != null && /^\d+$/.test(value.trim()) ? Number(value.trim()) : undefined;
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

const strictDecoder = new TextDecoder('utf-8', { fatal: true });
const EMPTY = new Uint8Array(0);

/**
 * The bytes of a message body, without copying where it can. Blobs are not handled here (see `bodyBytes`).
 * @param {MessageData} data
 * @returns {Uint8Array}
 */
function bytesOf(data) {
  if (data == null) return EMPTY;
  if (typeof data === 'string') return encoder.encode(data);
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  throw new TypeError('a message body must be a string, an ArrayBuffer, a typed array, a DataView or a Blob');
}

/** @param {MessageData} data @returns {Promise<Uint8Array>} */
async function bodyBytes(data) {
  if (typeof Blob === 'function' && data instanceof Blob) return new Uint8Array(await data.arrayBuffer());
  return bytesOf(data);
}

/**
 * Encodes one `fedbroker.v1` envelope: u16 big-endian header length | JSON header | payload.
 * @param {Record<string, any>} header
 * @param {string | ArrayBuffer | ArrayBufferView | null} [payload]
 * @returns {Uint8Array}
 */
export function encodeEnvelope(header, payload) {
  const h = encoder.encode(JSON.stringify(header));
  if (h.length > MAX_HEADER_LENGTH) {
    throw new RangeError(`envelope header of ${h.length} bytes; at most ${MAX_HEADER_LENGTH} are allowed`);
  }
  const p = bytesOf(payload);
  const out = new Uint8Array(2 + h.length + p.length);
  out[0] = h.length >> 8;
  out[1] = h.length & 0xff;
  out.set(h, 2);
  out.set(p, 2 + h.length);
  return out;
}

/**
 * Decodes one `fedbroker.v1` envelope. Throws a `TypeError` when it is not one.
 * @param {ArrayBuffer | ArrayBufferView} data
 * @returns {{header: Record<string, any>, payload: ArrayBuffer}}
 */
export function decodeEnvelope(data) {
  const b = data instanceof ArrayBuffer ? new Uint8Array(data) : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (b.length < 2) throw new TypeError(`envelope of ${b.length} bytes: shorter than its header length`);
  const n = (b[0] << 8) | b[1];
  if (n < 2 || n > MAX_HEADER_LENGTH || 2 + n > b.length) {
    throw new TypeError(`envelope header length ${n} does not fit (message of ${b.length} bytes)`);
  }
  let header;
  try {
    header = JSON.parse(strictDecoder.decode(b.subarray(2, 2 + n)));
  } catch (e) {
    throw new TypeError(`envelope header is not UTF-8 JSON: ${e instanceof Error ? e.message : e}`);
  }
  if (header === null || typeof header !== 'object' || Array.isArray(header)) {
    throw new TypeError('envelope header is not a JSON object');
  }
  return { header, payload: b.slice(2 + n).buffer };
}

/** An id for a JSON header: a canonical decimal string becomes a number; anything else is left for the broker to judge. */
function jsonId(/** @type {string | number} */ id) {
  return typeof id === 'string' && /^[1-9][0-9]{0,9}$/.test(id) ? Number(id) : id;
}

/** @param {Iterable<string | number> | string | number} ids @returns {Array<number | string>} */
function idList(ids) {
  const list = typeof ids === 'string' || typeof ids === 'number' ? [ids] : [...ids];
  return [...new Set(list.map(jsonId))];
}

/** Reports an error that belongs to no promise (like an error in an event handler). @param {unknown} e */
function reportLater(e) {
  callback(() => {
    throw e;
  });
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
 * With `envelope: true` the connection negotiates `fedbroker.v1` (docs/patterns.md §3): `onMessage` gets
 * each message's header too, `onRequest` answers requests, and the handle sends over the connection
 * (`send`, `reply`, `watch`, `unwatch`), each message answered by the broker's `ack` or `error`, matched
 * by `ref`. Watched ids are watched again after every reconnect.
 *
 * Mailboxes (docs/mailbox.md): `since` asks for the kept messages after that seq; `resume: true` makes
 * every reconnection ask for `since=` the last seq delivered to `onMessage` (`handle.lastSeq`), so that
 * nothing is lost or repeated. Gaps (messages dropped before they were read) go to `onGap`, and a reset
 * mailbox (`409`: the `since` is ahead of the broker) restarts from `since=0` and goes to `onReset`.
 * Browsers cannot read the `101`'s headers nor a refused upgrade's status: there the seqs come from the
 * envelope (chosen by `since`/`resume` unless `envelope: false`), and a reset is inferred (README).
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
    onRequest,
    onPresence,
    onError,
    onGap,
    onReset,
    since,
    resume = false,
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
  if (since !== undefined && !(Number.isSafeInteger(since) && since >= 0)) {
    throw new RangeError(`since must be a whole number from 0 (a seq), not ${since}`);
  }
  // The `ws` package (an EventEmitter) shows the 101's headers ('upgrade') and a refused upgrade's status
  // ('unexpected-response'); browsers' and Node's built-in WebSocket show neither.
  const seesHttp = typeof WS.prototype?.on === 'function';
  const envelope = options.envelope ?? (resume || since !== undefined);
  if (!envelope && (resume || since !== undefined) && !seesHttp) {
    throw new TypeError(
      'since/resume on a plain listener need a WebSocket class that exposes the upgrade response (the "ws" ' +
        'package): a plain listener learns its seqs from the 101\'s Fedbroker-Seq header. Use the envelope (leave ' +
        '`envelope` unset) in browsers.',
    );
  }
  const idNumber = Number(id);
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
  let everOpened = false;
  /** The last seq delivered to the app (or passed over by a gap, 0 after a reset); `since` of a resume. */
  let lastSeq = since;
  /**
   * Set when an envelope attempt with `since` = this value was refused and the client could not see why
   * (no HTTP status): the next attempt tries `since=0`. If that opens, the mailbox was reset (409).
   * @type {number | undefined}
   */
  let resetCheck;
  /** An error that belongs to no promise: to `onError`, else reported like an error in an event handler. */
  const fail = (/** @type {unknown} */ e) => (onError ? callback(onError, e) : reportLater(e));
  /**
   * The open envelope connection: its socket, the listener messages awaiting an answer (by `ref`), and
   * the chain that keeps outgoing messages in call order (a Blob body is read asynchronously).
   * @typedef {{sock: any, pending: Map<number, {resolve: (a: any) => void, reject: (e: any) => void}>, chain: Promise<void>, ended: boolean}} Conn
   * @type {Conn | null}
   */
  let conn = null;
  let refs = 0;
  /** Ids to watch on every connection. @type {Set<number | string>} */
  const watched = new Set();
  /** Last known state of watched ids, on this connection. @type {Map<number, boolean>} */
  const presence = new Map();
  /** `watch` calls made while disconnected, settled by the watch sent at the next open. */
  /** @type {Array<{ids: Array<number | string>, resolve: (a: any) => void, reject: (e: any) => void}>} */
  let watchWaiters = [];
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
      for (const w of watchWaiters) w.reject(new FedbrokerClosedError('the listener stopped before it could watch', info.code, info.reason));
      watchWaiters = [];
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
    /**
     * The `since` of this attempt: a resume asks for what follows the last seq delivered; when none is
     * known yet (no message came, and the 101's Fedbroker-Seq could not be read), for everything kept.
     */
    const usedSince =
      resetCheck !== undefined ? 0 : resume ? (lastSeq ?? (everOpened ? 0 : undefined)) : everOpened ? undefined : lastSeq;
    const checking = resetCheck;
    if (usedSince !== undefined) url.searchParams.set('since', String(usedSince));
    let sock;
    try {
      sock = envelope ? new WS(url.href, SUBPROTOCOL) : new WS(url.href);
    } catch (e) {
      // A URL the WebSocket class refuses: it would be refused again.
      report({ code: 1006, reason: e instanceof Error ? e.message : String(e), wasClean: false, opened: false, refused: false, willReconnect: false });
      return;
    }
    ws = sock;
    sock.binaryType = 'arraybuffer';
    let opened = false;
    currentOpened = false;
    /** What the WebSocket class showed of the HTTP answer (`ws` only). */
    /** @type {{status?: number, seq?: number, body?: string}} */
    const http = {};
    /** A plain listener's count of the seqs it received (from the 101's Fedbroker-Seq, or `since`). */
    /** @type {number | undefined} */
    let cursor;
    if (seesHttp) {
      sock.on('upgrade', (/** @type {any} */ res) => {
        http.seq = parseCount(headerOf(res, 'fedbroker-seq'));
      });
      sock.on('unexpected-response', (/** @type {any} */ req, /** @type {any} */ res) => {
        http.status = res.statusCode;
        http.seq = parseCount(headerOf(res, 'fedbroker-seq'));
        let body = '';
        let done = false;
        const abort = () => {
          if (done) return;
          done = true;
          http.body = body.trim();
          try {
            sock.close(); // still connecting: ws aborts the handshake (error, then close 1006)
          } catch {
            req.destroy?.();
          }
        };
        res.setEncoding?.('utf8');
        res.on('data', (/** @type {string} */ d) => {
          if (body.length < 1024) body += d;
        });
        res.on('end', abort);
        res.on('error', abort);
        res.on('close', abort);
        /** @type {any} */ (setTimeout(abort, 1000)).unref?.();
      });
    }
    sock.onopen = () => {
      opened = true;
      currentOpened = true;
      everOpened = true;
      openedAt = Date.now();
      refusals = 0;
      if (stopped) {
        sock.close(1000);
        return;
      }
      if (checking !== undefined) {
        // `since=${checking}` was refused and `since=0` is not: the since was ahead, the mailbox was reset.
        resetCheck = undefined;
        lastSeq = 0;
        callback(onReset, { since: checking, last: undefined, certain: false });
      }
      if (usedSince === undefined && lastSeq === undefined && http.seq !== undefined) lastSeq = http.seq; // from "now"
      if (!envelope && http.seq !== undefined) cursor = usedSince ?? http.seq;
      if (envelope) {
        const c = (conn = { sock, pending: new Map(), chain: Promise.resolve(), ended: false });
        rewatch(c);
      }
      callback(onOpen);
    };
    sock.onmessage = (/** @type {{data: unknown}} */ ev) => {
      if (stopped) return; // close() was called: deliver nothing more
      if (!envelope) {
        if (cursor === undefined) {
          callback(onMessage, toArrayBuffer(ev.data));
          return;
        }
        // A plain listener on a mailbox id: the messages after the 101's seq (or `since`) come one by one.
        const seq = ++cursor;
        lastSeq = seq;
        callback(onMessage, toArrayBuffer(ev.data), { seq, id: idNumber, header: { type: 'message', seq, id: idNumber } });
        return;
      }
      if (!conn || conn.sock !== sock) return;
      let frame;
      try {
        frame = decodeEnvelope(toArrayBuffer(ev.data));
      } catch (e) {
        fail(e); // the broker sent something that is not an envelope: drop it, say so
        return;
      }
      received(conn, frame.header, frame.payload);
    };
    let ended = false;
    /** @param {number} code @param {string} reason @param {boolean} wasClean */
    const end = (code, reason, wasClean) => {
      if (ended) return;
      ended = true;
      if (ws === sock) ws = null;
      if (conn && conn.sock === sock) dropConn(code, reason);
      closedSocket(opened, code, reason, wasClean, usedSince, checking, http);
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
   * @param {number | undefined} usedSince The `since` of this attempt.
   * @param {number | undefined} checking Whether it was a reset check (`since=0` after `since=checking` was refused).
   * @param {{status?: number, seq?: number, body?: string}} http What the WebSocket showed of the HTTP answer.
   */
  async function closedSocket(opened, code, reason, wasClean, usedSince, checking, http) {
    /** @type {CloseInfo} */
    const info = { code, reason, wasClean, opened, refused: false, willReconnect: false };
    if (stopped) return report(info);
    if (opened) {
      if (NO_RECONNECT_CODES.includes(code)) return report(info);
      if (Date.now() - openedAt >= stableAfter) attempt = 0;
    } else if (http.status !== undefined) {
      // The WebSocket class showed the refusal (`ws`): act on the status.
      const status = http.status;
      info.status = status;
      if (http.body) info.reason = http.body;
      if (status >= 500) {
        info.refused = false; // 503: the broker is at --max-connections (or a proxy's 502): retried
        refusals = 0;
      } else {
        info.refused = true;
        if (status === 409 && usedSince !== undefined) {
          // since is ahead of the broker's last seq: the mailbox was reset; start again from 0.
          lastSeq = 0;
          resetCheck = undefined;
          callback(onReset, { since: usedSince, last: http.seq, certain: true });
          info.willReconnect = true;
          return schedule(info, 0);
        }
        if (status === 410 && usedSince !== undefined && http.seq !== undefined && http.seq > usedSince) {
          // A plain listener asked for dropped messages: say so, take the rest.
          lastSeq = http.seq;
          callback(onGap, { id: idNumber, from: usedSince + 1, to: http.seq });
          info.willReconnect = true;
          return schedule(info, 0);
        }
        refusals++;
        if (refusals >= maxRefusals) return report(info);
      }
    } else {
      info.refused = await reachable();
      if (stopped) return report(info);
      refusals = info.refused ? refusals + 1 : 0;
      if (!info.refused) resetCheck = undefined; // the evidence is gone: ask for the same since again
      if (refusals >= maxRefusals) {
        // Without a status, a refused `since` (409: the mailbox was reset) looks like refused credentials
        // (401/403). Before giving up, one attempt with `since=0`: if it opens, it was the since (a reset);
        // if not, the credentials. (Only after `maxRefusals` refusals in a row: one failed attempt whose
        // probe then succeeds is also what a broker coming back up looks like.)
        if (envelope && checking === undefined && usedSince !== undefined && usedSince > 0) resetCheck = usedSince;
        else return report(info);
      }
    }
    info.willReconnect = true;
    schedule(info);
  }

  /** @param {CloseInfo} info @param {number} [fixedDelay] */
  function schedule(info, fixedDelay) {
    const delay = fixedDelay ?? Math.round(Math.random() * Math.min(maxDelay, minDelay * 2 ** attempt));
    if (fixedDelay === undefined) attempt = Math.min(attempt + 1, 64);
    info.delay = delay;
    report(info);
    if (!stopped) timer = setTimeout(connect, delay);
  }

  /** The envelope connection ended: what awaits an answer gets none. @param {number} code @param {string} reason */
  function dropConn(code, reason) {
    const c = conn;
    if (!c) return;
    conn = null;
    c.ended = true;
    presence.clear();
    const why = `the connection closed (${code}${reason ? ` ${reason}` : ''}) before the broker answered`;
    for (const p of c.pending.values()) p.reject(new FedbrokerClosedError(why, code, reason));
    c.pending.clear();
  }

  /**
   * One message from the broker on connection `c`.
   * @param {Conn} c
   * @param {Record<string, any>} h
   * @param {ArrayBuffer} payload
   */
  function received(c, h, payload) {
    switch (h.type) {
      case 'message':
        advance(h.seq);
        callback(onMessage, payload, { seq: h.seq, id: h.id, from: h.from, header: h });
        return;
      case 'request':
        advance(h.seq); // a request takes a seq too; a replay passes over it without a gap
        incoming(c, h, payload);
        return;
      case 'gap':
        // Messages from..=to were dropped before this listener read them (docs/mailbox.md §4).
        advance(h.to);
        callback(onGap, { id: h.id, from: h.from, to: h.to });
        return;
      case 'ack':
      case 'error': {
        const p = typeof h.ref === 'number' ? c.pending.get(h.ref) : undefined;
        if (!p) return; // not ours (null ref: a header the broker could not read)
        c.pending.delete(h.ref);
        if (h.type === 'ack') {
          /** @type {Ack} */
          const ack = { status: h.status };
          if (h.recipients !== undefined) ack.recipients = h.recipients;
          p.resolve(ack);
        } else {
          p.reject(new FedbrokerError(String(h.error ?? `error ${h.status}`), h.status, undefined));
        }
        return;
      }
      case 'online':
      case 'offline':
        if (!watched.has(h.id)) return; // unwatched meanwhile
        presence.set(h.id, h.type === 'online');
        callback(onPresence, h.id, h.type === 'online');
        return;
      default:
      // an unknown type: ignored (forward compatibility)
    }
  }

  /** The app has been given (or told it missed) everything up to `seq`. @param {unknown} seq */
  function advance(seq) {
    if (Number.isSafeInteger(seq)) lastSeq = /** @type {number} */ (seq);
  }

  /**
   * Sends one listener message on `c`; resolves with the broker's `ack`, rejects on its `error`.
   * @param {Conn | null} c
   * @param {Record<string, any>} header
   * @param {MessageData} [data]
   * @returns {Promise<Ack>}
   */
  function transmit(c, header, data) {
    if (!envelope) return Promise.reject(new TypeError('sending needs a listener made with {envelope: true}'));
    if (!c || c.ended || stopped) return Promise.reject(new FedbrokerClosedError('not connected'));
    const ref = ++refs;
    const answer = new Promise((resolve, reject) => c.pending.set(ref, { resolve, reject }));
    const sent = c.chain.then(async () => {
      const payload = await bodyBytes(data);
      if (c.ended) return; // already rejected
      c.sock.send(encodeEnvelope({ ...header, ref }, payload));
    });
    c.chain = sent.catch(() => {});
    sent.catch((e) => {
      const p = c.pending.get(ref);
      c.pending.delete(ref);
      p?.reject(e);
    });
    return answer;
  }

  /**
   * @param {Conn} c
   * @param {number} seq
   * @param {number} status
   * @param {MessageData} body
   * @param {string} [contentType]
   */
  function replyOn(c, seq, status, body, contentType) {
    if (!Number.isInteger(status) || status < 200 || status > 599) {
      return Promise.reject(new RangeError(`a reply status is a whole number from 200 to 599, not ${status}`));
    }
    /** @type {Record<string, any>} */
    const header = { type: 'reply', reply_to: seq, status };
    const ct = contentType ?? (typeof body === 'string' ? 'text/plain; charset=utf-8' : typeof Blob === 'function' && body instanceof Blob && body.type ? body.type : undefined);
    if (ct !== undefined) header.content_type = ct;
    return transmit(c, header, body);
  }

  /**
   * A request for a reply on `c`: to `onRequest`, whose result (if any) is sent as the reply.
   * @param {Conn} c
   * @param {Record<string, any>} h
   * @param {ArrayBuffer} body
   */
  function incoming(c, h, body) {
    let answered = false;
    /** @type {IncomingRequest} */
    const req = {
      seq: h.seq,
      id: h.id,
      timeoutMs: h.timeout_ms,
      body,
      header: h,
      reply: (status, data, contentType) => {
        answered = true;
        return replyOn(c, h.seq, status, data, contentType);
      },
    };
    /** @param {any} status @param {MessageData} data @param {string} [ct] */
    const auto = (status, data, ct) => {
      if (answered) return;
      req.reply(status, data, ct).catch((e) => {
        // A connection that ended is nothing to report: the broker answers the sender (502) itself.
        if (!(e instanceof FedbrokerClosedError)) fail(e);
      });
    };
    if (!onRequest) {
      auto(501, 'this listener does not answer requests');
      return;
    }
    let out;
    try {
      out = onRequest(req);
    } catch (e) {
      fail(e);
      auto(500, 'the request handler failed');
      return;
    }
    if (out === undefined) return;
    Promise.resolve(out).then(
      (r) => {
        if (r === undefined || answered) return;
        const isBody = r === null || typeof r === 'string' || r instanceof ArrayBuffer || ArrayBuffer.isView(r) || (typeof Blob === 'function' && r instanceof Blob);
        if (isBody) auto(200, r);
        else auto(r.status ?? 200, r.body, r.contentType);
      },
      (e) => {
        fail(e);
        auto(500, 'the request handler failed');
      },
    );
  }

  /** After an envelope connection opens: watch again what was watched. @param {Conn} c */
  function rewatch(c) {
    const waiters = watchWaiters;
    watchWaiters = [];
    if (watched.size === 0) {
      for (const w of waiters) w.resolve({ status: 200 });
      return;
    }
    transmit(c, { type: 'watch', ids: [...watched] }).then(
      (ack) => {
        for (const w of waiters) w.resolve(ack);
      },
      (e) => {
        if (e instanceof FedbrokerClosedError) {
          watchWaiters.push(...waiters); // the next connection will try again
          return;
        }
        // The broker refused: the ids of waiting calls are dropped with them; those watched before
        // stay (they were allowed on an earlier connection), and the error is reported.
        for (const w of waiters) {
          for (const i of w.ids) watched.delete(i);
          w.reject(e);
        }
        if (waiters.length === 0) fail(e);
      },
    );
  }

  /** @param {Iterable<string | number> | string | number} ids */
  function watch(ids) {
    if (!envelope) return Promise.reject(new TypeError('watch needs a listener made with {envelope: true}'));
    if (stopped) return Promise.reject(new FedbrokerClosedError('the listener is closed'));
    const list = idList(ids);
    const fresh = list.filter((i) => !watched.has(i));
    for (const i of list) watched.add(i);
    if (conn && !conn.ended) {
      return transmit(conn, { type: 'watch', ids: list }).catch((e) => {
        if (!(e instanceof FedbrokerClosedError)) for (const i of fresh) watched.delete(i);
        throw e;
      });
    }
    return new Promise((resolve, reject) => watchWaiters.push({ ids: fresh, resolve, reject }));
  }

  /** @param {Iterable<string | number> | string | number} ids */
  function unwatch(ids) {
    if (!envelope) return Promise.reject(new TypeError('unwatch needs a listener made with {envelope: true}'));
    const list = idList(ids);
    for (const i of list) {
      watched.delete(i);
      presence.delete(/** @type {number} */ (i));
    }
    if (conn && !conn.ended) return transmit(conn, { type: 'unwatch', ids: list });
    return Promise.resolve(undefined);
  }

  function close() {
    if (stopped) return;
    stopped = true;
    if (timer !== undefined) clearTimeout(timer);
    timer = undefined;
    if (ws) {
      ws.close(1000); // the close event reports the end...
      // ...or, should none come (a connection that never completes its close handshake), this does.
      const t = setTimeout(() => {
        dropConn(1006, '');
        report({ code: 1006, reason: '', wasClean: false, opened: currentOpened, refused: false, willReconnect: false });
      }, 3000);
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
    get lastSeq() {
      return lastSeq;
    },
    url: wsUrl.href,
    /** @param {string | number} to @param {MessageData} data */
    send: (to, data) => transmit(conn, { type: 'send', to: jsonId(to) }, data),
    /** @param {number} seq @param {number} status @param {MessageData} [body] @param {string} [contentType] */
    reply: (seq, status, body, contentType) =>
      envelope ? (conn ? replyOn(conn, seq, status, body, contentType) : Promise.reject(new FedbrokerClosedError('not connected'))) : transmit(null, {}),
    watch,
    unwatch,
    get presence() {
      return new Map(presence);
    },
  };
}
