#!/usr/bin/env python3
"""wsprobe: a small WebSocket client (RFC 6455) for fedbroker's test scripts, standard library only.

    wsprobe.py listen URL [options]       listen on an id (ws:// or wss://), save each message
    wsprobe.py flood WS_URL POST_URL      fill a listener's queue until POST answers 503
    wsprobe.py jwt SECRET_FILE [options]  print an HS256 JWT the broker accepts
    wsprobe.py free-ports N               print N free TCP ports on 127.0.0.1

Used by scripts/proxy-test and scripts/metrics-test. It answers every Ping with a Pong (as browsers
do), masks what it sends, and checks what it receives: server frames must be unmasked, data
messages must be binary. The last line on stdout is a summary such as
    upgraded messages=3 pings=7 seconds=7.21 end=close:4000:replaced
and the exit status says whether what was asked for (--until) happened: 0 yes, 1 no.
"""

import argparse
import base64
import hashlib
import hmac
import http.client
import json
import os
import socket
import ssl
import struct
import sys
import time
import urllib.parse

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class Failure(Exception):
    pass


class Eof(Exception):
    pass


class WebSocket:
    def __init__(self, url, cafile=None, origin=None, rcvbuf=None, timeout=10.0):
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("ws", "wss"):
            raise Failure(f"not a ws:// or wss:// URL: {url}")
        self.secure = u.scheme == "wss"
        host, port = u.hostname, u.port or (443 if self.secure else 80)
        target = (u.path or "/") + (f"?{u.query}" if u.query else "")
        family, stype, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        raw = socket.socket(family, stype, proto)
        if rcvbuf:
            # Before connect(), so that the TCP window is small from the start.
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        raw.settimeout(timeout)
        raw.connect(addr)
        if self.secure:
            ctx = ssl.create_default_context(cafile=cafile)
            raw = ctx.wrap_socket(raw, server_hostname=host)
        self.sock = raw
        self.buf = bytearray()
        key = base64.b64encode(os.urandom(16)).decode()
        host_header = u.netloc.rsplit("@", 1)[-1]
        lines = [
            f"GET {target} HTTP/1.1",
            f"Host: {host_header}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if origin:
            lines.append(f"Origin: {origin}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        while b"\r\n\r\n" not in self.buf:
            self._fill(timeout)
            if len(self.buf) > 65536:
                raise Failure("response head too long")
        head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
        self.buf = bytearray(rest)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        self.headers = {}
        for h in header_lines:
            name, _, value = h.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        if self.status == 101:
            want = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
            if self.headers.get("sec-websocket-accept") != want:
                raise Failure(f"bad Sec-WebSocket-Accept: {self.headers.get('sec-websocket-accept')!r}")
            if self.headers.get("upgrade", "").lower() != "websocket":
                raise Failure(f"101 without Upgrade: websocket ({self.headers.get('upgrade')!r})")

    def _fill(self, timeout):
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except (ssl.SSLEOFError, ConnectionResetError) as e:
            raise Eof() from e  # the peer went away without a TLS close_notify, or reset
        if not data:
            raise Eof()
        self.buf += data

    def _take(self, n, deadline):
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout()
            self._fill(left)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def send(self, opcode, payload=b""):
        head = bytearray([0x80 | opcode])
        n = len(payload)
        if n < 126:
            head.append(0x80 | n)
        elif n < 65536:
            head.append(0x80 | 126)
            head += struct.pack("!H", n)
        else:
            head.append(0x80 | 127)
            head += struct.pack("!Q", n)
        mask = os.urandom(4)
        head += mask
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(bytes(head) + masked)

    def recv_frame(self, deadline):
        """One frame: (fin, opcode, payload). Raises socket.timeout at the deadline, Eof at EOF."""
        b0, b1 = self._take(2, deadline)
        if b0 & 0x70:
            raise Failure(f"reserved bits set in a server frame (0x{b0:02x})")
        if b1 & 0x80:
            raise Failure("the server sent a masked frame")
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self._take(2, deadline))
        elif n == 127:
            (n,) = struct.unpack("!Q", self._take(8, deadline))
        # A frame that has begun arrives in full, however late the deadline.
        return bool(b0 & 0x80), b0 & 0x0F, self._take(n, max(deadline, time.monotonic() + 10))

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def write_atomic(path, data):
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def cmd_listen(a):
    start = time.monotonic()
    deadline = start + a.timeout
    ws = WebSocket(a.url, cafile=a.cafile, origin=a.origin, timeout=a.timeout)
    if a.expect_status is not None:
        if ws.status != a.expect_status:
            raise Failure(f"handshake answered {ws.status}, expected {a.expect_status}")
        print(f"status={ws.status}")
        return 0
    if ws.status != 101:
        body = bytes(ws.buf[:200]).decode("utf-8", "replace").strip()
        raise Failure(f"handshake answered {ws.status}, not 101: {body!r}")
    if a.ready:
        write_atomic(a.ready, b"upgraded\n")
    messages = pings = 0
    fragments = None
    end = None
    sent_close = False
    try:
        while True:
            try:
                fin, op, payload = ws.recv_frame(deadline)
            except socket.timeout:
                end = "timeout"
                break
            if op == OP_PING:
                pings += 1
                ws.send(OP_PONG, payload)
                if a.log_pings:
                    print(f"ping {pings} at {time.monotonic() - start:.2f} s", flush=True)
                continue
            if op == OP_PONG:
                continue
            if op == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                reason = payload[2:].decode("utf-8", "replace")
                end = f"close:{code}:{reason}"
                if not sent_close:
                    ws.send(OP_CLOSE, payload[:2])
                break
            if op in (OP_TEXT, OP_BINARY):
                if fragments is not None:
                    raise Failure("new message inside a fragmented one")
                if op == OP_TEXT:
                    raise Failure("received a text message; the broker sends binary only")
                fragments = bytearray()
            elif op == OP_CONT:
                if fragments is None:
                    raise Failure("continuation frame without a message")
            else:
                raise Failure(f"reserved opcode {op}")
            fragments += payload
            if not fin:
                continue
            messages += 1
            if a.save:
                write_atomic(os.path.join(a.save, str(messages)), bytes(fragments))
            fragments = None
            if a.until == "count" and messages >= a.count and not sent_close:
                ws.send(OP_CLOSE, struct.pack("!H", 1000))
                sent_close = True
    except Eof:
        end = "eof"
    finally:
        ws.close()
    seconds = time.monotonic() - start
    print(f"upgraded messages={messages} pings={pings} seconds={seconds:.2f} end={end}")
    if a.until == "count":
        ok = messages >= a.count and end == "close:1000:"
    elif a.until == "close":
        ok = end is not None and end.startswith("close:") and (a.close_code is None or end.split(":")[1] == str(a.close_code))
    else:  # eof
        ok = end == "eof"
    if a.count is not None and a.until != "count" and messages != a.count:
        ok = False
    if not ok:
        raise Failure(f"expected end '{a.until}' (count={a.count}, close code={a.close_code}), got messages={messages} end={end}")
    return 0


def cmd_flood(a):
    """Fills a listener's queue through a proxy: the listener stops reading (small receive buffer)
    and keeps itself alive with unsolicited Pongs; POSTs of distinct payloads go until one is
    answered 503, which must carry Retry-After. Then the listener reads again and must receive
    exactly the accepted messages, in order, byte for byte."""
    ws = WebSocket(a.ws_url, cafile=a.cafile, rcvbuf=4096, timeout=10)
    if ws.status != 101:
        raise Failure(f"handshake answered {ws.status}, not 101")
    u = urllib.parse.urlsplit(a.post_url)
    if u.scheme == "https":
        conn = http.client.HTTPSConnection(u.hostname, u.port, timeout=10, context=ssl.create_default_context(cafile=a.cafile))
    else:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    sent = []
    refused = None
    started = time.monotonic()
    for i in range(a.max_posts):
        ws.send(OP_PONG, b"")  # a sign of life, so that the broker's ping timeout does not fire
        body = struct.pack("!I", i) + hashlib.sha256(str(i).encode()).digest() * ((a.size - 4) // 32 + 1)
        body = body[: a.size]
        conn.request("POST", u.path, body=body, headers={"Content-Type": "application/octet-stream"})
        r = conn.getresponse()
        text = r.read()
        if r.status == 204:
            sent.append(body)
            continue
        if r.status == 503:
            refused = (r.getheader("Retry-After"), text.decode("utf-8", "replace").strip(), r.getheader("Content-Type"))
            break
        raise Failure(f"POST {i} answered {r.status}: {text[:200]!r}")
    fill_seconds = time.monotonic() - started
    conn.close()
    if refused is None:
        raise Failure(f"no 503 after {a.max_posts} POSTs of {a.size} bytes")
    retry_after, text, ctype = refused
    # Read again: every accepted message, in order, then nothing more.
    got = []
    fragments = bytearray()
    deadline = time.monotonic() + 30
    try:
        while len(got) < len(sent):
            fin, op, payload = ws.recv_frame(deadline)
            if op == OP_PING:
                ws.send(OP_PONG, payload)
            elif op in (OP_BINARY, OP_CONT):
                fragments += payload
                if fin:
                    got.append(bytes(fragments))
                    fragments = bytearray()
            elif op == OP_PONG:
                pass
            else:
                raise Failure(f"unexpected opcode {op} while draining")
    except (socket.timeout, Eof) as e:
        raise Failure(f"received {len(got)} of {len(sent)} accepted messages ({type(e).__name__})")
    ws.send(OP_CLOSE, struct.pack("!H", 1000))
    ws.close()
    in_order = got == sent
    print(
        f"accepted={len(sent)} size={a.size} fill_seconds={fill_seconds:.2f} retry_after={retry_after} "
        f"content_type={ctype!r} body={text!r} received={len(got)} in_order_exact={in_order}"
    )
    if retry_after is None:
        raise Failure("the 503 has no Retry-After header")
    if not in_order:
        raise Failure("the messages received differ from those accepted (order or bytes)")
    return 0


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def cmd_jwt(a):
    secret = open(a.secret_file, "rb").read()
    for nl in (b"\r\n", b"\n"):
        if secret.endswith(nl):
            secret = secret[: -len(nl)]
            break

    def ids(v):
        return [int(x) if x.isdigit() else x for x in v.split(",")] if v else []

    claims = {"listen": ids(a.listen), "send": ids(a.send), "exp": int(time.time()) + a.ttl}
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = b64url(json.dumps(claims, separators=(",", ":")).encode())
    sig = b64url(hmac.new(secret, head + b"." + body, hashlib.sha256).digest())
    print((head + b"." + body + b"." + sig).decode())
    return 0


def cmd_free_ports(a):
    socks = []
    for _ in range(a.n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    print(" ".join(str(s.getsockname()[1]) for s in socks))
    for s in socks:
        s.close()
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("listen")
    s.add_argument("url")
    s.add_argument("--cafile")
    s.add_argument("--origin")
    s.add_argument("--ready", help="file written once the upgrade succeeded")
    s.add_argument("--save", help="directory: message N is saved as DIR/N")
    s.add_argument("--until", choices=["count", "close", "eof"], default="count",
                   help="count: after --count messages send Close 1000 and expect its echo; "
                        "close: wait for the server's Close (--close-code); eof: wait for the "
                        "connection to end without a Close frame")
    s.add_argument("--count", type=int)
    s.add_argument("--close-code", type=int)
    s.add_argument("--timeout", type=float, default=30.0, help="give up after this many seconds")
    s.add_argument("--expect-status", type=int, help="only check the handshake's status code")
    s.add_argument("--log-pings", action="store_true")
    s.add_argument("--status", help="file that gets the exit status, written last")
    f = sub.add_parser("flood")
    f.add_argument("ws_url")
    f.add_argument("post_url")
    f.add_argument("--cafile")
    f.add_argument("--size", type=int, default=1048576)
    f.add_argument("--max-posts", type=int, default=300)
    j = sub.add_parser("jwt")
    j.add_argument("secret_file")
    j.add_argument("--listen", default="")
    j.add_argument("--send", default="")
    j.add_argument("--ttl", type=int, default=600)
    fp = sub.add_parser("free-ports")
    fp.add_argument("n", type=int)
    a = p.parse_args()
    if a.cmd == "listen" and a.until == "count" and a.count is None and a.expect_status is None:
        p.error("--until count needs --count")
    try:
        rc = {"listen": cmd_listen, "flood": cmd_flood, "jwt": cmd_jwt, "free-ports": cmd_free_ports}[a.cmd](a)
    except (Failure, OSError, ssl.SSLError) as e:
        print(f"wsprobe {a.cmd}: {type(e).__name__}: {e}", file=sys.stderr)
        rc = 1
    sys.stdout.flush()
    if getattr(a, "status", None):
        write_atomic(a.status, f"{rc}\n".encode())
    return rc


if __name__ == "__main__":
    sys.exit(main())
