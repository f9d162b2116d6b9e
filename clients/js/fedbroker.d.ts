// Types of @fedbroker/client (fedbroker.js).

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
}

export interface ListenOptions {
  /**
   * Token, sent as `?token=` (browsers cannot set headers on a WebSocket). A function is called before
   * every connection attempt, so it can hand out a fresh JWT.
   */
  token?: string | (() => string | Promise<string>);
  /** Called with each message's bytes. */
  onMessage?: (data: ArrayBuffer) => void;
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
  WebSocket?: new (url: string) => WebSocketLike;
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
  /** The WebSocket URL, without the token. */
  readonly url: string;
}

/** Close codes after which `listen` does not reconnect: 1003, 1008, 4000 (replaced), 4001 (token expired). */
export const NO_RECONNECT_CODES: readonly number[];

/** An error answer from the broker. */
export class FedbrokerError extends Error {
  constructor(message: string, status: number, retryAfter: number | undefined);
  readonly name: 'FedbrokerError';
  /** HTTP status (400, 401, 403, 404, 413, 503, …). */
  status: number;
  /** Seconds from `Retry-After` (sent with 503), if any. */
  retryAfter: number | undefined;
}

/**
 * Sends `data` to the node listening on `id` at `brokerUrl` (`POST /{id}`). Resolves on `204`; rejects
 * with a `FedbrokerError` on any other answer, and with `fetch`'s own error when no answer could be read.
 */
export function send(brokerUrl: string | URL, id: string | number, data: MessageData, options?: SendOptions): Promise<void>;

/**
 * Listens on `id` at `brokerUrl` (a WebSocket on `GET /{id}`), reconnecting with capped exponential
 * back-off and full jitter after network loss; not after 1003, 1008, 4000, 4001, `close()`, or once the
 * broker has refused the upgrade `maxRefusals` times in a row.
 */
export function listen(brokerUrl: string | URL, id: string | number, options?: ListenOptions): ListenHandle;
