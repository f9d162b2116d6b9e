#!/usr/bin/env python3
"""Writes the hand-made seed inputs of fuzz/corpus/TARGET/seed-*.

The byte layouts are documented at the top of each fuzz target. Run from anywhere:
    python3 fuzz/make-seeds.py
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="

POST = b"POST /42 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
CHUNKED = (b"POST /42 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
           b"Expect: 100-continue\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n")
UPGRADE = (b"GET /42 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + KEY + b"\r\n\r\n")
STATS = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def frame(opcode, payload=b"", fin=True, mask=b"\x01\x02\x03\x04"):
    """A client frame (masked unless mask is None)."""
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    m = 0x80 if mask is not None else 0
    if n < 126:
        head = bytes([b0, m | n])
    elif n < 65536:
        head = bytes([b0, m | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, m | 127]) + struct.pack(">Q", n)
    if mask is None:
        return head + payload
    return head + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(payload))


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


# http_head: [piece/seed, seed/discard mask, limits, max body] + stream.
write("http_head", "post", b"\x03\x00\x00\x10" + POST + STATS)
write("http_head", "chunked", b"\x02\x05\x00\x10" + CHUNKED + POST)
write("http_head", "upgrade", b"\x07\x00\x00\x00" + b"\r\n" + UPGRADE)
write("http_head", "small-limits", b"\x01\x00\x30\x01" + POST)


# ws_frame: [role/max/ping, close timeout] + ops.
def ws_input(data):
    return b"\x02" + struct.pack("<H", len(data)) + data


def ws_advance(ms):
    return b"\x03" + struct.pack("<H", ms)


DRAIN_ALL = b"\x04\x00"
LISTENER, ECHO = 5 << 1, 1 | 5 << 1
write("ws_frame", "listener", bytes([LISTENER, 50])
      + ws_input(frame(0x9, b"hi") + frame(0xA))
      + b"\x05\x02"  # send a 16-byte binary message
      + ws_advance(1000) + DRAIN_ALL
      + ws_input(frame(0x2, b"nope")) + DRAIN_ALL
      + ws_input(frame(0x8, b"\x03\xe8")) + DRAIN_ALL)
write("ws_frame", "echo", bytes([ECHO, 50])
      + ws_input(frame(0x1, b"hel", fin=False) + frame(0x9, b"p") + frame(0x0, b"lo"))
      + ws_input(frame(0x2, bytes(200)))
      + DRAIN_ALL + ws_advance(2500)
      + b"\x06\x80"  # close, waiting for the peer
      + ws_input(frame(0x8)) + DRAIN_ALL)
write("ws_frame", "unmasked", bytes([ECHO, 0]) + ws_input(frame(0x2, b"x", mask=None)) + DRAIN_ALL)


# connection: [auth mode/base path] + ops, tag = slot << 4 | kind.
def op(slot, kind, args=b""):
    return bytes([slot << 4 | kind]) + args


def c_input(slot, data):
    return op(slot, 2, struct.pack("<H", len(data)) + data)


def c_drain(slot):
    return op(slot, 8, b"\x00")


write("connection", "post", b"\x00"
      + op(0, 0) + c_input(0, UPGRADE) + c_drain(0)
      + op(1, 0) + c_input(1, POST + POST) + c_drain(1)
      + op(0, 9) + c_drain(0) + c_input(1, STATS) + c_drain(1) + op(1, 4))
write("connection", "chunked", b"\x00"
      + op(0, 0) + c_input(0, UPGRADE)
      + op(1, 0) + c_input(1, CHUNKED[:90]) + c_drain(1) + c_input(1, CHUNKED[90:])
      + c_drain(1) + op(0, 15) + c_drain(0))
write("connection", "websocket", b"\x00"
      + op(0, 0) + c_input(0, UPGRADE + frame(0x9, b"ping") + frame(0x2, b"x", fin=False))
      + c_drain(0) + op(0, 5, struct.pack("<H", 1000)) + c_drain(0)
      + c_input(0, frame(0x0, b"y") + frame(0x8, b"\x03\xe8bye")) + c_drain(0)
      + op(0, 4) + op(0, 5, struct.pack("<H", 400)))
write("connection", "deferred", b"\x01"
      + op(0, 0) + c_input(0, UPGRADE) + op(0, 10, b"\x00") + op(0, 9) + c_drain(0)
      + op(1, 0) + c_input(1, POST) + op(1, 10, b"\x01") + op(1, 9) + c_drain(1)
      + op(2, 0) + op(3, 0) + op(1, 0) + c_input(1, POST) + c_drain(1)
      + op(0, 6) + op(0, 15) + c_drain(0) + op(0, 5, struct.pack("<H", 3000)))
