// Headless Chromium against the real broker: the example pages are served from a second origin (another
// port), send with fetch and listen with a WebSocket through CORS, the two-page WebRTC demo opens
// a data channel, and the two-page chat shows presence, messages and request-reply. Run by
// examples/browser/test.sh (node --test).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { copyFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

import { FedbrokerError, listen, request, send } from '../../../clients/js/fedbroker.js';
import { inbox, pausedListener, startBroker, tempDir, tempFile, within } from '../../../clients/js/test/helpers.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(here, '../../..');
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const SCREENSHOT = process.env.SCREENSHOT ?? path.join(here, 'out', 'webrtc-demo.png');
const CHAT_SCREENSHOT = path.join(here, 'out', 'chat-demo.png');
const T = { timeout: 60000 };
const WAIT = 20000; // the longest any single wait in a page may take
// Poll page conditions on a timer: the default (requestAnimationFrame) stalls in background tabs.
const POLL = { polling: 50 };

/** Waits until `fn(arg)` is true in `page`, with the page brought to the front (Chromium throttles
 * timers, and so this polling, in background tabs). */
async function waitIn(page, fn, arg) {
  await page.bringToFront();
  return page.waitForFunction(fn, arg, POLL);
}

const LISTEN_SEND = 'page-token-7f3a'; // may listen and send anywhere
const LISTEN_ONLY = 'listen-only-token-91c2'; // may listen, not send

let server; // the static server: the pages' origin
let origin;
let broker; // tokens file, CORS allowing `origin`
let context; // Chromium
const pageLogs = [];

/** Starts examples/browser/serve.mjs on a free port; resolves with {proc, origin}. */
async function startServer() {
  const proc = spawn(process.execPath, [path.join(ROOT, 'examples/browser/serve.mjs'), '--port', '0'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  const url = await within(
    10000,
    'static server printing "serving on"',
    new Promise((resolve, reject) => {
      proc.once('exit', (code) => reject(new Error(`static server exited (${code})`)));
      proc.stdout.setEncoding('utf8').on('data', (d) => {
        out += d;
        const m = /serving on (http:\/\/[^/\s]+)/.exec(out);
        if (m) resolve(m[1]);
      });
    }),
  );
  return { proc, origin: url };
}

/** A new tab on `file` (under examples/browser/) with `params`; page errors and console go to pageLogs. */
async function openPage(file, params = {}) {
  const page = await context.newPage();
  const name = `${file}?${new URLSearchParams(params)}`;
  page.on('console', (m) => pageLogs.push(`[${name}] console.${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => pageLogs.push(`[${name}] page error: ${e.message}`));
  await page.goto(`${origin}/examples/browser/${name}`, { waitUntil: 'load' });
  return page;
}

/** Runs `fn(fedbroker, arg)` in the page, with the client module imported there. */
function inPage(page, fn, arg) {
  return page.evaluate(
    async ([src, a]) => {
      const fedbroker = await import('/clients/js/fedbroker.js');
      return new Function('return ' + src)()(fedbroker, a);
    },
    [fn.toString(), arg],
  );
}

before(async () => {
  ({ proc: server, origin } = await startServer());
  const tokens = tempFile(
    'tokens.toml',
    `[[token]]\ntoken = "${LISTEN_SEND}"\nlisten = ["*"]\nsend = ["*"]\n\n` +
      `[[token]]\ntoken = "${LISTEN_ONLY}"\nlisten = ["*"]\n`,
  );
  broker = await startBroker(['--auth-tokens', tokens, '--cors-allow-origin', origin]);
  context = await within(
    30000,
    `launching ${CHROMIUM}`,
    chromium.launchPersistentContext(tempDir(), {
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        // Chromium hides host ICE candidates behind mDNS names by default; a loopback test needs them.
        '--disable-features=WebRtcHideLocalIpsWithMdns',
      ],
      viewport: { width: 1000, height: 860 },
    }),
  );
  context.setDefaultTimeout(WAIT);
});

after(async () => {
  await context?.close().catch(() => {});
  server?.kill('SIGTERM');
  await broker?.stop('SIGKILL');
});

// On failure, what the pages said helps more than the assertion alone.
after(() => {
  if (process.exitCode && pageLogs.length) console.error(pageLogs.join('\n'));
});

describe('a page from another origin, through CORS', () => {
  test('sends with fetch and listens with a WebSocket: every byte arrives as sent', T, async () => {
    const page = await openPage('index.html');
    const all = Array.from({ length: 256 }, (_, i) => i);

    // Browser → browser: the page listens on 2001 and sends to itself.
    const got = await inPage(
      page,
      async ({ listen, send }, { url, token, all }) => {
        const received = [];
        let opened;
        const open = new Promise((r) => (opened = r));
        const h = listen(url, 2001, { token, onOpen: () => opened(), onMessage: (d) => received.push([...new Uint8Array(d)]) });
        await open;
        await send(url, 2001, new Uint8Array(all), { token });
        await send(url, 2001, new Uint8Array(0), { token });
        await send(url, 2001, 'héllo ✓', { token });
        const end = Date.now() + 10000;
        while (received.length < 3 && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
        h.close();
        return received;
      },
      { url: broker.url, token: LISTEN_SEND, all },
    );
    assert.equal(got.length, 3, `the page received ${got.length} of 3 messages`);
    assert.deepEqual(got[0], all, 'all 256 byte values');
    assert.deepEqual(got[1], [], 'the empty message');
    assert.deepEqual(got[2], [...Buffer.from('héllo ✓')], 'UTF-8 text');

    // Browser → Node and Node → browser, so neither side only agrees with itself.
    const messages = inbox();
    let opened;
    const open = new Promise((r) => (opened = r));
    const nodeListener = listen(broker.url, 2002, { token: LISTEN_SEND, onOpen: () => opened(), onMessage: (d) => messages.push(d) });
    await within(5000, 'Node listener opening', open);
    await inPage(page, ({ send }, { url, token, all }) => send(url, 2002, new Uint8Array(all).reverse(), { token }), {
      url: broker.url,
      token: LISTEN_SEND,
      all,
    });
    assert.deepEqual([...new Uint8Array(await messages.next(5000, 'the page\'s message in Node'))], [...all].reverse());
    nodeListener.close();

    const fromNode = inPage(
      page,
      ({ listen }, { url, token }) =>
        new Promise((resolve, reject) => {
          const h = listen(url, 2003, {
            token,
            onOpen: () => (window.__opened2003 = true),
            onMessage: (d) => {
              h.close();
              resolve([...new Uint8Array(d)]);
            },
          });
          setTimeout(() => reject(new Error('no message on 2003 within 10 s')), 10000);
        }),
      { url: broker.url, token: LISTEN_SEND },
    );
    await waitIn(page, () => window.__opened2003 === true);
    const payload = Uint8Array.from([0, 1, 2, 0xfe, 0xff, 0x80, 0x7f, 13, 10]);
    await send(broker.url, 2003, payload, { token: LISTEN_SEND });
    assert.deepEqual(await fromNode, [...payload]);
    await page.close();
  });

  test('error answers are readable by the page: status, sentence, WWW-Authenticate', T, async () => {
    const page = await openPage('index.html');
    const errors = await inPage(
      page,
      async ({ send }, { url, sendToken, listenOnly }) => {
        const out = {};
        const attempt = async (name, id, token) => {
          try {
            await send(url, id, 'x', { token });
            out[name] = 'resolved';
          } catch (e) {
            out[name] = { name: e.name, status: e.status, message: e.message };
          }
        };
        await attempt('no token', 2101, undefined);
        await attempt('listen-only token', 2101, listenOnly);
        await attempt('nobody listens', 2101, sendToken);
        // Without a token the POST is a "simple" request (no preflight): the 400 comes before the
        // credentials are checked.
        await attempt('invalid id', '042', undefined);
        // WWW-Authenticate must be exposed to the page (Access-Control-Expose-Headers).
        const r = await fetch(`${url}/2101`, { method: 'POST', body: 'x' });
        out.wwwAuthenticate = r.headers.get('www-authenticate');
        return out;
      },
      { url: broker.url, sendToken: LISTEN_SEND, listenOnly: LISTEN_ONLY },
    );
    assert.deepEqual(errors['no token'], { name: 'FedbrokerError', status: 401, message: 'missing or invalid credentials' });
    assert.deepEqual(errors['listen-only token'], {
      name: 'FedbrokerError',
      status: 403,
      message: 'credentials do not allow this action on this id',
    });
    assert.deepEqual(errors['nobody listens'], { name: 'FedbrokerError', status: 404, message: 'no listener on id 2101' });
    assert.equal(errors['invalid id'].status, 400);
    assert.match(errors['invalid id'].message, /^invalid id/);
    assert.equal(errors.wwwAuthenticate, 'Bearer');
    await page.close();
  });

  // A preflight (OPTIONS, here because of the Authorization header) must succeed whatever the path,
  // so that the page reads the broker's own refusal of the request instead of a TypeError.
  test('preflighted requests to an invalid id or unknown route get the broker\'s answer', T, async () => {
    const page = await openPage('index.html');
    const got = await inPage(
      page,
      async ({ send }, { url, token }) => {
        const out = {};
        for (const [name, id] of [
          ['invalid id', '042'],
          ['unknown route', 'a/b'],
        ]) {
          try {
            // ('a/b' is percent-encoded by send: build the URL by hand for the route case)
            if (id === 'a/b') {
              const r = await fetch(`${url}/a/b`, { method: 'POST', headers: { authorization: `Bearer ${token}` }, body: 'x' });
              out[name] = { status: r.status };
            } else {
              await send(url, id, 'x', { token });
              out[name] = 'resolved';
            }
          } catch (e) {
            out[name] = { name: e.name, status: e.status };
          }
        }
        return out;
      },
      { url: broker.url, token: LISTEN_SEND },
    );
    await page.close();
    assert.deepEqual(got, { 'invalid id': { name: 'FedbrokerError', status: 400 }, 'unknown route': { status: 404 } });
  });

  test('a refused WebSocket upgrade (bad token) stops listen, told apart from network loss', T, async () => {
    const page = await openPage('index.html');
    const info = await inPage(
      page,
      ({ listen }, { url }) => listen(url, 2201, { token: 'not-a-token' }).closed,
      { url: broker.url },
    );
    assert.equal(info.refused, true, JSON.stringify(info));
    assert.equal(info.opened, false);
    assert.equal(info.willReconnect, false);
    assert.equal(info.code, 1006);
    await page.close();
  });

  test('limits: 413 and 503 with Retry-After reach the page', T, async () => {
    const limited = await startBroker(['--cors-allow-origin', origin, '--queue-limit', '1', '--max-message-size', '65536']);
    try {
      const { socket } = await pausedListener(limited.port, 2301);
      let full = false;
      for (let i = 0; i < 2000 && !full; i++) {
        try {
          await send(limited.url, 2301, new Uint8Array(65536));
        } catch (e) {
          assert.ok(e instanceof FedbrokerError && e.status === 503, `filling the queue: ${e}`);
          full = true;
        }
      }
      assert.ok(full, 'the queue of a listener that does not read never filled');
      const page = await openPage('index.html');
      const got = await inPage(
        page,
        async ({ send }, { url }) => {
          const out = {};
          for (const [name, size] of [
            ['queue full', 10],
            ['too big', 65537],
          ]) {
            try {
              await send(url, 2301, new Uint8Array(size));
              out[name] = 'resolved';
            } catch (e) {
              out[name] = { name: e.name, status: e.status, retryAfter: e.retryAfter, message: e.message };
            }
          }
          return out;
        },
        { url: limited.url },
      );
      assert.deepEqual(got['queue full'], {
        name: 'FedbrokerError',
        status: 503,
        retryAfter: 1,
        message: 'the listener on id 2301 is not keeping up; retry later',
      });
      assert.deepEqual(got['too big'], {
        name: 'FedbrokerError',
        status: 413,
        retryAfter: undefined,
        message: 'message larger than the limit of 65536 bytes',
      });
      socket.destroy();
      await page.close();
    } finally {
      await limited.stop('SIGKILL');
    }
  });

  test('an origin the broker does not allow gets nothing readable', T, async () => {
    const closed = await startBroker([]); // no --cors-allow-origin: only its own origin is allowed
    try {
      const page = await openPage('index.html');
      const got = await inPage(
        page,
        async ({ send, listen }, { url }) => {
          const out = {};
          try {
            await send(url, 2401, 'x');
            out.send = 'resolved';
          } catch (e) {
            out.send = { name: e.name, status: e.status };
          }
          // The upgrade is refused (403) and so is the probe, which carries no CORS headers: from the
          // page this is indistinguishable from an unreachable broker, so listen keeps retrying.
          const infos = [];
          const h = listen(url, 2401, { minDelay: 50, onClose: (i) => infos.push(i) });
          const end = Date.now() + 10000;
          while (infos.length < 2 && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
          h.close();
          await h.closed;
          out.listen = infos.slice(0, 2);
          return out;
        },
        { url: closed.url },
      );
      assert.deepEqual(got.send, { name: 'TypeError', status: undefined });
      assert.equal(got.listen.length, 2, JSON.stringify(got.listen));
      for (const i of got.listen) {
        assert.equal(i.opened, false);
        assert.equal(i.refused, false);
        assert.equal(i.willReconnect, true);
      }
      await page.close();
    } finally {
      await closed.stop('SIGKILL');
    }
  });
});

test('index.html: one tab listens, another sends', T, async () => {
  const params = { broker: broker.url, token: LISTEN_SEND, listen: '2501', to: '2501' };
  const listener = await openPage('index.html', params);
  const sender = await openPage('index.html', params);
  await listener.click('#listen');
  await waitIn(listener, () => document.querySelector('#listen-state').textContent === 'listening on 2501');
  await sender.fill('#message', 'hello from the other tab');
  await sender.click('#send');
  await waitIn(sender, () => document.querySelector('#send-result').textContent !== 'sending…');
  assert.equal(await sender.textContent('#send-result'), 'sent to 2501 (204)');
  await waitIn(listener, () => document.querySelector('#messages li') !== null);
  assert.match(await listener.textContent('#messages li'), /24 bytes: hello from the other tab/);
  await listener.click('#stop');
  await waitIn(listener, () => document.querySelector('#listen-state').textContent === 'stopped');
  await sender.click('#send');
  await waitIn(sender, () => document.querySelector('#send-result').textContent !== 'sending…');
  assert.equal(await sender.textContent('#send-result'), '404: no listener on id 2501');
  await listener.close();
  await sender.close();
});

test('webrtc.html: two pages signal through the broker and open an RTCDataChannel', T, async () => {
  const common = { broker: broker.url, token: LISTEN_SEND };
  const a = await openPage('webrtc.html', { ...common, me: '3001', peer: '3002' });
  const b = await openPage('webrtc.html', { ...common, me: '3002', peer: '3001' });
  for (const [name, page, me] of [
    ['A', a, '3001'],
    ['B', b, '3002'],
  ]) {
    await page.click('#connect');
    await waitIn(page, (me) => document.querySelector('#signal-state').textContent === `listening on ${me}`, me).catch((e) => {
      throw new Error(`page ${name} not listening on ${me}: ${e.message}`);
    });
  }
  await a.click('#call');
  for (const [name, page] of [
    ['A (caller)', a],
    ['B (callee)', b],
  ]) {
    await waitIn(page, () => document.querySelector('#dc-state').textContent === 'open').catch(async (e) => {
      const states = await page.evaluate(() =>
        ['signal-state', 'pc-state', 'ice-state', 'dc-state'].map((id) => `${id}=${document.getElementById(id).textContent}`).join(' '),
      );
      const log = await page.evaluate(() => [...document.querySelectorAll('#log li')].map((li) => li.textContent).join('\n'));
      throw new Error(`page ${name}: data channel not open within ${WAIT} ms (${states})\n${log}\n${e.message}`);
    });
  }
  assert.equal(await a.textContent('#pc-state'), 'connected');
  assert.equal(await b.textContent('#pc-state'), 'connected');

  await a.fill('#chat-input', 'hello from A, peer to peer');
  await a.click('#chat-send');
  await waitIn(b, () => [...document.querySelectorAll('#log li')].some((li) => li.textContent.includes('peer says: hello from A, peer to peer')));
  await b.fill('#chat-input', 'hi A, B here');
  await b.click('#chat-send');
  await waitIn(a, () => [...document.querySelectorAll('#log li')].some((li) => li.textContent.includes('peer says: hi A, B here')));

  // The signalling went through the broker: both sides logged the offer/answer exchange.
  const logOf = (p) => p.evaluate(() => [...document.querySelectorAll('#log li')].map((li) => li.textContent).join('\n'));
  const [logA, logB] = [await logOf(a), await logOf(b)];
  assert.match(logA, /→ 3002: offer/);
  assert.match(logA, /← 3002: answer/);
  assert.match(logB, /← 3001: offer/);
  assert.match(logB, /→ 3001: answer/);
  assert.match(logA, /→ 3002: candidate/);
  assert.match(logB, /← 3001: candidate/);

  mkdirSync(path.dirname(SCREENSHOT), { recursive: true });
  await a.screenshot({ path: SCREENSHOT, fullPage: true });
  if (process.env.UPDATE_DOCS_SCREENSHOT === '1') {
    const docs = path.join(ROOT, 'docs/images/webrtc-demo.png');
    mkdirSync(path.dirname(docs), { recursive: true });
    copyFileSync(SCREENSHOT, docs);
  }

  await a.click('#hangup');
  await waitIn(b, () => document.querySelector('#dc-state').textContent !== 'open');
  await a.close();
  await b.close();
});

// The patterns of docs/patterns.md from a page: the fedbroker.v1 envelope, request-reply, presence,
// multi-target send and topics. A broker of their own: per-user tokens with the presence action, topics.
describe('patterns: envelope, request-reply, presence (chat.html)', () => {
  const ALICE = 'alice-token-5d1e'; // listen 4001; send, presence: 4002
  const BOB = 'bob-token-0c77'; // listen 4002; send, presence: 4001
  const ANY = 'any-token-2b90'; // everything, for the in-page checks
  let pb;
  before(async () => {
    const tokens = tempFile(
      'tokens.toml',
      `[[token]]\ntoken = "${ALICE}"\nlisten = [4001]\nsend = [4002]\npresence = [4002]\n\n` +
        `[[token]]\ntoken = "${BOB}"\nlisten = [4002]\nsend = [4001]\npresence = [4001]\n\n` +
        `[[token]]\ntoken = "${ANY}"\nlisten = ["*"]\nsend = ["*"]\npresence = ["*"]\n`,
    );
    pb = await startBroker(['--auth-tokens', tokens, '--cors-allow-origin', origin, '--topics', '1000000-1999999']);
  });
  after(() => pb?.stop('SIGKILL'));

  test('the client in a page: envelope send with acks, request-reply, presence, multi-target, topics', T, async () => {
    const page = await openPage('chat.html');
    const got = await inPage(
      page,
      async ({ listen, request, send }, { url, token }) => {
        const out = { messages: [], presence: [] };
        const opened = (h) => new Promise((resolve) => {
          const t = setInterval(() => h.connected && (clearInterval(t), resolve()), 10);
        });
        const a = listen(url, 4101, {
          token,
          envelope: true,
          onMessage: (d, meta) => out.messages.push({ text: new TextDecoder().decode(d), seq: meta.seq, id: meta.id, from: meta.from }),
          onPresence: (id, online) => out.presence.push([id, online]),
          onRequest: (req) => ({ status: 200, body: `pong: ${new TextDecoder().decode(req.body)}`, contentType: 'text/plain; charset=utf-8' }),
        });
        await a.watch([4102]);
        await opened(a);
        const b = listen(url, 4102, { token, envelope: true });
        await opened(b);
        out.ack = await b.send(4101, 'from 4102 over the envelope');
        try {
          await b.send(4199, 'x');
        } catch (e) {
          out.sendError = { name: e.name, status: e.status, message: e.message };
        }
        const r = await request(url, 4101, 'ping', { token, timeoutMs: 3000 });
        out.reply = { status: r.status, contentType: r.contentType, body: new TextDecoder().decode(r.body) };
        const none = await request(url, 4103, 'ping', { token, timeoutMs: 1000 });
        out.noListener = { status: none.status, body: new TextDecoder().decode(none.body).trim() };
        out.multi = await send(url, [4101, 4102, 4103], 'to three', { token });
        const t1 = listen(url, 1000001, { token, envelope: true });
        const t2 = listen(url, 1000001, { token });
        await opened(t1);
        await opened(t2);
        out.topic = await send(url, 1000001, 'to the topic', { token });
        b.close();
        await b.closed;
        const end = Date.now() + 5000;
        while (out.presence.length < 3 && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
        for (const h of [a, t1, t2]) h.close();
        return out;
      },
      { url: pb.url, token: ANY },
    );
    await page.close();
    assert.deepEqual(got.ack, { status: 204 });
    assert.deepEqual(got.sendError, { name: 'FedbrokerError', status: 404, message: 'no listener on id 4199' });
    assert.deepEqual(got.reply, { status: 200, contentType: 'text/plain; charset=utf-8', body: 'pong: ping' });
    assert.deepEqual(got.noListener, { status: 404, body: 'no listener on id 4103' });
    assert.deepEqual(got.presence, [
      [4102, false],
      [4102, true],
      [4102, false],
    ]);
    assert.deepEqual(got.messages.map((m) => [m.text, m.id, m.from]), [
      ['from 4102 over the envelope', 4101, 4102],
      ['to three', 4101, undefined],
    ]);
    assert.deepEqual(got.messages.map((m) => m.seq), [1, 3], 'the request was seq 2');
    assert.deepEqual(got.multi, {
      status: 207,
      results: [
        { id: 4101, status: 204 },
        { id: 4102, status: 204 },
        { id: 4103, status: 404, error: 'no listener on id 4103' },
      ],
    });
    assert.equal(got.topic.status, 204);
    assert.deepEqual(got.topic.results.map((r) => [r.id, r.status]), [[1000001, 204]]);
  });

  test('a page reads Fedbroker-Recipients of a topic', T, async () => {
    // The page can read the header only because the broker lists it in Access-Control-Expose-Headers.
    const topic = await listening1000002();
    const page = await openPage('chat.html');
    const got = await inPage(page, ({ send }, { url, token }) => send(url, 1000002, 'x', { token }), { url: pb.url, token: ANY });
    topic.close();
    await page.close();
    assert.deepEqual(got, { status: 204, recipients: 1, results: [{ id: 1000002, status: 204, recipients: 1 }] });
  });

  /** A Node listener on topic 1000002, open. */
  async function listening1000002() {
    let opened;
    const open = new Promise((r) => (opened = r));
    const h = listen(pb.url, 1000002, { token: ANY, onOpen: () => opened() });
    await within(5000, 'topic listener opening', open);
    return h;
  }

  test('chat.html: two users see each other online, chat, and ask for each other\'s profile', T, async () => {
    const common = { broker: pb.url, timeout: '1500' };
    const a = await openPage('chat.html', { ...common, token: ALICE, me: '4001', name: 'Alice', contacts: '4002' });
    const b = await openPage('chat.html', { ...common, token: BOB, me: '4002', name: 'Bob', status: 'in a meeting', contacts: '4001' });
    const presenceOf = (page, id) => page.textContent(`#people li[data-id="${id}"] .presence`);
    const logHas = (page, text) =>
      waitIn(page, (t) => [...document.querySelectorAll('#log li')].some((li) => li.textContent.includes(t)), text).catch(async (e) => {
        const log = await page.evaluate(() => [...document.querySelectorAll('#log li')].map((li) => li.textContent).join('\n'));
        throw new Error(`no log line with ${JSON.stringify(text)}:\n${log}\n${e.message}`);
      });
    const answerOf = async (page, id) => {
      await waitIn(page, (id) => !['', 'asking…'].includes(document.querySelector(`#people li[data-id="${id}"] .answer`).textContent), id);
      return page.textContent(`#people li[data-id="${id}"] .answer`);
    };

    assert.equal(await presenceOf(a, '4002'), 'unknown');
    await a.click('#connect');
    await waitIn(a, () => document.querySelector('#conn-state').textContent === 'connected as 4001');
    await waitIn(a, () => document.querySelector('#people li[data-id="4002"] .presence').textContent === 'offline');

    await b.click('#connect');
    await waitIn(b, () => document.querySelector('#conn-state').textContent === 'connected as 4002');
    await waitIn(b, () => document.querySelector('#people li[data-id="4001"] .presence').textContent === 'online');
    await waitIn(a, () => document.querySelector('#people li[data-id="4002"] .presence').textContent === 'online');
    await logHas(a, '4002 is online');

    // A message, to everyone online: B sees who sent it (the broker's `from`), A sees the ack.
    await a.fill('#chat-input', 'hello Bob');
    await a.click('#chat-send');
    await logHas(b, '← 4001: hello Bob');
    await logHas(a, '→ 4002: hello Bob ✓');

    // Request-reply: A asks B's profile; B answers; A now knows B's name.
    await a.click('#people li[data-id="4002"] .ask');
    assert.match(await answerOf(a, '4002'), /^Bob: in a meeting \(replied in \d+ ms\)$/);
    await logHas(b, 'profile requested by 4001 (request 2): answered');
    assert.equal(await a.textContent('#people li[data-id="4002"] .who'), 'Bob (4002)');
    await b.click('#people li[data-id="4001"] .ask');
    assert.match(await answerOf(b, '4001'), /^Alice: available/);
    await b.fill('#chat-input', 'hi Alice');
    await b.selectOption('#to', '4001');
    await b.click('#chat-send');
    await logHas(a, '← Bob (4002): hi Alice');

    mkdirSync(path.dirname(CHAT_SCREENSHOT), { recursive: true });
    await a.screenshot({ path: CHAT_SCREENSHOT, fullPage: true });

    // B stops answering: A's request times out (504).
    await b.uncheck('#answer');
    await a.click('#people li[data-id="4002"] .ask');
    assert.equal(await answerOf(a, '4002'), '504: no reply from id 4002 within 1500 ms');
    await logHas(b, 'not answered, it will time out');

    // B leaves: A sees B offline, and a request finds nobody.
    await b.click('#disconnect');
    await waitIn(b, () => document.querySelector('#conn-state').textContent === 'disconnected');
    await waitIn(a, () => document.querySelector('#people li[data-id="4002"] .presence').textContent === 'offline');
    await logHas(a, 'Bob (4002) is offline');
    await a.click('#people li[data-id="4002"] .ask');
    assert.equal(await answerOf(a, '4002'), '404: no listener on id 4002');
    await a.fill('#chat-input', 'anyone?');
    await a.click('#chat-send');
    await logHas(a, 'nobody is online');
    await a.close();
    await b.close();
  });
});
