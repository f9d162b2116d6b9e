// Types of @fedbroker/client (fedbroker.js). The patterns (multi-target send, topics, the fedbroker.v1
// envelope, request-reply, presence) are specified in docs/patterns.md; mailboxes and replay in docs/mailbox.md.

/** What `send` accepts as a message body. `null`/`undefined` send an empty message; a string is sent as UTF-8. */
export type MessageData = string | ArrayBuffer | ArrayBufferView | Blob | null | undefined;

export interface SendOptions {
  /** Bearer token, sent as `Authorization: Bearer <token>`. */
  token?: string;
  /** Aborts the request (the promise then rejects with the abort reason). */
  signal?: AbortSignal;
  /** A `fetch` implementation (default: the global one). */
  fetch?: typeof fetch;
}

export interface RequestOptions extends SendOptions {
  /**
   * How long the broker waits for the reply, in milliseconds (default 5000): sent as `?reply=`. The broker
   * caps it at its `--max-reply-timeout` (default 30000).
   */
  timeoutMs?: number;
}

/** What `send` resolves with. */
export interface SendResult {
  /**
   * `204`: every target accepted the message for a live listener. `202` (one mailbox id): nobody listens;
   * the message is kept for a later listener. `207` (several ids only): some did not take it, or only kept
   * it (`202`), see `results`.
   */
  status: 202 | 204 | 207;
  /** One mailbox id: `Fedbroker-Seq`, the message's number on that id (browsers can read it: the broker exposes it). */
  seq?: number;
  /**
   * One topic id: `Fedbroker-Recipients`, how many listeners got the message. In a browser only when the
   * broker exposes that header to the page (`Access-Control-Expose-Headers`).
   */
  recipients?: number;
  /** One entry per target id, in request order. */
  results: TargetResult[];
}

export interface TargetResult {
  id: number;
  /** What a `POST` to that id alone would have answered: `204`, `202` (kept), `404`, `503`, `507`. */
  status: number;
  /** A mailbox id: the message's seq on it (`{"id":5,"status":202,"seq":1}`); absent in a `204` for several ids. */
  seq?: number;
  /** That answer's sentence, when it is not `204` or `202`. */
  error?: string;
  /** A topic id: how many listeners got the message (when the broker said). */
  recipients?: number;
}

/**
 * What `request` resolves with: the listener's reply, or the broker's own answer (`504` no reply in time,
 * `502` listener gone, `409` plain listener, `404` nobody listens, `503`, `400`, `401`, `403`) with its
 * sentence as a `text/plain` body.
 */
export interface RequestResult {
  status: number;
  body: ArrayBuffer;
  /** `Content-Type` of the answer: the reply's `content_type`, else `application/octet-stream`. */
  contentType: string;
  /** Seconds from `Retry-After` (sent with 503), if any. */
  retryAfter: number | undefined;
}

/**
 * The header of an envelope message; for a plain listener on a mailbox id with a WebSocket class that shows
 * the `101` (`ws`), `{seq, id, header: {type: 'message', seq, id}}` counted from the `101`'s `Fedbroker-Seq`.
 */
export interface MessageMeta {
  /**
   * Counts the messages and requests of the listened id, from 1, without gaps on one connection. On a mailbox
   * id it is the message's number, the same across reconnects and listeners; missing ones go to `onGap`.
   */
  seq: number;
  /** The id the message was sent to (the listened id; useful on topics). */
  id: number;
  /** The sender's listened id, set by the broker, when an envelope listener sent it; absent for a `POST`. */
  from?: number;
  /** The whole header (unknown keys included). */
  header: Record<string, any>;
}

/** What a request handler may return: a reply, or a body alone (status `200`). */
export type ReplyValue =
  | { status?: number; body?: MessageData; contentType?: string }
  | string
  | ArrayBuffer
  | ArrayBufferView
  | Blob
  | null;

/** A request (`POST /{id}?reply=MS`) received by an envelope listener. */
export interface IncomingRequest {
  seq: number;
  id: number;
  /** How long the sender waits, in milliseconds (`timeout_ms`). */
  timeoutMs: number;
  body: ArrayBuffer;
  header: Record<string, any>;
  /**
   * Answers it (once). `contentType` defaults to `text/plain; charset=utf-8` for a string body, the
   * Blob's type for a Blob, else none (the sender sees `application/octet-stream`). `204` and `304` take
   * no body.
   */
  reply(status: number, body?: MessageData, contentType?: string): Promise<Ack>;
}

/** The broker's `ack` of a listener message. */
export interface Ack {
  /** `204` for a send, `200` for a reply, watch or unwatch. */
  status: number;
  /** A send to a topic: how many listeners got it. */
  recipients?: number;
}

/** Passed to `onGap`: messages `from` ..= `to` of `id` were dropped (or expired) before this listener read them. */
export interface GapInfo {
  id: number;
  from: number;
  to: number;
}

/**
 * Passed to `onReset`: the broker refused `since` as ahead of its last seq (`409`): the mailbox was reset (a
 * broker without `--store` restarted). The listener goes on from `since=0`: seqs start again, and messages
 * numbered up to `since` are new ones.
 */
export interface ResetInfo {
  /** The `since` that was refused. */
  since: number;
  /** The broker's last seq on the id (the `409`'s `Fedbroker-Seq`), when the WebSocket shows it (`ws`); else undefined. */
  last: number | undefined;
  /**
   * `true`: the client saw the `409` (`ws`). `false`: inferred, because the WebSocket shows no HTTP status
   * (browsers, Node's built-in one): `since=N` was refused `maxRefusals` times in a row while the broker was
   * up, then `since=0` was accepted. Credentials refused as many times and then accepted would look the same.
   */
  certain: boolean;
}

/** Passed to `onClose` each time a connection, or an attempt to connect, ends. */
export interface CloseInfo {
  /** WebSocket close code (1006: the connection failed or was lost without a Close frame). */
  code: number;
  /** Close reason sent by the broker (`replaced`, `token expired`, `shutting down`, …). */
  reason: string;
  /** Whether the close handshake completed. */
  wasClean: boolean;
  /** Whether this connection had opened (`false`: the attempt failed before the upgrade completed). */
  opened: boolean;
  /**
   * The attempt failed before opening although the broker answers HTTP (`GET /healthz` is 200): the
   * broker refused the upgrade (401, 403, 400 invalid id, …; which one cannot be known).
   */
  refused: boolean;
  /** Whether the client will connect again. */
  willReconnect: boolean;
  /** Milliseconds until that next attempt, when `willReconnect`. */
  delay?: number;
  /**
   * The HTTP status of a refused upgrade, when the WebSocket class exposes it (the `ws` package; never in
   * browsers or with Node's built-in WebSocket). `reason` is then the broker's sentence.
   */
  status?: number;
}

/** The part of a WebSocket class that `listen` uses (the browser's, Node's, or the `ws` package's). */
export interface WebSocketLike {
  binaryType: string;
  readonly readyState: number;
  onopen: ((ev: any) => any) | null;
  onmessage: ((ev: { data: any }) => any) | null;
  onerror: ((ev: any) => any) | null;
  onclose: ((ev: { code: number; reason?: string; wasClean?: boolean }) => any) | null;
  close(code?: number, reason?: string): void;
  /** Used with `envelope: true`. */
  send(data: Uint8Array): void;
  readonly protocol?: string;
  /**
   * The `ws` package's EventEmitter method. When the class has it, `listen` reads the `101`'s headers
   * (`'upgrade'`: `Fedbroker-Seq`) and a refused upgrade's status, headers and body (`'unexpected-response'`).
   */
  on?(event: string, listener: (...args: any[]) => void): any;
}

export interface ListenOptions {
  /**
   * Token, sent as `?token=` (browsers cannot set headers on a WebSocket). A function is called before
   * every connection attempt, so it can hand out a fresh JWT.
   */
  token?: string | (() => string | Promise<string>);
  /**
   * Negotiate the `fedbroker.v1` envelope (default false): `onMessage` gets each message's header, requests
   * reach `onRequest`, and the handle can `send`, `reply`, `watch` and `unwatch` over the connection.
   */
  envelope?: boolean;
  /**
   * Called with each message's bytes and, with `envelope` (or a plain listener on a mailbox id through `ws`),
   * its header: `meta.seq` is what to persist and pass as `since` later.
   */
  onMessage?: (data: ArrayBuffer, meta?: MessageMeta) => void;
  /**
   * Mailbox ids: start after this seq (`0`: everything kept): `GET /{id}?since=`. Without `resume`, it is used
   * until a connection opens; reconnections then listen from "now". A whole number from 0, else a RangeError.
   */
  since?: number;
  /**
   * Mailbox ids (default false): every reconnection asks for `since=` the last seq delivered to `onMessage`
   * (`handle.lastSeq`), so no message is lost or repeated across reconnects. Until a seq is known (nothing
   * came yet, and the `101` could not be read), a reconnection asks for everything kept (`since=0`).
   * `since` and `resume` choose the envelope unless `envelope: false` is given; that needs a WebSocket class
   * that exposes the upgrade response (the `ws` package): else a TypeError.
   */
  resume?: boolean;
  /** Messages were dropped before this listener read them (an envelope `gap` event, or a plain listener's `410`); it goes on. */
  onGap?: (gap: GapInfo) => void;
  /** The mailbox was reset (`409`, or inferred in browsers); the listener goes on from `since=0`. */
  onReset?: (info: ResetInfo) => void;
  /**
   * Envelope only: called with each request. Return a reply (or a promise of one) to have it sent; return
   * `undefined` to answer later with `req.reply(…)` or `handle.reply(seq, …)`. A handler that throws or
   * rejects sends `500`. Without a handler every request is answered `501`.
   */
  onRequest?: (req: IncomingRequest) => ReplyValue | undefined | Promise<ReplyValue | undefined>;
  /** Envelope only: a watched id started (`true`) or stopped (`false`) being listened on; first its current state. */
  onPresence?: (id: number, online: boolean) => void;
  /**
   * Envelope only: errors that belong to no promise (a request handler that threw, an automatic reply or a
   * re-watch the broker refused, a frame that is not an envelope). Default: reported like an error thrown
   * in an event handler.
   */
  onError?: (error: unknown) => void;
  /** Called each time the listener is connected (also after a reconnect). */
  onOpen?: () => void;
  /** Called each time a connection or connection attempt ends. */
  onClose?: (info: CloseInfo) => void;
  /** Aborting it is the same as calling `close()`. */
  signal?: AbortSignal;
  /** Back-off base in milliseconds (default 500). */
  minDelay?: number;
  /** Back-off cap in milliseconds (default 30000). */
  maxDelay?: number;
  /** A connection that stayed open this long (ms) resets the back-off (default 5000). */
  stableAfter?: number;
  /** Time limit (ms) of the `GET /healthz` probe after a failed attempt (default 5000). */
  probeTimeout?: number;
  /** Stop after this many consecutive refused attempts (default 2; see `CloseInfo.refused`). */
  maxRefusals?: number;
  /**
   * A WebSocket class (default: the global one). On Node.js 20 run with `--experimental-websocket`, or
   * pass `WebSocket` from the `ws` package.
   */
  WebSocket?: new (url: string, protocols?: string | string[]) => WebSocketLike;
  /** A `fetch` implementation for the probe (default: the global one). */
  fetch?: typeof fetch;
}

export interface ListenHandle {
  /** Closes the connection (code 1000) and stops reconnecting. Idempotent. */
  close(): void;
  /** Resolves with the last `CloseInfo` once the listener has stopped for good. */
  readonly closed: Promise<CloseInfo>;
  /** Whether a connection is open now. */
  readonly connected: boolean;
  /** The WebSocket URL, without the token (and without `since`). */
  readonly url: string;
  /**
   * The last seq delivered to `onMessage` (or passed over by a gap; `0` after a reset): what a `resume`
   * reconnection asks `since=` for, and what to persist to resume in a later session. `undefined` while unknown.
   */
  readonly lastSeq: number | undefined;
  /**
   * Envelope only: sends `data` to `to` over this connection (the receiver sees `from`: this listener's id).
   * Resolves on the broker's `ack` (`{status: 204}`, `recipients` for a topic); rejects with a
   * `FedbrokerError` on its `error` (`403`, `404`, `503`, `400`, …) and with a `FedbrokerClosedError` when
   * not connected or when the connection ends before the answer. A plain listener rejects with a TypeError.
   */
  send(to: string | number, data: MessageData): Promise<Ack>;
  /** Envelope only: answers the request `seq` (see `IncomingRequest.reply`); `404` when none awaits. */
  reply(seq: number, status: number, body?: MessageData, contentType?: string): Promise<Ack>;
  /**
   * Envelope only: follows these ids (`onPresence`), now and after every reconnect. Resolves on the `ack`,
   * before the events of the current states; while disconnected, once the next connection has watched.
   * Rejects with a `FedbrokerError` (`403` an id not allowed, `400` over `--max-watch`).
   */
  watch(ids: Iterable<string | number> | string | number): Promise<Ack>;
  /** Envelope only: stops following these ids. Resolves with the `ack`, or `undefined` while disconnected. */
  unwatch(ids: Iterable<string | number> | string | number): Promise<Ack | undefined>;
  /** A copy of the last known state of each watched id on the current connection (empty while disconnected). */
  readonly presence: Map<number, boolean>;
}

/** A message sent over an envelope listener got no answer: there was no connection, or it ended first. */
export class FedbrokerClosedError extends Error {
  constructor(message: string, code?: number, reason?: string);
  readonly name: 'FedbrokerClosedError';
  /** The connection's close code, when it had one. */
  code: number | undefined;
  reason: string | undefined;
}

/** `'fedbroker.v1'`, the WebSocket subprotocol of the envelope. */
export const SUBPROTOCOL: 'fedbroker.v1';
/** 16384: the largest envelope header, in bytes. */
export const MAX_HEADER_LENGTH: number;

/** Encodes one envelope: u16 big-endian header length | JSON header | payload. RangeError over 16384 header bytes. */
export function encodeEnvelope(header: Record<string, any>, payload?: string | ArrayBuffer | ArrayBufferView | null): Uint8Array;

/** Decodes one envelope; a TypeError when it is not one. */
export function decodeEnvelope(data: ArrayBuffer | ArrayBufferView): { header: Record<string, any>; payload: ArrayBuffer };

/** Close codes after which `listen` does not reconnect: 1003, 1008, 4000 (replaced), 4001 (token expired). */
export const NO_RECONNECT_CODES: readonly number[];

/** An error answer from the broker. */
export class FedbrokerError extends Error {
  constructor(message: string, status: number, retryAfter: number | undefined);
  readonly name: 'FedbrokerError';
  /** HTTP status (400, 401, 403, 404, 413, 503, 507, …). */
  status: number;
  /** Seconds from `Retry-After` (sent with 503 and 507), if any. */
  retryAfter: number | undefined;
}

/**
 * Sends `data` to the node listening on `id` at `brokerUrl` (`POST /{id}`), or to several ids (an array:
 * `POST /7,8,9`). Resolves on `204`, on `202` (a mailbox id nobody listens on: kept), and for several ids on
 * `207`; rejects with a `FedbrokerError` on any other answer (`507` a full mailbox, with `retryAfter`), and
 * with `fetch`'s own error when no answer could be read.
 */
export function send(
  brokerUrl: string | URL,
  id: string | number | Array<string | number>,
  data: MessageData,
  options?: SendOptions,
): Promise<SendResult>;

/**
 * Sends `data` to the envelope listener of `id` as a request and waits for its reply (`POST
 * /{id}?reply=MS`). Resolves with every answer, the broker's own (504, 502, 409, 404, …) included;
 * rejects only when no answer could be read.
 */
export function request(brokerUrl: string | URL, id: string | number, data: MessageData, options?: RequestOptions): Promise<RequestResult>;

/**
 * Listens on `id` at `brokerUrl` (a WebSocket on `GET /{id}`), reconnecting with capped exponential
 * back-off and full jitter after network loss; not after 1003, 1008, 4000, 4001, `close()`, or once the
 * broker has refused the upgrade `maxRefusals` times in a row. With `resume` (mailbox ids) reconnections
 * ask for `since=` the last seq delivered.
 */
export function listen(brokerUrl: string | URL, id: string | number, options?: ListenOptions): ListenHandle;
