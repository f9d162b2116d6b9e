// Tests of the patterns of docs/patterns.md in @fedbroker/client, against the real broker binary on
// loopback (node --test): the fedbroker.v1 envelope, request-reply, presence, multi-target send, topics.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';

import {
  FedbrokerClosedError,
  FedbrokerError,
  MAX_HEADER_LENGTH,
  SUBPROTOCOL,
  decodeEnvelope,
  encodeEnvelope,
  listen,
  request,
  send,
} from '../fedbroker.js';
import { bytes, inbox, pausedListener, sleep, startBroker, tempFile, until, within } from './helpers.js';

const T = { timeout: 30000 };
const TOPICS = '1000000-1999999';
const text = (buf) => Buffer.from(buf).toString();
/** The broker's own sentence in an answer body (it ends with a line feed). */
const said = (r) => text(r.body).trimEnd();

const handles = new Set();
after(() => {
  for (const h of handles) h.close();
});

/**
 * Listens on `id` (with the envelope unless `envelope: false`) and waits for the connection to open.
 * Returns {handle, messages (inbox of {data, meta, text}), presence (inbox of {id, online}), closes, opens()}.
 */
async function listening(url, id, opts = {}) {
  const messages = inbox();
  const presence = inbox();
  const closes = [];
  let opens = 0;
  let opened;
  const first = new Promise((r) => (opened = r));
  const handle = listen(url, id, {
    envelope: true,
    ...opts,
    onMessage: (data, meta) => messages.push({ data, meta, text: text(data) }),
    onPresence: (id, online) => presence.push({ id, online }),
    onOpen: () => {
      opens++;
      opened();
      opts.onOpen?.();
    },
    onClose: (info) => closes.push(info),
  });
  handles.add(handle);
  await within(
    5000,
    `listener on ${id} opening`,
    Promise.race([
      first,
      handle.closed.then((i) => {
        throw new Error(`listener on ${id} stopped before opening: ${JSON.stringify(i)}`);
      }),
    ]),
  );
  return { handle, messages, presence, closes, opens: () => opens };
}

async function stop(l) {
  l.handle.close();
  await within(5000, 'listener closing', l.handle.closed);
}

/** `promise` must reject with a FedbrokerError; returns it. */
async function brokerError(promise) {
  try {
    await promise;
  } catch (e) {
    assert.ok(e instanceof FedbrokerError, `expected a FedbrokerError, got ${e?.stack ?? e}`);
    return e;
  }
  assert.fail('resolved; expected a FedbrokerError');
}

/** No further item arrives in `box` within `ms`. */
async function nothingMore(box, ms, what) {
  await sleep(ms);
  assert.equal(box.length, 0, `unexpected ${what}`);
}

test('encodeEnvelope / decodeEnvelope: u16 big-endian length | JSON header | payload', () => {
  const payload = Uint8Array.from({ length: 256 }, (_, i) => i);
  const frame = encodeEnvelope({ type: 'send', to: 7, ref: 'é' }, payload);
  const h = Buffer.from(JSON.stringify({ type: 'send', to: 7, ref: 'é' }));
  assert.equal((frame[0] << 8) | frame[1], h.length);
  assert.deepEqual(Buffer.from(frame.subarray(2, 2 + h.length)), h);
  assert.deepEqual([...frame.subarray(2 + h.length)], [...payload]);
  const back = decodeEnvelope(frame);
  assert.deepEqual(back.header, { type: 'send', to: 7, ref: 'é' });
  assert.deepEqual([...bytes(back.payload)], [...payload]);
  // An ArrayBuffer, and a view with an offset, decode alike; an empty payload is an empty ArrayBuffer.
  const empty = encodeEnvelope({ type: 'watch', ids: [1] });
  assert.equal(decodeEnvelope(empty.slice().buffer).payload.byteLength, 0);
  const padded = new Uint8Array(empty.length + 3);
  padded.set(empty, 3);
  assert.deepEqual(decodeEnvelope(padded.subarray(3)).header, { type: 'watch', ids: [1] });
  // Header limits.
  assert.throws(() => encodeEnvelope({ k: 'x'.repeat(MAX_HEADER_LENGTH) }), RangeError);
  for (const bad of [
    new Uint8Array(0),
    Uint8Array.of(0),
    Uint8Array.of(0, 1, 0x7b),
    Uint8Array.of(0, 9, 0x7b, 0x7d),
    Uint8Array.of(0, 2, 0x5b, 0x5d), // [] is not an object
    Uint8Array.of(0, 4, 0x6e, 0x75, 0x6c, 0x6c), // null
    Uint8Array.of(0, 2, 0xff, 0xfe), // not UTF-8
    Uint8Array.of(0x40, 0x01, ...new Uint8Array(16385)), // longer than 16384
  ]) {
    assert.throws(() => decodeEnvelope(bad), TypeError, `[${[...bad.subarray(0, 6)]}]`);
  }
  assert.equal(SUBPROTOCOL, 'fedbroker.v1');
});

describe('envelope, request-reply, presence, multi-target (open broker, topics)', () => {
  let b;
  before(async () => {
    b = await startBroker(['--topics', TOPICS, '--max-message-size', '65536']);
  });
  after(() => b?.stop('SIGKILL'));

  test('an envelope listener gets seq, id and the exact bytes of each message', T, async () => {
    const l = await listening(b.url, 1101);
    assert.equal(l.handle.url, `ws://127.0.0.1:${b.port}/1101`);
    const all = Uint8Array.from({ length: 256 }, (_, i) => i);
    const bodies = [new Uint8Array(0), all, 'héllo ✓', randomBytes(65536 - 200), null];
    for (const body of bodies) await send(b.url, 1101, body);
    for (const [n, body] of bodies.entries()) {
      const m = await l.messages.next(5000, `message ${n + 1}`);
      assert.equal(m.meta.seq, n + 1);
      assert.equal(m.meta.id, 1101);
      assert.equal(m.meta.from, undefined, 'a POST has no sender id');
      assert.equal(m.meta.header.type, 'message');
      const want = body == null ? [] : typeof body === 'string' ? [...Buffer.from(body)] : [...body];
      assert.deepEqual([...bytes(m.data)], want, `message ${n + 1}`);
    }
    await stop(l);
  });

  test('send over the envelope: ack per message matched by ref, from, errors', T, async () => {
    const a = await listening(b.url, 1102);
    const c = await listening(b.url, 1103);
    assert.deepEqual(await a.handle.send(1103, 'hi'), { status: 204 });
    const m = await c.messages.next();
    assert.equal(m.text, 'hi');
    assert.equal(m.meta.from, 1102);
    assert.equal(m.meta.id, 1103);

    // Many at once, alternating between a listened id and a free one: every promise gets its own answer.
    const outcomes = await Promise.allSettled(
      Array.from({ length: 60 }, (_, i) => a.handle.send(i % 2 ? '1198' : 1103, `n${i}`)),
    );
    for (const [i, o] of outcomes.entries()) {
      if (i % 2) {
        assert.equal(o.status, 'rejected', `send ${i}`);
        assert.ok(o.reason instanceof FedbrokerError, String(o.reason));
        assert.equal(o.reason.status, 404);
        assert.equal(o.reason.message, 'no listener on id 1198');
      } else {
        assert.deepEqual(o, { status: 'fulfilled', value: { status: 204 } }, `send ${i}`);
      }
    }
    for (let i = 0; i < 60; i += 2) assert.equal((await c.messages.next()).text, `n${i}`, 'in the order sent');

    // Every body type, Blob included, keeps its place in the order.
    const blob = new Blob([Uint8Array.of(0, 255), 'x']);
    await Promise.all([
      a.handle.send(1103, blob),
      a.handle.send(1103, Uint8Array.of(1, 2, 3).subarray(1)),
      a.handle.send(1103, new Uint8Array(0)),
    ]);
    assert.deepEqual([...bytes((await c.messages.next()).data)], [0, 255, 0x78]);
    assert.deepEqual([...bytes((await c.messages.next()).data)], [2, 3]);
    assert.deepEqual([...bytes((await c.messages.next()).data)], []);

    // An invalid target is the broker's to judge (400), and the connection stays usable.
    const e = await brokerError(a.handle.send('042', 'x'));
    assert.equal(e.status, 400);
    assert.deepEqual(await a.handle.send(1103, 'still open'), { status: 204 });
    assert.equal((await c.messages.next()).text, 'still open');
    assert.equal(a.closes.length, 0);
    await stop(a);
    await stop(c);
  });

  test('envelope sends reach a plain listener as plain bytes; a plain handle cannot send', T, async () => {
    const a = await listening(b.url, 1104);
    const plain = await listening(b.url, 1105, { envelope: false });
    await a.handle.send(1105, Uint8Array.of(0, 2, 0x7b, 0x7d)); // looks like an envelope: delivered as is
    const m = await plain.messages.next();
    assert.deepEqual([...bytes(m.data)], [0, 2, 0x7b, 0x7d]);
    assert.equal(m.meta, undefined);
    await assert.rejects(plain.handle.send(1104, 'x'), TypeError);
    await assert.rejects(plain.handle.watch([1104]), TypeError);
    await assert.rejects(plain.handle.reply(1, 200, 'x'), TypeError);
    await stop(a);
    await stop(plain);
  });

  test('a message in flight when the connection closes rejects with FedbrokerClosedError', T, async () => {
    const a = await listening(b.url, 1106);
    const pending = a.handle.send(1106, 'x');
    a.handle.close();
    await assert.rejects(pending, (e) => {
      assert.ok(e instanceof FedbrokerClosedError, String(e));
      assert.equal(e.code, 1000);
      return true;
    });
    await a.handle.closed;
    await assert.rejects(a.handle.send(1106, 'x'), FedbrokerClosedError);
    await assert.rejects(a.handle.watch(1106), FedbrokerClosedError);
  });

  test('replaced (4000) and reconnection work as for a plain listener', T, async () => {
    const first = await listening(b.url, 1107);
    const second = await listening(b.url, 1107);
    const info = await within(5000, 'first replaced', first.handle.closed);
    assert.equal(info.code, 4000);
    await send(b.url, 1107, 'to the second');
    const m = await second.messages.next();
    assert.equal(m.text, 'to the second');
    await stop(second);
  });

  describe('request-reply', () => {
    test('request → onRequest → reply: status, body and content type come back', T, async () => {
      const seen = [];
      const l = await listening(b.url, 1201, {
        onRequest: (req) => {
          seen.push(req);
          return { status: 201, body: Buffer.from(bytes(req.body)).reverse(), contentType: 'application/x-test' };
        },
      });
      await send(b.url, 1201, 'first a message'); // seq 1: requests share the count
      const body = Uint8Array.from({ length: 256 }, (_, i) => i);
      const r = await request(b.url, 1201, body, { timeoutMs: 2500 });
      assert.equal(r.status, 201);
      assert.equal(r.contentType, 'application/x-test');
      assert.deepEqual([...bytes(r.body)], [...body].reverse());
      assert.equal(r.retryAfter, undefined);
      assert.equal(seen.length, 1);
      assert.equal(seen[0].seq, 2);
      assert.equal(seen[0].id, 1201);
      assert.equal(seen[0].timeoutMs, 2500);
      assert.equal(seen[0].header.type, 'request');
      assert.equal((await l.messages.next()).meta.seq, 1);
      assert.equal(l.messages.length, 0, 'a request is not a message');
      await stop(l);
    });

    test('what a handler may return, and default content types', T, async () => {
      const errors = [];
      const l = await listening(b.url, 1202, {
        onError: (e) => errors.push(e),
        onRequest: async (req) => {
          const ask = text(req.body);
          if (ask === 'string') return 'plain text ✓';
          if (ask === 'bytes') return Uint8Array.of(1, 2, 3);
          if (ask === 'blob') return new Blob(['<p>hi</p>'], { type: 'text/html' });
          if (ask === 'empty') return { status: 204 };
          if (ask === 'error') return { status: 503, body: 'busy', contentType: 'text/plain' };
          if (ask === 'throw') throw new Error('handler bug (expected in this test)');
          return undefined; // not answered: times out
        },
      });
      const ask = (what, timeoutMs = 3000) => request(b.url, 1202, what, { timeoutMs });
      let r = await ask('string');
      assert.deepEqual([r.status, r.contentType, text(r.body)], [200, 'text/plain; charset=utf-8', 'plain text ✓']);
      r = await ask('bytes');
      assert.deepEqual([r.status, r.contentType, [...bytes(r.body)]], [200, 'application/octet-stream', [1, 2, 3]]);
      r = await ask('blob');
      assert.deepEqual([r.status, r.contentType, text(r.body)], [200, 'text/html', '<p>hi</p>']);
      r = await ask('empty');
      assert.deepEqual([r.status, r.body.byteLength], [204, 0]);
      r = await ask('error');
      assert.deepEqual([r.status, r.contentType, text(r.body)], [503, 'text/plain', 'busy']);
      r = await ask('throw');
      assert.equal(r.status, 500);
      assert.equal(text(r.body), 'the request handler failed');
      await until(() => errors.length === 1, 2000, 'the handler error reported');
      assert.match(String(errors[0]), /handler bug/);
      r = await ask('nothing', 300);
      assert.equal(r.status, 504);
      assert.equal(said(r), 'no reply from id 1202 within 300 ms');
      assert.match(r.contentType, /^text\/plain/);
      await stop(l);
    });

    test('reply later with handle.reply(seq, …); a late reply gets error 404', T, async () => {
      const requests = inbox();
      const l = await listening(b.url, 1203, { onRequest: (req) => void requests.push(req) });
      const pending = request(b.url, 1203, 'are you there?', { timeoutMs: 5000 });
      const req = await requests.next();
      assert.equal(text(req.body), 'are you there?');
      assert.deepEqual(await l.handle.reply(req.seq, 200, 'yes, later', 'text/plain'), { status: 200 });
      const r = await pending;
      assert.deepEqual([r.status, r.contentType, text(r.body)], [200, 'text/plain', 'yes, later']);
      // Answered already: a second reply is refused.
      let e = await brokerError(l.handle.reply(req.seq, 200, 'again'));
      assert.equal(e.status, 404);

      // Timed out: the reply comes too late.
      const late = request(b.url, 1203, 'quick', { timeoutMs: 200 });
      const req2 = await requests.next();
      const r2 = await late;
      assert.equal(r2.status, 504);
      assert.equal(said(r2), 'no reply from id 1203 within 200 ms');
      e = await brokerError(req2.reply(200, 'too late'));
      assert.equal(e.status, 404);
      // Out-of-range statuses are refused by the client.
      await assert.rejects(l.handle.reply(req2.seq, 99, ''), RangeError);
      await assert.rejects(l.handle.reply(req2.seq, 600, ''), RangeError);
      await stop(l);
    });

    test('a 204 reply with a body is refused (error 400); the request still waits for a good one', T, async () => {
      const requests = inbox();
      const l = await listening(b.url, 1204, { onRequest: (req) => void requests.push(req) });
      const pending = request(b.url, 1204, 'x', { timeoutMs: 5000 });
      const req = await requests.next();
      const e = await brokerError(req.reply(204, 'not empty'));
      assert.equal(e.status, 400);
      assert.deepEqual(await req.reply(204), { status: 200 });
      const r = await pending;
      assert.equal(r.status, 204);
      assert.equal(r.body.byteLength, 0);
      await stop(l);
    });

    test('502 when the listener goes away before replying', T, async () => {
      let l;
      l = await listening(b.url, 1205, {
        onRequest: () => {
          l.handle.close();
        },
      });
      const r = await request(b.url, 1205, 'x', { timeoutMs: 5000 });
      assert.equal(r.status, 502);
      assert.equal(said(r), 'the listener on id 1205 went away before replying');
      await l.handle.closed;
    });

    test('502 when the listener is replaced before replying', T, async () => {
      const requests = inbox();
      await listening(b.url, 1206, { onRequest: (req) => void requests.push(req) });
      const pending = request(b.url, 1206, 'x', { timeoutMs: 5000 });
      await requests.next();
      const second = await listening(b.url, 1206);
      const r = await pending;
      assert.equal(r.status, 502);
      assert.equal(said(r), 'the listener on id 1206 went away before replying');
      await stop(second);
    });

    test('409 from a plain listener, 404 from nobody, 501 from a listener without a handler', T, async () => {
      const plain = await listening(b.url, 1207, { envelope: false });
      let r = await request(b.url, 1207, 'x', { timeoutMs: 1000 });
      assert.equal(r.status, 409);
      assert.equal(said(r), 'the listener on id 1207 cannot reply: it did not negotiate fedbroker.v1');
      assert.equal(plain.messages.length, 0);
      await stop(plain);
      r = await request(b.url, 1208, 'x', { timeoutMs: 1000 });
      assert.equal(r.status, 404);
      assert.equal(said(r), 'no listener on id 1208');
      const silent = await listening(b.url, 1209);
      r = await request(b.url, 1209, 'x', { timeoutMs: 1000 });
      assert.equal(r.status, 501);
      assert.equal(text(r.body), 'this listener does not answer requests');
      await stop(silent);
    });

    test('400: reply on a topic or on several ids, a bad reply value; client-side checks', T, async () => {
      const topic = await listening(b.url, 1000100);
      const r = await request(b.url, 1000100, 'x', { timeoutMs: 1000 });
      assert.equal(r.status, 400, text(r.body));
      for (const q of ['reply=0', 'reply=abc', 'reply=-5', 'reply=']) {
        const res = await fetch(`${b.url}/1000100?${q}`, { method: 'POST', body: 'x' });
        assert.equal(res.status, 400, `?${q}: ${await res.text()}`);
      }
      const l1 = await listening(b.url, 1210);
      const l2 = await listening(b.url, 1211);
      const res = await fetch(`${b.url}/1210,1211?reply=1000`, { method: 'POST', body: 'x' });
      assert.equal(res.status, 400, await res.text());
      assert.equal(l1.messages.length + l2.messages.length, 0);
      await assert.rejects(request(b.url, [1210, 1211], 'x'), TypeError);
      await assert.rejects(request(b.url, 1210, 'x', { timeoutMs: 0 }), RangeError);
      await assert.rejects(request(b.url, 1210, 'x', { timeoutMs: 1.5 }), RangeError);
      await stop(topic);
      await stop(l1);
      await stop(l2);
    });
  });

  describe('presence', () => {
    test('watch: the current state at once, then changes; replacement is no event', T, async () => {
      const already = await listening(b.url, 1302, { envelope: false });
      const w = await listening(b.url, 1301);
      assert.deepEqual(await w.handle.watch([1302, '1303', 1302]), { status: 200 });
      const initial = [await w.presence.next(), await w.presence.next()];
      initial.sort((x, y) => x.id - y.id);
      assert.deepEqual(initial, [
        { id: 1302, online: true },
        { id: 1303, online: false },
      ]);
      assert.deepEqual(w.handle.presence, new Map([[1302, true], [1303, false]]));

      const l3 = await listening(b.url, 1303);
      assert.deepEqual(await w.presence.next(), { id: 1303, online: true });
      const replacement = await listening(b.url, 1303); // replaces l3: no event
      await within(5000, 'replaced', l3.handle.closed);
      await nothingMore(w.presence, 300, 'presence event on replacement');
      await stop(replacement);
      assert.deepEqual(await w.presence.next(), { id: 1303, online: false });
      await stop(already);
      assert.deepEqual(await w.presence.next(), { id: 1302, online: false });
      assert.deepEqual(w.handle.presence, new Map([[1302, false], [1303, false]]));

      // unwatch: no more events for that id.
      assert.deepEqual(await w.handle.unwatch(1302), { status: 200 });
      const again = await listening(b.url, 1302);
      await nothingMore(w.presence, 300, 'presence event after unwatch');
      assert.deepEqual(w.handle.presence, new Map([[1303, false]]));
      await stop(again);
      await stop(w);
    });

    test('a topic is online from its first listener to its last', T, async () => {
      const w = await listening(b.url, 1304);
      await w.handle.watch([1000200]);
      assert.deepEqual(await w.presence.next(), { id: 1000200, online: false });
      const t1 = await listening(b.url, 1000200);
      assert.deepEqual(await w.presence.next(), { id: 1000200, online: true });
      const t2 = await listening(b.url, 1000200);
      await stop(t1);
      await nothingMore(w.presence, 300, 'event while a topic listener remains');
      await stop(t2);
      assert.deepEqual(await w.presence.next(), { id: 1000200, online: false });
      await stop(w);
    });

    test('watch before the connection is open', T, async () => {
      const events = inbox();
      const h = listen(b.url, 1305, { envelope: true, onPresence: (id, online) => events.push({ id, online }) });
      handles.add(h);
      const ack = await within(5000, 'watch ack', h.watch([1306]));
      assert.deepEqual(ack, { status: 200 });
      assert.deepEqual(await events.next(), { id: 1306, online: false });
      h.close();
      await h.closed;
    });
  });

  describe('multi-target send and topics', () => {
    test('several ids: 204 when all took it, else 207 with one result per id', T, async () => {
      const l1 = await listening(b.url, 1501);
      const l2 = await listening(b.url, 1502, { envelope: false });
      assert.deepEqual(await send(b.url, [1501, '1502'], 'to both'), {
        status: 204,
        results: [
          { id: 1501, status: 204 },
          { id: 1502, status: 204 },
        ],
      });
      assert.equal((await l1.messages.next()).text, 'to both');
      assert.equal((await l2.messages.next()).text, 'to both');
      assert.deepEqual(await send(b.url, [1501, 1599, 1502], 'partial'), {
        status: 207,
        results: [
          { id: 1501, status: 204 },
          { id: 1599, status: 404, error: 'no listener on id 1599' },
          { id: 1502, status: 204 },
        ],
      });
      assert.equal((await l1.messages.next()).text, 'partial');
      assert.equal((await l2.messages.next()).text, 'partial');
      // One id in an array is a multi-target send of one.
      assert.deepEqual(await send(b.url, [1501], 'one'), { status: 204, results: [{ id: 1501, status: 204 }] });
      assert.equal((await l1.messages.next()).text, 'one');
      // A single id resolves with its result too.
      assert.deepEqual(await send(b.url, 1501, 'single'), { status: 204, results: [{ id: 1501, status: 204 }] });
      assert.equal((await l1.messages.next()).text, 'single');
      await stop(l1);
      await stop(l2);
    });

    test('400 for a repeated id, an invalid id, more than 1024; nothing is sent', T, async () => {
      const l = await listening(b.url, 1503);
      let e = await brokerError(send(b.url, [1503, 1503], 'x'));
      assert.equal(e.status, 400);
      assert.equal(e.message, 'id 1503 appears twice in the target list');
      e = await brokerError(send(b.url, [1503, '07'], 'x'));
      assert.equal(e.status, 400);
      assert.equal(e.message, 'invalid id "07" in the target list');
      e = await brokerError(send(b.url, [1503, ''], 'x'));
      assert.equal(e.status, 400);
      const many = Array.from({ length: 1025 }, (_, i) => 2000 + i);
      e = await brokerError(send(b.url, many, 'x'));
      assert.equal(e.status, 400);
      assert.equal(e.message, 'more than 1024 ids in the target list');
      // 1024 is fine: all but one have no listener.
      const r = await send(b.url, [1503, ...many.slice(0, 1023)], 'x');
      assert.equal(r.status, 207);
      assert.equal(r.results.length, 1024);
      assert.deepEqual(r.results[0], { id: 1503, status: 204 });
      assert.deepEqual(r.results[1023], { id: 3022, status: 404, error: 'no listener on id 3022' });
      assert.equal((await l.messages.next()).text, 'x');
      await nothingMore(l.messages, 200, 'message from a refused multi-target send');
      await assert.rejects(send(b.url, [], 'x'), TypeError);
      await stop(l);
    });

    test('a topic: every listener gets it with the same seq, Fedbroker-Recipients counts them', T, async () => {
      const t = 1000001;
      const a = await listening(b.url, t);
      const c = await listening(b.url, t);
      const plain = await listening(b.url, t, { envelope: false });
      assert.deepEqual(await send(b.url, t, 'fan-out'), {
        status: 204,
        recipients: 3,
        results: [{ id: t, status: 204, recipients: 3 }],
      });
      const [ma, mc] = [await a.messages.next(), await c.messages.next()];
      assert.equal((await plain.messages.next()).text, 'fan-out');
      assert.deepEqual([ma.text, mc.text], ['fan-out', 'fan-out']);
      assert.equal(ma.meta.seq, mc.meta.seq);
      assert.equal(ma.meta.id, t);
      assert.equal(a.closes.length + c.closes.length + plain.closes.length, 0, 'no replacement on a topic');

      // From an envelope listener: the ack counts the recipients, and `from` is the sender's id.
      const sender = await listening(b.url, 1504);
      assert.deepEqual(await sender.handle.send(t, 'from 1504'), { status: 204, recipients: 3 });
      const m = await a.messages.next();
      assert.deepEqual([m.text, m.meta.from, m.meta.seq], ['from 1504', 1504, ma.meta.seq + 1]);
      await c.messages.next();
      await plain.messages.next();

      // In a multi-target send a topic's entry carries its recipients.
      const r = await send(b.url, [t, 1599], 'mixed');
      assert.deepEqual(r, {
        status: 207,
        results: [
          { id: t, status: 204, recipients: 3 },
          { id: 1599, status: 404, error: 'no listener on id 1599' },
        ],
      });
      await stop(plain);
      assert.equal((await send(b.url, t, 'two left')).recipients, 2);

      // A topic nobody listens on.
      const e = await brokerError(send(b.url, 1000002, 'x'));
      assert.equal(e.status, 404);
      assert.equal(e.message, 'no listener on topic 1000002');
      const e2 = await brokerError(sender.handle.send(1000002, 'x'));
      assert.equal(e2.status, 404);
      for (const l of [a, c, sender]) await stop(l);
    });
  });
});

test('a topic listener that does not keep up is closed (1008); the others keep receiving', T, async () => {
  const b = await startBroker(['--topics', TOPICS, '--queue-limit', '2']);
  try {
    const t = 1000010;
    const live = await listening(b.url, t);
    const { socket } = await pausedListener(b.port, t);
    const chunk = new Uint8Array(65536);
    let recipients = 2;
    let sent = 0;
    for (; sent < 400 && recipients === 2; sent++) {
      ({ recipients } = await send(b.url, t, chunk));
      await live.messages.next(5000, `message ${sent}`);
    }
    assert.equal(recipients, 1, `still ${recipients} recipients after ${sent} messages of 64 KiB`);
    assert.equal(live.closes.length, 0, JSON.stringify(live.closes));
    assert.equal((await send(b.url, t, 'after')).recipients, 1);
    assert.equal((await live.messages.next()).text, 'after');
    const stats = await (await fetch(`${b.url}/`)).json();
    assert.equal(stats.slow_listeners_closed, 1);
    assert.equal(stats.topic_listeners, 1);
    socket.destroy();
    await stop(live);
  } finally {
    await b.stop('SIGKILL');
  }
});

test('request-reply limits: --max-reply-timeout caps the wait, --max-pending-replies answers 503', T, async () => {
  const b = await startBroker(['--max-reply-timeout', '400', '--max-pending-replies', '1']);
  try {
    const l = await listening(b.url, 1601, { onRequest: () => undefined });
    const t0 = Date.now();
    const first = request(b.url, 1601, 'x', { timeoutMs: 60000 });
    await sleep(100);
    const second = await request(b.url, 1601, 'y', { timeoutMs: 60000 });
    assert.equal(second.status, 503);
    assert.equal(said(second), 'too many requests are waiting for replies; retry later');
    assert.equal(second.retryAfter, 1);
    const r = await first;
    assert.equal(r.status, 504);
    assert.ok(Date.now() - t0 < 5000, `waited ${Date.now() - t0} ms with --max-reply-timeout 400`);
    await stop(l);
  } finally {
    await b.stop('SIGKILL');
  }
});

describe('presence with a tokens file, --max-watch, across a broker restart', () => {
  test('watch needs the presence action for every id', T, async () => {
    const file = tempFile(
      'tokens.toml',
      `[[token]]\ntoken = "watcher"\nlisten = [1401]\npresence = [1402, "1410-1419"]\nsend = [1402]\n`,
    );
    const b = await startBroker(['--auth-tokens', file]);
    try {
      const w = await listening(b.url, 1401, { token: 'watcher' });
      assert.deepEqual(await w.handle.watch([1402, 1415]), { status: 200 });
      const got = [await w.presence.next(), await w.presence.next()].sort((x, y) => x.id - y.id);
      assert.deepEqual(got, [
        { id: 1402, online: false },
        { id: 1415, online: false },
      ]);
      const e = await brokerError(w.handle.watch([1403]));
      assert.equal(e.status, 403);
      assert.deepEqual(w.handle.presence, new Map([[1402, false], [1415, false]]));
      // An envelope send is authorized with the listener's own token.
      const e2 = await brokerError(w.handle.send(1403, 'x'));
      assert.equal(e2.status, 403);
      const e3 = await brokerError(w.handle.send(1402, 'x'));
      assert.equal(e3.status, 404);
      await stop(w);
    } finally {
      await b.stop('SIGKILL');
    }
  });

  test('more than --max-watch ids: error 400', T, async () => {
    const b = await startBroker(['--max-watch', '2']);
    try {
      const w = await listening(b.url, 1420);
      const e = await brokerError(w.handle.watch([1, 2, 3]));
      assert.equal(e.status, 400);
      assert.deepEqual(await w.handle.watch([1, 2]), { status: 200 });
      await stop(w);
    } finally {
      await b.stop('SIGKILL');
    }
  });

  test('after a reconnect the watched ids are watched again', T, async () => {
    let b = await startBroker();
    const port = b.port;
    try {
      const w = await listening(b.url, 1430);
      await w.handle.watch([1431]);
      assert.deepEqual(await w.presence.next(), { id: 1431, online: false });
      await b.stop('SIGTERM');
      await until(() => w.closes.length === 1, 5000, 'close on shutdown');
      assert.equal(w.closes[0].code, 1001);
      assert.deepEqual(w.handle.presence, new Map(), 'no known state while disconnected');
      b = await startBroker([], { listen: `127.0.0.1:${port}` });
      await until(() => w.opens() >= 2, 10000, 'reconnect');
      assert.deepEqual(await w.presence.next(), { id: 1431, online: false });
      const l = await listening(b.url, 1431, { envelope: false });
      assert.deepEqual(await w.presence.next(), { id: 1431, online: true });
      await stop(l);
      await stop(w);
    } finally {
      await b.stop('SIGKILL');
    }
  });
});
