#!/usr/bin/env python3
"""Interop check: another language's WebSocket library (Python `websockets`) and `curl` drive a
short scripted session against each broker binary, as a user of those tools would.

    target/test-venv/bin/python tests/interop/interop.py                  # the four debug binaries
    target/test-venv/bin/python tests/interop/interop.py --adapters tokio --bin-dir target/release

Per binary (fedbroker-tokio, -smol, -std, -mio; built by `cargo build --workspace --bins`), on a
broker of its own on 127.0.0.1 port 0:
  1. send/listen: a websockets listener on /42 (no subprotocol); curl POSTs random bytes (204);
     the listener gets them byte for byte as one binary message;
  2. 404: curl POSTs to an id nobody listens on: 404 with the sentence `no listener on id 43`;
  3. envelope: a websockets listener on /50 asking for the subprotocol fedbroker.v1 gets it; a curl
     POST reaches it as `u16 length | JSON header {type: message, seq: 1, id: 50} | payload`;
     it then sends `{"type": "send", "to": 51, "ref": 7}` + payload, is answered with an `ack`
     (ref 7, status 204), and the plain listener on /51 receives the payload;
  4. the fedbroker client (client/, from the same directory): `fedbroker send` to a websockets
     listener, and `fedbroker listen` receiving a curl POST.
One PASS/FAIL line per check; last line "N passed, M failed"; exit status 0 only if none failed.
Everything is on loopback, every wait bounded (10 s), and every broker stopped at the end.
"""

import argparse
import json
import os
import re
import select
import struct
import subprocess
import sys
import tempfile

from websockets.sync.client import connect

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT = 10
PASSED = FAILED = 0


class Broker:
    def __init__(self, binary):
        self.proc = subprocess.Popen(
            [binary, "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        ready, _, _ = select.select([self.proc.stdout], [], [], TIMEOUT)
        line = self.proc.stdout.readline() if ready else ""
        m = re.match(r"listening on http://(127\.0\.0\.1:\d+)$", line.strip())
        if not m:
            self.stop()
            raise RuntimeError(f"{binary} did not print its listening line: {line!r}")
        self.addr = m.group(1)
        self.binary = binary

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def listen(broker, path, subprotocols=None):
    # proxy=None: loopback only, whatever proxy the environment names.
    return connect(
        f"ws://{broker.addr}{path}", subprotocols=subprotocols, open_timeout=TIMEOUT, close_timeout=2, proxy=None
    )


def curl_post(broker, path, body, tmp):
    """POSTs body with curl; returns (status, response body)."""
    src = os.path.join(tmp, "body")
    out = os.path.join(tmp, "out")
    with open(src, "wb") as f:
        f.write(body)
    r = subprocess.run(
        ["curl", "-sS", "--noproxy", "*", "--max-time", str(TIMEOUT), "-o", out, "-w", "%{http_code}",
         "--data-binary", f"@{src}", f"http://{broker.addr}{path}"],
        capture_output=True, text=True, timeout=TIMEOUT + 5,
    )
    if r.returncode != 0:
        raise AssertionError(f"curl failed: {r.stderr.strip()}")
    with open(out, "rb") as f:
        return int(r.stdout), f.read()


def expect(cond, msg):
    if not cond:
        raise AssertionError(msg)


def envelope(frame):
    """Splits an envelope frame: (header dict, payload)."""
    expect(isinstance(frame, bytes), f"envelope frames are binary, got {type(frame).__name__}")
    expect(len(frame) >= 2, "frame shorter than its length prefix")
    (n,) = struct.unpack(">H", frame[:2])
    return json.loads(frame[2:2 + n]), frame[2 + n:]


def encode(header, payload=b""):
    h = json.dumps(header).encode()
    return struct.pack(">H", len(h)) + h + payload


def c_send_listen(broker, tmp):
    body = os.urandom(5000) + b"\x00\xff"
    with listen(broker, "/42") as ws:
        status, _ = curl_post(broker, "/42", body, tmp)
        expect(status == 204, f"POST answered {status}")
        got = ws.recv(timeout=TIMEOUT)
        expect(isinstance(got, bytes), "a binary message")
        expect(got == body, f"{len(got)} bytes received, {len(body)} sent")
    return f"{len(body)} random bytes, curl 204, websockets got them intact"


def c_no_listener(broker, tmp):
    status, text = curl_post(broker, "/43", b"x", tmp)
    expect(status == 404, f"POST answered {status}")
    expect(text.strip() == b"no listener on id 43", f"body {text!r}")
    return "404 no listener on id 43"


def c_envelope(broker, tmp):
    with listen(broker, "/50", ["fedbroker.v1"]) as env, listen(broker, "/51") as plain:
        expect(env.subprotocol == "fedbroker.v1", f"negotiated {env.subprotocol!r}")
        status, _ = curl_post(broker, "/50", b"to the envelope", tmp)
        expect(status == 204, f"POST answered {status}")
        header, payload = envelope(env.recv(timeout=TIMEOUT))
        expect(header.get("type") == "message" and header.get("seq") == 1 and header.get("id") == 50, f"header {header}")
        expect(payload == b"to the envelope", f"payload {payload!r}")

        env.send(encode({"type": "send", "to": 51, "ref": 7}, b"from the envelope"))
        header, payload = envelope(env.recv(timeout=TIMEOUT))
        expect(header.get("type") == "ack" and header.get("ref") == 7 and header.get("status") == 204, f"answer {header}")
        got = plain.recv(timeout=TIMEOUT)
        expect(got == b"from the envelope", f"listener 51 got {got!r}")
    return "subprotocol fedbroker.v1, header seq 1, send to 51 acknowledged (204) and received"


def c_client(broker, tmp):
    """The fedbroker client (client/) against this binary: send to a websockets listener, and
    listen for a curl POST."""
    client = os.path.join(os.path.dirname(broker.binary), "fedbroker")
    with listen(broker, "/60") as ws:
        r = subprocess.run([client, "send", f"http://{broker.addr}/60"], input=b"client to websockets",
                           capture_output=True, timeout=TIMEOUT)
        expect(r.returncode == 0, f"fedbroker send exit {r.returncode}: {r.stderr.decode().strip()}")
        expect(ws.recv(timeout=TIMEOUT) == b"client to websockets", "websockets listener got other bytes")
    proc = subprocess.Popen([client, "listen", f"http://{broker.addr}/61", "--count", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        ready, _, _ = select.select([proc.stderr], [], [], TIMEOUT)
        line = proc.stderr.readline() if ready else b""
        expect(b"listening on" in line, f"fedbroker listen said {line!r}")
        status, _ = curl_post(broker, "/61", b"curl to the client", tmp)
        expect(status == 204, f"POST answered {status}")
        out, _ = proc.communicate(timeout=TIMEOUT)
        expect(proc.returncode == 0 and out == b"curl to the client", f"exit {proc.returncode}, stdout {out!r}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return "fedbroker send to websockets, curl to fedbroker listen"


def main():
    global PASSED, FAILED
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bin-dir", default=os.environ.get("FEDBROKER_BIN_DIR", os.path.join(ROOT, "target/debug")))
    p.add_argument("--adapters", default="tokio,smol,std,mio")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="fedbroker-interop.") as tmp:
        for adapter in args.adapters.split(","):
            binary = os.path.join(args.bin_dir, f"fedbroker-{adapter}")
            try:
                broker = Broker(binary)
            except Exception as e:
                FAILED += 1
                print(f"FAIL  {adapter}: start — {e}")
                continue
            try:
                for name, check in [("send/listen", c_send_listen), ("404", c_no_listener), ("envelope", c_envelope),
                                    ("fedbroker client", c_client)]:
                    try:
                        detail = check(broker, tmp)
                        PASSED += 1
                        print(f"PASS  {adapter}: {name} — {detail}")
                    except Exception as e:
                        FAILED += 1
                        print(f"FAIL  {adapter}: {name} — {type(e).__name__}: {e}")
            finally:
                broker.stop()
    print(f"\n{PASSED} passed, {FAILED} failed")
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
