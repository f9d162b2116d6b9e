// Tests of mailboxes and replay in @fedbroker/client (docs/mailbox.md), against the real broker binary on
// loopback (node --test): 202 and Fedbroker-Seq on send, 507, listen with `since`, `resume` across cut
// connections, gaps, a reset mailbox (409), and with the `ws` package (when it can be loaded) what a
// WebSocket that shows HTTP statuses adds: plain listeners with seqs, 409 and 410 seen as such.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { FedbrokerError, listen, send } from '../fedbroker.js';
import { inbox, startBroker, tcpProxy, tempFile, until, within, wsPackage } from './helpers.js';

const T = { timeout: 30000 };
const text = (buf) => Buffer.from(buf).toString();

const handles = new Set();
after(() => {
  for (const h of handles) h.close();
});

/**
 * Listens on `id` and waits for the connection to open (unless `wait: false`). Returns {handle, messages
 * (inbox of {text, seq, meta}), all (every message so far), gaps, resets, closes, opens()}.
 */
async function listening(url, id, opts = {}, { wait = true } = {}) {
  const messages = inbox();
  const all = [];
  const gaps = inbox();
  const resets = [];
  const closes = [];
  let opens = 0;
  let opened;
  const first = new Promise((r) => (opened = r));
  const handle = listen(url, id, {
    ...opts,
    onMessage: (data, meta) => {
      const m = { text: text(data), seq: meta?.seq, meta };
      all.push(m);
      messages.push(m);
    },
    onGap: (g) => gaps.push(g),
    onReset: (r) => resets.push(r),
    onOpen: () => {
      opens++;
      opened();
    },
    onClose: (info) => closes.push(info),
  });
  handles.add(handle);
  if (wait) {
    await within(
      8000,
      `listener on ${id} opening`,
      Promise.race([
        first,
        handle.closed.then((i) => {
          throw new Error(`listener on ${id} stopped before opening: ${JSON.stringify(i)}`);
        }),
      ]),
    );
  }
  return { handle, messages, all, gaps, resets, closes, opens: () => opens };
}

async function stop(l) {
  l.handle.close();
  await within(5000, 'listener closing', l.handle.closed);
}

/** Sends `count` messages `${prefix}${i}` to `id`; returns the results. */
async function sendMany(url, id, prefix, count) {
  const out = [];
  for (let i = 0; i < count; i++) out.push(await send(url, id, `${prefix}${i}`));
  return out;
}

/**
 * Sends `count` messages while `listener` (through `proxy`) keeps being cut off, then checks that every
 * message arrived exactly once, in order, with consecutive seqs.
 */
async function survivesCuts(b, proxy, l, id, count, cutsAt) {
  let cuts = 0;
  for (let i = 0; i < count; i++) {
    if (cutsAt.includes(i)) {
      // Cut only a connection that is open (else there would be nothing to cut).
      await until(() => l.handle.connected && proxy.connections() > 0, 8000, `listener connected before cut ${cuts + 1}`);
      proxy.cut();
      cuts++;
    }
    const r = await send(b.url, id, `m${i}`);
    assert.ok(r.status === 202 || r.status === 204, `send ${i}: ${r.status}`);
    assert.equal(r.seq, i + 1);
  }
  await send(b.url, id, 'end');
  const got = [];
  for (;;) {
    const m = await l.messages.next(15000, `message ${got.length} of ${count} (got ${got.length})`);
    got.push(m);
    if (m.text === 'end') break;
  }
  assert.deepEqual(
    got.map((m) => m.text),
    [...Array.from({ length: count }, (_, i) => `m${i}`), 'end'],
    'every message exactly once, in order',
  );
  assert.deepEqual(
    got.map((m) => m.seq),
    Array.from({ length: count + 1 }, (_, i) => i + 1),
  );
  assert.equal(l.handle.lastSeq, count + 1);
  assert.ok(l.opens() >= cuts + 1, `reconnected after each of the ${cuts} cuts (opens: ${l.opens()})`);
  for (const c of l.closes) assert.equal(c.willReconnect, true, JSON.stringify(c));
  assert.equal(l.gaps.length, 0);
  assert.equal(l.resets.length, 0);
}

describe('mailbox broker (--mailbox 1-1000)', () => {
  let b;
  before(async () => {
    b = await startBroker(['--mailbox', '1-1000']);
  });
  after(() => b?.stop('SIGKILL'));

  test('send: 202 and seq when kept, 204 and seq when delivered live, seq in multi-target results', T, async () => {
    assert.deepEqual(await send(b.url, 1, 'kept'), { status: 202, seq: 1, results: [{ id: 1, status: 202, seq: 1 }] });
    assert.deepEqual(await send(b.url, 1, 'kept too'), { status: 202, seq: 2, results: [{ id: 1, status: 202, seq: 2 }] });
    const l = await listening(b.url, 1, { envelope: false });
    assert.deepEqual(await send(b.url, 1, 'live'), { status: 204, seq: 3, results: [{ id: 1, status: 204, seq: 3 }] });
    assert.equal((await l.messages.next()).text, 'live');
    // Several ids: kept for one (202) and not for an id without a mailbox (404): 207, seq per id.
    const r = await send(b.url, [1, 2, 2000], 'several');
    assert.equal(r.status, 207);
    assert.deepEqual(r.results, [
      { id: 1, status: 204, seq: 4 },
      { id: 2, status: 202, seq: 1 },
      { id: 2000, status: 404, error: 'no listener on id 2000' },
    ]);
    // An id without a mailbox is unchanged: 204 without seq, 404 when nobody listens.
    await assert.rejects(send(b.url, 2001, 'x'), { status: 404 });
    await stop(l);
  });

  test('since: 0 gets every kept message with its seq, then live ones; lastSeq follows', T, async () => {
    await sendMany(b.url, 10, 'k', 3);
    const l = await listening(b.url, 10, { since: 0 });
    for (let i = 0; i < 3; i++) {
      const m = await l.messages.next();
      assert.equal(m.text, `k${i}`);
      assert.equal(m.seq, i + 1);
      assert.equal(m.meta.id, 10);
    }
    assert.match(l.handle.url, /\/10$/, 'url without since');
    const r = await send(b.url, 10, 'live');
    assert.equal(r.status, 204);
    const m = await l.messages.next();
    assert.deepEqual([m.text, m.seq], ['live', 4]);
    assert.equal(l.handle.lastSeq, 4);
    await stop(l);

    // since: 2 starts after seq 2.
    const l2 = await listening(b.url, 10, { since: 2 });
    assert.deepEqual(
      [await l2.messages.next(), await l2.messages.next()].map((x) => [x.text, x.seq]),
      [
        ['k2', 3],
        ['live', 4],
      ],
    );
    await stop(l2);
  });

  test('since and resume are checked', T, () => {
    for (const since of [-1, 1.5, '3', NaN]) {
      assert.throws(() => listen(b.url, 11, { since }), RangeError, String(since));
    }
    // A plain listener cannot learn its seqs through a WebSocket that hides the 101's headers.
    assert.throws(() => listen(b.url, 11, { resume: true, envelope: false }), /envelope/);
    assert.throws(() => listen(b.url, 11, { since: 0, envelope: false }), /envelope/);
  });

  test('resume: every message exactly once, in order, across cut connections', T, async () => {
    const proxy = await tcpProxy(b.port);
    try {
      const l = await listening(proxy.url, 20, { resume: true, minDelay: 5, maxDelay: 40 });
      await survivesCuts(b, proxy, l, 20, 300, [40, 100, 101, 180, 250]);
      await stop(l);
    } finally {
      await proxy.close();
    }
  });

  test('resume: messages sent before the first message came are not lost either', T, async () => {
    // The first connection listens from "now" (no since): cut before anything arrived, the client knows
    // no seq yet and asks for everything kept (since=0) — there is nothing older on this id.
    const proxy = await tcpProxy(b.port);
    try {
      const l = await listening(proxy.url, 21, { resume: true, minDelay: 5, maxDelay: 40 });
      await survivesCuts(b, proxy, l, 21, 20, [0, 10]);
      await stop(l);
    } finally {
      await proxy.close();
    }
  });

  test('since ahead of the mailbox (409, a reset): inferred without HTTP statuses, starts again from 0', T, async () => {
    await sendMany(b.url, 30, 'r', 2);
    const l = await listening(b.url, 30, { since: 100, resume: true, minDelay: 5, maxDelay: 40 });
    assert.deepEqual(l.resets, [{ since: 100, last: undefined, certain: false }]);
    // since=100 refused twice (maxRefusals), then since=0 opened.
    assert.equal(l.closes.length, 2, JSON.stringify(l.closes));
    for (const c of l.closes) {
      assert.equal(c.refused, true);
      assert.equal(c.willReconnect, true);
    }
    assert.deepEqual(
      [await l.messages.next(), await l.messages.next()].map((x) => [x.text, x.seq]),
      [
        ['r0', 1],
        ['r1', 2],
      ],
    );
    assert.equal(l.handle.lastSeq, 2);
    await stop(l);
  });
});

test('a broker without --store restarts: the resume listener is told (onReset) and starts again from 0', T, async () => {
  let b = await startBroker(['--mailbox', '1-1000']);
  const port = b.port;
  try {
    const l = await listening(b.url, 35, { resume: true, minDelay: 5, maxDelay: 100 });
    await sendMany(b.url, 35, 'old', 3);
    for (let i = 0; i < 3; i++) assert.equal((await l.messages.next()).seq, i + 1);
    await b.stop('SIGKILL');
    b = await startBroker(['--mailbox', '1-1000'], { listen: `127.0.0.1:${port}` });
    // Kept (202) or delivered (204): either way seq 1 of the new run, below the listener's since=3.
    assert.equal((await send(b.url, 35, 'new')).seq, 1);
    const m = await l.messages.next(10000, 'the message after the restart');
    assert.deepEqual([m.text, m.seq], ['new', 1]);
    assert.deepEqual(l.resets, [{ since: 3, last: undefined, certain: false }]);
    assert.equal(l.handle.lastSeq, 1);
    await stop(l);
  } finally {
    await b.stop('SIGKILL');
  }
});

test('a gap goes to onGap, then the messages after it', T, async () => {
  const b = await startBroker(['--mailbox', '1-1000', '--mailbox-messages', '3']);
  try {
    await sendMany(b.url, 40, 'g', 5);
    const l = await listening(b.url, 40, { since: 0 });
    assert.deepEqual(await l.gaps.next(5000, 'the gap'), { id: 40, from: 1, to: 2 });
    for (let i = 2; i < 5; i++) {
      const m = await l.messages.next();
      assert.deepEqual([m.text, m.seq], [`g${i}`, i + 1]);
    }
    assert.equal(l.handle.lastSeq, 5);
    await send(b.url, 40, 'after');
    assert.deepEqual((await l.messages.next()).seq, 6);
    assert.equal(l.gaps.length, 0);
    await stop(l);
  } finally {
    await b.stop('SIGKILL');
  }
});

test('a gap while connected (the listener reads too slowly, drop-oldest): onGap, and it keeps going', T, async () => {
  const b = await startBroker(['--mailbox', '1-1000', '--mailbox-messages', '4', '--max-message-size', '65536']);
  const proxy = await tcpProxy(b.port);
  try {
    const l = await listening(proxy.url, 41, { resume: true });
    proxy.pause(); // stop reading: the broker's writes pile up in the socket buffers, then in the mailbox
    const big = new Uint8Array(60000);
    let n = 0;
    // Enough to fill the socket buffers and push unread messages out of a 4-message mailbox.
    for (; n < 400; n++) await send(b.url, 41, big);
    await send(b.url, 41, 'last');
    proxy.resume();
    const gap = await l.gaps.next(15000, 'a gap event');
    assert.ok(gap.from >= 1 && gap.to >= gap.from && gap.to < 401, JSON.stringify(gap));
    // Everything that was not in the gap arrives, in order, up to 'last'.
    let prev;
    for (;;) {
      const m = await l.messages.next(15000, 'messages after the gap');
      if (prev !== undefined) assert.ok(m.seq > prev, 'in order');
      prev = m.seq;
      if (m.text === 'last') break;
    }
    assert.equal(prev, 401);
    assert.equal(l.closes.length, 0, JSON.stringify(l.closes));
    await stop(l);
  } finally {
    await proxy.close();
    await b.stop('SIGKILL');
  }
});

test('507 with Retry-After when the mailbox is full (--mailbox-full refuse)', T, async () => {
  const b = await startBroker(['--mailbox', '1-1000', '--mailbox-messages', '2', '--mailbox-full', 'refuse']);
  try {
    await sendMany(b.url, 50, 'f', 2);
    let err;
    try {
      await send(b.url, 50, 'one too many');
    } catch (e) {
      err = e;
    }
    assert.ok(err instanceof FedbrokerError, String(err));
    assert.equal(err.status, 507);
    assert.equal(err.retryAfter, 1);
    assert.equal(err.message, 'the mailbox of id 50 is full; retry later');
    // Once a listener has read them, they make room again.
    const l = await listening(b.url, 50, { since: 0 });
    await l.messages.next();
    await l.messages.next();
    assert.equal((await send(b.url, 50, 'room again')).status, 204);
    assert.equal((await l.messages.next()).seq, 3);
    await stop(l);
  } finally {
    await b.stop('SIGKILL');
  }
});

test('a refused token with since is a refusal, not a reset: listen stops, onReset is not called', T, async () => {
  const file = tempFile('tokens.toml', `[[token]]\ntoken = "l60"\nlisten = [60]\n\n[[token]]\ntoken = "s"\nsend = ["*"]\n`);
  const b = await startBroker(['--mailbox', '1-1000', '--auth-tokens', file]);
  try {
    await send(b.url, 60, 'x', { token: 's' });
    const l = await listening(b.url, 60, { since: 1, resume: true, token: 'wrong', minDelay: 5 }, { wait: false });
    const info = await within(8000, 'listen giving up', l.handle.closed);
    assert.equal(info.refused, true);
    assert.equal(info.willReconnect, false);
    assert.equal(l.opens(), 0);
    assert.deepEqual(l.resets, []);
    // since=1 twice, then the reset check with since=0, refused as well.
    assert.equal(l.closes.length, 3, JSON.stringify(l.closes));
    // Its token works: since=1 goes on after seq 1.
    await send(b.url, 60, 'y', { token: 's' });
    const ok = await listening(b.url, 60, { since: 1, token: 'l60' });
    assert.deepEqual([(await ok.messages.next()).seq], [2]);
    await stop(ok);
  } finally {
    await b.stop('SIGKILL');
  }
});

describe('with the ws package (HTTP statuses and the 101 visible)', async () => {
  const WebSocket = await wsPackage();
  if (!WebSocket && process.env.CI === 'true') {
    throw new Error('CI=true: the ws package must load (FEDBROKER_JS_WS), these tests must not be skipped');
  }
  const skip = WebSocket ? false : 'the ws package is not installed (set FEDBROKER_JS_WS to its directory)';
  let b;
  before(async () => {
    if (!skip) b = await startBroker(['--mailbox', '1-1000', '--mailbox-messages', '3']);
  });
  after(() => b?.stop('SIGKILL'));

  test('a plain listener counts seqs from the 101 and resumes across cut connections', { ...T, skip }, async () => {
    const proxy = await tcpProxy(b.port);
    try {
      // --mailbox-messages 3 on this broker: while the listener is away at most 3 messages are sent.
      const l = await listening(proxy.url, 70, { resume: true, envelope: false, WebSocket, minDelay: 5, maxDelay: 40 });
      assert.equal(l.handle.lastSeq, 0, 'from the 101: nothing sent yet');
      let cuts = 0;
      for (let i = 0; i < 60; i++) {
        if (i % 15 === 5) {
          // Cut once everything sent is read, then send 3 while away: the mailbox keeps them all.
          await until(() => l.all.length === i, 8000, `messages up to ${i} delivered`);
          await until(() => l.handle.connected && proxy.connections() > 0, 8000, 'connected before a cut');
          proxy.cut();
          cuts++;
        }
        await send(b.url, 70, `p${i}`);
        if (i % 15 === 7) await until(() => l.all.length === i + 1, 8000, `message ${i} delivered`);
      }
      await until(() => l.all.length >= 60, 8000, 'all 60 messages');
      assert.deepEqual(
        l.all.map((m) => [m.text, m.seq]),
        Array.from({ length: 60 }, (_, i) => [`p${i}`, i + 1]),
      );
      assert.equal(l.all[0].meta.header.type, 'message');
      assert.ok(l.opens() > cuts);
      await stop(l);
    } finally {
      await proxy.close();
    }
  });

  test('410 (plain, messages gone) goes to onGap, then the rest', { ...T, skip }, async () => {
    await sendMany(b.url, 71, 'z', 5);
    const l = await listening(b.url, 71, { since: 0, envelope: false, WebSocket, minDelay: 5 });
    assert.deepEqual(await l.gaps.next(), { id: 71, from: 1, to: 2 });
    assert.equal(l.closes[0].status, 410);
    assert.match(l.closes[0].reason, /no longer kept/);
    for (let i = 2; i < 5; i++) {
      const m = await l.messages.next();
      assert.deepEqual([m.text, m.seq], [`z${i}`, i + 1]);
    }
    await stop(l);
  });

  test('409 (a reset) is seen as such: onReset with the broker\'s last seq', { ...T, skip }, async () => {
    await sendMany(b.url, 72, 'q', 2);
    for (const envelope of [true, false]) {
      const l = await listening(b.url, 72, { since: 50, resume: true, envelope, WebSocket, minDelay: 5 });
      assert.deepEqual(l.resets, [{ since: 50, last: 2, certain: true }]);
      assert.equal(l.closes[0].status, 409);
      assert.equal(l.closes[0].delay, 0);
      assert.deepEqual((await l.messages.next()).seq, 1);
      assert.deepEqual((await l.messages.next()).seq, 2);
      await stop(l);
    }
  });

  test('a refusal with a status stops; 400 for an id without a mailbox says why', { ...T, skip }, async () => {
    const l = await listening(b.url, 2000, { since: 0, WebSocket, minDelay: 5 }, { wait: false });
    const info = await within(8000, 'listen giving up', l.handle.closed);
    assert.equal(info.status, 400);
    assert.equal(info.refused, true);
    assert.match(info.reason, /keeps no mailbox/);
    assert.equal(info.willReconnect, false);
    assert.equal(l.closes.length, 2);
  });
});
