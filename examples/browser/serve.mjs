#!/usr/bin/env node
// A tiny static server for the browser examples: serves examples/browser/ and clients/js/ from the
// repository root (nothing else), so the pages can import ../../clients/js/fedbroker.js.
//
//   node examples/browser/serve.mjs                 # http://127.0.0.1:8000/examples/browser/
//   node examples/browser/serve.mjs --port 0        # a free port; the first stdout line says which
//
// Then start the broker with this origin allowed:
//   fedbroker-tokio --cors-allow-origin http://127.0.0.1:8000
import { createReadStream, statSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const SERVED = ['/examples/browser/', '/clients/js/'];
const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.md': 'text/plain; charset=utf-8',
  '.png': 'image/png',
  '.svg': 'image/svg+xml',
};

const { values } = parseArgs({
  options: {
    port: { type: 'string', default: '8000' },
    host: { type: 'string', default: '127.0.0.1' },
  },
});

function answer(res, status, text, headers = {}) {
  res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', ...headers });
  res.end(text + '\n');
}

const server = http.createServer((req, res) => {
  if (req.method !== 'GET' && req.method !== 'HEAD') return answer(res, 405, 'method not allowed', { allow: 'GET, HEAD' });
  let pathname;
  try {
    pathname = decodeURIComponent(new URL(req.url, 'http://x').pathname);
  } catch {
    return answer(res, 400, 'bad path');
  }
  if (pathname === '/') return answer(res, 302, 'see /examples/browser/', { location: '/examples/browser/' });
  if (pathname.endsWith('/')) pathname += 'index.html';
  const file = path.join(ROOT, path.normalize(pathname));
  const rel = '/' + path.relative(ROOT, file).split(path.sep).join('/');
  if (!SERVED.some((p) => rel.startsWith(p)) || rel.includes('/node_modules/') || rel.includes('/test/')) {
    return answer(res, 404, 'not found');
  }
  let st;
  try {
    st = statSync(file);
  } catch {
    return answer(res, 404, 'not found');
  }
  if (st.isDirectory()) return answer(res, 302, 'a directory', { location: rel + '/' });
  res.writeHead(200, {
    'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream',
    'content-length': st.size,
    'cache-control': 'no-store',
  });
  if (req.method === 'HEAD') return res.end();
  createReadStream(file).pipe(res);
});

server.listen(Number(values.port), values.host, () => {
  const { address, port } = server.address();
  const host = address.includes(':') ? `[${address}]` : address;
  console.log(`serving on http://${host}:${port}/examples/browser/`);
  console.log(`start the broker with: --cors-allow-origin http://${host}:${port}`);
});
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  });
}
