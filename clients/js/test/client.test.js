// Tests of @fedbroker/client against the real broker binary on loopback (node --test).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';

import { FedbrokerError, listen, send } from '../fedbroker.js';
import {
  bytes,
  freePort,
  inbox,
  jwtHS256,
  pausedListener,
  sleep,
  startBroker,
  tempFile,
  until,
  within,
} from './helpers.js';

const T = { timeout: 30000 };

// Every listener a test opens, closed at the end even when a test fails (a listener that keeps
// reconnecting would keep the test process alive).
const handles = new Set();
after(() => {
  for (const h of handles) h.close();
});

/** Listens on `id` and waits for the connection to open. Returns {handle, messages, closes}. */
async function listening(url, id, opts = {}) {
  const messages = inbox();
  const closes = [];
  let opens = 0;
  let opened;
  const first = new Promise((r) => (opened = r));
  const handle = listen(url, id, {
    ...opts,
    onMessage: (d) => messages.push(d),
    onOpen: () => {
      opens++;
      opened();
    },
    onClose: (info) => closes.push(info),
  });
  handles.add(handle);
  await within(5000, `listener on ${id} opening`, Promise.race([first, handle.closed.then((i) => {
    throw new Error(`listener on ${id} stopped before opening: ${JSON.stringify(i)}`);
  })]));
  return { handle, messages, closes, opens: () => opens };
}

/** `send` must reject with a FedbrokerError; returns it. */
async function sendError(...args) {
  try {
    await send(...args);
  } catch (e) {
    assert.ok(e instanceof FedbrokerError, `expected a FedbrokerError, got ${e}`);
    assert.ok(e instanceof Error);
    return e;
  }
  assert.fail('send resolved; expected an error');
}

describe('open broker', () => {
  let b;
  before(async () => {
    b = await startBroker(['--max-message-size', '65536']);
  });
  after(() => b?.stop('SIGKILL'));

  test('bytes arrive exactly: empty, binary, text, views, Blob', T, async () => {
    const { handle, messages } = await listening(b.url, 101);
    const all = Uint8Array.from({ length: 256 }, (_, i) => i);
    const big = randomBytes(65536);
    const backing = Uint8Array.from([9, 9, 1, 2, 3, 9]);
    const cases = [
      ['empty Uint8Array', new Uint8Array(0), []],
      ['null', null, []],
      ['all 256 byte values', all, [...all]],
      ['ArrayBuffer', all.buffer, [...all]],
      ['view with an offset', backing.subarray(2, 5), [1, 2, 3]],
      ['DataView', new DataView(backing.buffer, 1, 2), [9, 1]],
      ['UTF-8 text', 'héllo ✓', [...Buffer.from('héllo ✓', 'utf8')]],
      ['empty string', '', []],
      ['Blob', new Blob([Uint8Array.of(0, 255), 'x']), [0, 255, 0x78]],
      ['64 KiB (the limit)', big, [...big]],
    ];
    for (const [, data] of cases) await send(b.url, 101, data);
    for (const [name, , want] of cases) {
      const got = bytes(await messages.next(5000, name));
      assert.deepEqual([...got], want, name);
    }
    handle.close();
    await within(5000, 'closed', handle.closed);
  });

  test('many messages keep their order', T, async () => {
    const { handle, messages } = await listening(b.url, 102);
    for (let i = 0; i < 200; i++) await send(b.url, 102, `m${i}`);
    for (let i = 0; i < 200; i++) {
      assert.equal(Buffer.from(await messages.next()).toString(), `m${i}`);
    }
    handle.close();
    await handle.closed;
  });

  test('broker URL forms: trailing slash, ws://, numeric or string id', T, async () => {
    const { handle, messages } = await listening(b.url.replace('http://', 'ws://') + '/', '103');
    await send(b.url + '/', 103, 'a');
    await send(new URL(b.url), '103', 'b');
    assert.equal(Buffer.from(await messages.next()).toString(), 'a');
    assert.equal(Buffer.from(await messages.next()).toString(), 'b');
    assert.equal(handle.url, `ws://127.0.0.1:${b.port}/103`);
    handle.close();
    await handle.closed;
  });

  test('404 with the broker text when nobody listens', T, async () => {
    const e = await sendError(b.url, 104, 'x');
    assert.equal(e.status, 404);
    assert.equal(e.message, 'no listener on id 104');
    assert.equal(e.retryAfter, undefined);
  });

  test('400 for invalid ids', T, async () => {
    for (const id of ['0', '042', '2147483648', '+4', '4a', 'abc']) {
      const e = await sendError(b.url, id, 'x');
      assert.equal(e.status, 400, `id ${id}`);
      assert.match(e.message, /^invalid id/, `id ${id}`);
    }
  });

  test('413 for a body over --max-message-size', T, async () => {
    const e = await sendError(b.url, 105, new Uint8Array(65537));
    assert.equal(e.status, 413);
    assert.equal(e.message, 'message larger than the limit of 65536 bytes');
    // The client still works afterwards (the broker closed that connection).
    await assert.rejects(send(b.url, 105, 'x'), { status: 404 });
  });

  test('an aborted send rejects with the abort reason', T, async () => {
    const ac = new AbortController();
    ac.abort();
    await assert.rejects(send(b.url, 106, 'x', { signal: ac.signal }), { name: 'AbortError' });
  });

  test('a network failure rejects with fetch\'s error, not a FedbrokerError', T, async () => {
    const port = await freePort();
    await assert.rejects(send(`http://127.0.0.1:${port}`, 1, 'x'), (e) => {
      assert.ok(!(e instanceof FedbrokerError));
      assert.equal(e.name, 'TypeError');
      return true;
    });
  });

  test('replaced (4000): the old listener stops for good, the new one receives', T, async () => {
    const first = await listening(b.url, 107);
    const second = await listening(b.url, 107);
    const info = await within(5000, 'first listener replaced', first.handle.closed);
    assert.equal(info.code, 4000);
    assert.equal(info.reason, 'replaced');
    assert.equal(info.willReconnect, false);
    assert.equal(info.opened, true);
    await sleep(1200); // a reconnect (at most minDelay) would replace the second listener
    assert.equal(first.opens(), 1);
    assert.equal(second.closes.length, 0);
    await send(b.url, 107, 'to the new one');
    assert.equal(Buffer.from(await second.messages.next()).toString(), 'to the new one');
    assert.equal(first.messages.length, 0);
    second.handle.close();
    await second.handle.closed;
  });

  test('close() closes with 1000 and stops: the id is free afterwards', T, async () => {
    const l = await listening(b.url, 108);
    assert.equal(l.handle.connected, true);
    l.handle.close();
    l.handle.close(); // idempotent
    const info = await within(5000, 'closed', l.handle.closed);
    assert.equal(info.code, 1000);
    assert.equal(info.willReconnect, false);
    assert.equal(l.handle.connected, false);
    assert.equal(l.closes.length, 1);
    await sleep(700);
    await assert.rejects(send(b.url, 108, 'x'), { status: 404 });
    assert.equal(l.opens(), 1);
  });

  test('an AbortSignal closes the listener', T, async () => {
    const ac = new AbortController();
    const l = await listening(b.url, 109, { signal: ac.signal });
    ac.abort();
    const info = await within(5000, 'closed', l.handle.closed);
    assert.equal(info.willReconnect, false);
  });

  test('a WebSocket class can be passed in', T, async () => {
    let made = 0;
    class Counting extends globalThis.WebSocket {
      constructor(...a) {
        super(...a);
        made++;
      }
    }
    const l = await listening(b.url, 110, { WebSocket: Counting });
    await send(b.url, 110, 'x');
    assert.equal(Buffer.from(await l.messages.next()).toString(), 'x');
    assert.equal(made, 1);
    l.handle.close();
    await l.handle.closed;
  });
});

test('503 with Retry-After when the listener\'s queue is full', T, async () => {
  const b = await startBroker(['--queue-limit', '1']);
  try {
    const { socket } = await pausedListener(b.port, 201);
    const chunk = new Uint8Array(1048576);
    let err;
    for (let i = 0; i < 200 && !err; i++) {
      try {
        await send(b.url, 201, chunk);
      } catch (e) {
        err = e;
      }
    }
    assert.ok(err, 'no 503 after 200 MiB to a listener that does not read');
    assert.ok(err instanceof FedbrokerError, String(err));
    assert.equal(err.status, 503);
    assert.equal(err.retryAfter, 1);
    assert.equal(err.message, 'the listener on id 201 is not keeping up; retry later');
    socket.destroy();
  } finally {
    await b.stop('SIGKILL');
  }
});

describe('tokens file', () => {
  let b;
  before(async () => {
    const file = tempFile(
      'tokens.toml',
      `[[token]]\ntoken = "listen-301"\nlisten = [301]\n\n` +
        `[[token]]\ntoken = "send+all token"\nsend = ["*"]\n`,
    );
    b = await startBroker(['--auth-tokens', file]);
  });
  after(() => b?.stop('SIGKILL'));

  test('listen with ?token=, send with Authorization: Bearer', T, async () => {
    // The send token has a space and a '+': it must survive both encodings.
    const l = await listening(b.url, 301, { token: 'listen-301' });
    await send(b.url, 301, 'secret hello', { token: 'send+all token' });
    assert.equal(Buffer.from(await l.messages.next()).toString(), 'secret hello');
    l.handle.close();
    await l.handle.closed;
  });

  test('a token function is called for every attempt', T, async () => {
    let calls = 0;
    const l = await listening(b.url, 301, {
      token: async () => {
        calls++;
        return 'listen-301';
      },
    });
    assert.equal(calls, 1);
    l.handle.close();
    await l.handle.closed;
  });

  test('401 and 403 on send carry the broker text', T, async () => {
    let e = await sendError(b.url, 301, 'x');
    assert.equal(e.status, 401);
    assert.equal(e.message, 'missing or invalid credentials');
    e = await sendError(b.url, 301, 'x', { token: 'wrong' });
    assert.equal(e.status, 401);
    e = await sendError(b.url, 301, 'x', { token: 'listen-301' });
    assert.equal(e.status, 403);
    assert.equal(e.message, 'credentials do not allow this action on this id');
  });

  for (const [what, id, token] of [
    ['401 (bad token)', 301, 'wrong'],
    ['401 (no token)', 301, undefined],
    ['403 (token not for this id)', 302, 'listen-301'],
  ]) {
    test(`a refused upgrade, ${what}, stops listen after two refusals`, T, async () => {
      const closes = [];
      let opens = 0;
      const h = listen(b.url, id, { token, onClose: (i) => closes.push(i), onOpen: () => opens++ });
      handles.add(h);
      const info = await within(8000, 'listen giving up', h.closed);
      assert.equal(opens, 0);
      assert.equal(info.opened, false);
      assert.equal(info.refused, true);
      assert.equal(info.willReconnect, false);
      assert.equal(closes.length, 2, JSON.stringify(closes));
      assert.equal(closes[0].refused, true);
      assert.equal(closes[0].willReconnect, true);
      assert.ok(closes[0].delay >= 0 && closes[0].delay <= 500, `first delay ${closes[0].delay}`);
    });
  }
});

test('an expired JWT (4001) stops listen for good', T, async () => {
  const secret = randomBytes(32).toString('hex');
  const b = await startBroker(['--auth-jwt-secret', tempFile('jwt.secret', secret)]);
  try {
    const token = jwtHS256({ listen: [401], exp: Math.floor(Date.now() / 1000) + 2 }, secret);
    const l = await listening(b.url, 401, { token });
    const info = await within(8000, 'close 4001', l.handle.closed);
    assert.equal(info.code, 4001);
    assert.equal(info.reason, 'token expired');
    assert.equal(info.willReconnect, false);
    assert.equal(l.opens(), 1);
  } finally {
    await b.stop('SIGKILL');
  }
});

test('reconnects after the broker shuts down (1001) and after it is killed (1006)', T, async () => {
  let b = await startBroker();
  const port = b.port;
  try {
    const l = await listening(b.url, 501);
    await send(b.url, 501, 'before');
    assert.equal(Buffer.from(await l.messages.next()).toString(), 'before');

    for (const [signal, code] of [
      ['SIGTERM', 1001],
      ['SIGKILL', 1006],
    ]) {
      const opensBefore = l.opens();
      const closesBefore = l.closes.length;
      await b.stop(signal);
      await until(() => l.closes.length > closesBefore, 5000, `close after ${signal}`);
      const info = l.closes[closesBefore];
      assert.equal(info.code, code, `${signal}: ${JSON.stringify(info)}`);
      assert.equal(info.opened, true);
      assert.equal(info.willReconnect, true);
      assert.ok(info.delay <= 30000);
      await sleep(300); // let an attempt or two fail while the broker is down
      b = await startBroker([], { listen: `127.0.0.1:${port}` });
      // Delivered to the same handle: it reconnected. (Polling with sends, not waiting for onOpen:
      // Node's WebSocket may make its handshake on a kept-alive connection of an earlier `send`,
      // which the old broker, while it shuts down, upgrades and closes at once with 1001.)
      await until(() => l.opens() > opensBefore, 10000, `reconnect after ${signal}`);
      const end = Date.now() + 10000;
      for (;;) {
        try {
          await send(b.url, 501, `after ${signal}`);
          break;
        } catch (e) {
          if (e.status !== 404 || Date.now() > end) {
            throw new Error(`${e.message} after reconnect; closes: ${JSON.stringify(l.closes)}`);
          }
          await sleep(50);
        }
      }
      assert.equal(Buffer.from(await l.messages.next()).toString(), `after ${signal}`);
      // Attempts made while the broker was down failed as unreachable, not as refused.
      for (const c of l.closes.slice(closesBefore + 1)) {
        assert.equal(c.refused, false, JSON.stringify(c));
        assert.equal(c.willReconnect, true);
      }
    }
    l.handle.close();
    await within(5000, 'closed', l.handle.closed);
  } finally {
    await b.stop();
  }
});

test('unreachable broker: back-off grows with full jitter; close() between attempts stops', T, async () => {
  const port = await freePort();
  const closes = [];
  const h = listen(`http://127.0.0.1:${port}`, 601, { minDelay: 50, maxDelay: 400, onClose: (i) => closes.push(i) });
  handles.add(h);
  await until(() => closes.length >= 6, 8000, 'six failed attempts');
  for (const [n, c] of closes.entries()) {
    assert.equal(c.opened, false);
    assert.equal(c.refused, false);
    assert.equal(c.willReconnect, true);
    assert.ok(c.delay >= 0 && c.delay <= Math.min(400, 50 * 2 ** n), `attempt ${n}: delay ${c.delay}`);
  }
  h.close();
  const last = await within(3000, 'closed', h.closed);
  assert.equal(last.willReconnect, false);
  const count = closes.length;
  await sleep(800); // more than maxDelay
  assert.equal(closes.length, count, 'an attempt was made after close()');
});

test('without a WebSocket class, listen says what to do', T, () => {
  const probe = spawnSync(process.execPath, ['-e', 'process.exit(typeof WebSocket === "function" ? 0 : 1)']);
  if (probe.status === 0) return; // this Node has a global WebSocket without flags (Node >= 22)
  const r = spawnSync(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      `import {listen} from ${JSON.stringify(new URL('../fedbroker.js', import.meta.url).href)};
       try { listen('http://127.0.0.1:1', 1); } catch (e) { console.log(e.name + ': ' + e.message); }`,
    ],
    { encoding: 'utf8', timeout: 10000 },
  );
  assert.match(r.stdout, /^TypeError: .*--experimental-websocket/);
});
