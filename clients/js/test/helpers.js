// Test helpers: start a real broker binary on loopback, bounded waits, a paused raw listener.
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
/** The broker binary: $FEDBROKER_BIN, else the workspace's debug build of fedbroker-tokio. */
export const BIN = process.env.FEDBROKER_BIN ?? path.resolve(here, '../../../target/debug/fedbroker-tokio');

/** Rejects with `what` timed out unless `promise` settles within `ms`. */
export function within(ms, what, promise) {
  let t;
  const timeout = new Promise((_, reject) => {
    t = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(t));
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A fresh temporary directory. */
export function tempDir() {
  return mkdtempSync(path.join(tmpdir(), 'fedbroker-js-'));
}

/** Writes `text` to a new file in a fresh temporary directory and returns its path. */
export function tempFile(name, text) {
  const file = path.join(tempDir(), name);
  writeFileSync(file, text, { mode: 0o600 });
  return file;
}

/**
 * Starts the broker with `args` (default listen address 127.0.0.1:0) and waits for its
 * `listening on` line. Returns {url, port, proc, stop(signal), exited, stderr()}.
 */
export async function startBroker(args = [], { listen = '127.0.0.1:0' } = {}) {
  const logLevel = args.includes('--log-level') ? [] : ['--log-level', 'warn'];
  const proc = spawn(BIN, ['--listen', listen, ...logLevel, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  proc.stderr.setEncoding('utf8').on('data', (d) => (stderr += d));
  const exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
  let out = '';
  const url = await within(
    10000,
    `broker ${BIN} printing "listening on" (stderr: ${stderr})`,
    new Promise((resolve, reject) => {
      proc.once('error', reject);
      exited.then(({ code, signal }) => reject(new Error(`broker exited (${code ?? signal}) before listening: ${stderr}`)));
      proc.stdout.setEncoding('utf8').on('data', (d) => {
        out += d;
        const m = /listening on (http:\/\/\S+)/.exec(out);
        if (m) resolve(m[1]);
      });
    }),
  ).catch((e) => {
    proc.kill('SIGKILL');
    throw e;
  });
  const port = Number(new URL(url).port);
  return {
    url,
    port,
    proc,
    exited,
    stderr: () => stderr,
    /** Sends `signal` and waits (bounded) for the process to exit. */
    async stop(signal = 'SIGTERM') {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill(signal);
      try {
        await within(8000, 'broker exiting', exited);
      } catch (e) {
        proc.kill('SIGKILL');
        throw e;
      }
    },
  };
}

/** A queue of received messages (as Uint8Array) with a bounded `next()`. */
export function inbox() {
  const items = [];
  const waiters = [];
  return {
    /** @param {ArrayBuffer} data */
    push(data) {
      const w = waiters.shift();
      if (w) w(data);
      else items.push(data);
    },
    next(ms = 5000, what = 'a message') {
      if (items.length) return Promise.resolve(items.shift());
      return within(ms, what, new Promise((r) => waiters.push(r)));
    },
    get length() {
      return items.length;
    },
  };
}

/** Resolves when `predicate()` is true, polling; rejects after `ms`. */
export async function until(predicate, ms, what) {
  const end = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms: ${what}`);
    await sleep(20);
  }
}

/** A port that nothing listens on (bound once, then released). */
export async function freePort() {
  const srv = net.createServer();
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  const { port } = srv.address();
  await new Promise((r) => srv.close(r));
  return port;
}

/**
 * A listener that completes the WebSocket upgrade on raw TCP, then stops reading, so the broker's
 * queue for `id` fills up. Returns {socket}.
 */
export async function pausedListener(port, id) {
  const socket = net.connect(port, '127.0.0.1');
  await within(
    5000,
    'raw WebSocket upgrade',
    new Promise((resolve, reject) => {
      let head = '';
      socket.once('error', reject);
      socket.on('connect', () =>
        socket.write(
          `GET /${id} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
            'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n',
        ),
      );
      const onData = (d) => {
        head += d.toString('latin1');
        if (head.includes('\r\n\r\n')) {
          socket.off('data', onData);
          socket.pause();
          if (head.startsWith('HTTP/1.1 101')) resolve();
          else reject(new Error(`upgrade refused: ${head.split('\r\n')[0]}`));
        }
      };
      socket.on('data', onData);
    }),
  );
  return { socket };
}

/** An HS256 JWT with `claims`, signed with `secret`. */
export function jwtHS256(claims, secret) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const input = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${input}.${createHmac('sha256', secret).update(input).digest('base64url')}`;
}

/** Uint8Array of an ArrayBuffer, for comparisons. */
export const bytes = (buf) => {
  if (!(buf instanceof ArrayBuffer)) throw new Error(`expected an ArrayBuffer, got ${Object.prototype.toString.call(buf)}`);
  return new Uint8Array(buf);
};

/**
 * A loopback TCP proxy to `port`, to cut connections the way a network does (no Close frame): `cut()`
 * destroys every connection through it; `pause()`/`resume()` stop and restart reading from the
 * broker (its socket buffers then fill, as with a slow reader). Returns {url, port, cut, pause, resume,
 * connections(), close()}.
 */
export async function tcpProxy(port) {
  const pairs = new Set();
  let paused = false;
  const srv = net.createServer((client) => {
    const upstream = net.connect(port, '127.0.0.1');
    const pair = { client, upstream };
    pairs.add(pair);
    const drop = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
    client.pipe(upstream);
    upstream.pipe(client);
    if (paused) upstream.pause();
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  const p = srv.address().port;
  return {
    url: `http://127.0.0.1:${p}`,
    port: p,
    connections: () => pairs.size,
    cut() {
      for (const { client, upstream } of [...pairs]) {
        client.resetAndDestroy?.() ?? client.destroy();
        upstream.resetAndDestroy?.() ?? upstream.destroy();
      }
      pairs.clear();
    },
    pause() {
      paused = true;
      for (const { upstream } of pairs) {
        upstream.unpipe();
        upstream.pause();
      }
    },
    resume() {
      paused = false;
      for (const { client, upstream } of pairs) {
        upstream.pipe(client);
        upstream.resume();
      }
    },
    close() {
      this.cut();
      return new Promise((r) => srv.close(r));
    },
  };
}

/**
 * The `ws` package's WebSocket class, if it can be loaded (from $FEDBROKER_JS_WS, a path to ws's
 * wrapper.mjs or a directory holding node_modules/ws, else a plain `import('ws')`); else undefined.
 */
export async function wsPackage() {
  const where = process.env.FEDBROKER_JS_WS;
  const candidates = where
    ? [where.endsWith('.mjs') || where.endsWith('.js') ? where : path.join(where, 'node_modules/ws/wrapper.mjs')]
    : ['ws'];
  for (const c of candidates) {
    try {
      const m = await import(c.startsWith('/') ? pathToFileURL(c).href : c);
      return m.WebSocket ?? m.default;
    } catch {
      // not installed
    }
  }
  return undefined;
}
