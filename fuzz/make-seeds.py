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


def envelope_message(header, payload=b""):
    """A fedbroker.v1 message: u16 BE header length, JSON header, payload."""
    return struct.pack(">H", len(header)) + header + payload


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


# connection: [auth mode/base path/..., patterns: topics/reply limits/watch limit] + ops,
# tag = slot << 4 | kind.
def params(flags=0, patterns=0):
    return bytes([flags, patterns])


def op(slot, kind, args=b""):
    return bytes([slot << 4 | kind]) + args


def c_input(slot, data):
    return op(slot, 2, struct.pack("<H", len(data)) + data)


def c_drain(slot):
    return op(slot, 8, b"\x00")


write("connection", "post", params()
      + op(0, 0) + c_input(0, UPGRADE) + c_drain(0)
      + op(1, 0) + c_input(1, POST + POST) + c_drain(1)
      + op(0, 9) + c_drain(0) + c_input(1, STATS) + c_drain(1) + op(1, 4))
write("connection", "chunked", params()
      + op(0, 0) + c_input(0, UPGRADE)
      + op(1, 0) + c_input(1, CHUNKED[:90]) + c_drain(1) + c_input(1, CHUNKED[90:])
      + c_drain(1) + op(0, 15) + c_drain(0))
write("connection", "websocket", params()
      + op(0, 0) + c_input(0, UPGRADE + frame(0x9, b"ping") + frame(0x2, b"x", fin=False))
      + c_drain(0) + op(0, 5, struct.pack("<H", 1000)) + c_drain(0)
      + c_input(0, frame(0x0, b"y") + frame(0x8, b"\x03\xe8bye")) + c_drain(0)
      + op(0, 4) + op(0, 5, struct.pack("<H", 400)))
write("connection", "deferred", params(1)
      + op(0, 0) + c_input(0, UPGRADE) + op(0, 10, b"\x00") + op(0, 9) + c_drain(0)
      + op(1, 0) + c_input(1, POST) + op(1, 10, b"\x01") + op(1, 9) + c_drain(1)
      + op(2, 0) + op(3, 0) + op(1, 0) + c_input(1, POST) + c_drain(1)
      + op(0, 6) + op(0, 15) + c_drain(0) + op(0, 5, struct.pack("<H", 3000)))


def upgrade(path=b"/42", protocol=None):
    h = (b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + KEY + b"\r\n")
    if protocol is not None:
        h += b"Sec-WebSocket-Protocol: " + protocol + b"\r\n"
    return h + b"\r\n"


def post(path, body=b""):
    return b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body


def env(header, payload=b""):
    """A masked binary frame holding one envelope message; the mask key is zero, so the JSON
    stays readable and the dictionary's tokens fit into it."""
    return frame(0x2, envelope_message(header, payload), mask=b"\0\0\0\0")


def c_advance(ms):
    return op(0, 5, struct.pack("<H", ms))


V1 = b"fedbroker.v1"
# Two envelope listeners; sends between them, refusals that keep the connection, then a text
# message (closed with 1003).
write("connection", "envelope", params()
      + op(0, 0) + c_input(0, upgrade(b"/42", V1)) + c_drain(0)
      + op(1, 0) + c_input(1, upgrade(b"/7", b"mqtt, " + V1)) + c_drain(1)
      + c_input(0, env(b'{"type":"send","to":7,"ref":1}', b"hi") + env(b'{"type":"send","to":8,"ref":"x"}'))
      + c_drain(0) + op(1, 9) + c_drain(1)
      + c_input(1, env(b'{"type":"send","to":42}', b"back") + env(b"not json") + env(b'{"type":"nope","ref":[1]}')
                + frame(0x2, b"\x00") + env(b'{"type":"reply","reply_to":1,"status":204}', b"x"))
      + c_drain(1) + op(0, 9) + c_drain(0)
      + c_input(0, frame(0x1, b"text")) + c_drain(0)
      + op(2, 0) + c_input(2, upgrade(b"/9", b"fedbroker.v2")) + c_drain(2))
# Request-reply: answered, timed out (504), answered too late (error 404), listener gone (502).
write("connection", "reply", params()
      + op(0, 0) + c_input(0, upgrade(b"/7", V1)) + c_drain(0)
      + op(1, 0) + c_input(1, post(b"/7?reply=50", b"question")) + op(0, 9) + c_drain(0)
      + c_input(0, env(b'{"type":"reply","reply_to":1,"status":201,"content_type":"text/plain","ref":2}', b"answer"))
      + c_drain(0) + op(1, 9) + c_drain(1)
      + c_input(1, post(b"/7?reply=50", b"q2")) + op(0, 9) + c_drain(0) + c_advance(100) + c_drain(1)
      + c_input(0, env(b'{"type":"reply","reply_to":2,"status":200}')) + c_drain(0)
      + c_input(1, post(b"/7?reply=60000", b"q3")) + op(0, 9) + op(0, 12) + op(1, 9) + c_drain(1)
      + c_input(1, post(b"/7?reply=0") + post(b"/7?reply")) + c_drain(1))
# At most one request waits (max_pending_replies 1): the second gets 503; the first times out.
write("connection", "reply-limit", params(0, 0x04)
      + op(0, 0) + c_input(0, upgrade(b"/7", V1))
      + op(1, 0) + c_input(1, post(b"/7?reply=300", b"a"))
      + op(2, 0) + c_input(2, post(b"/7?reply=300", b"b")) + c_drain(2)
      + op(0, 15) + c_drain(0) + c_advance(400) + c_drain(1) + op(1, 12) + op(0, 4))
# Topics 40-49: a plain and an envelope listener on topic 42, fan-out, a multi-target send, then
# more messages than the queue holds (the listeners are closed as too slow).
write("connection", "topics", params(0, 0x01)
      + op(0, 0) + c_input(0, upgrade(b"/42")) + c_drain(0)
      + op(1, 0) + c_input(1, upgrade(b"/42", V1)) + c_drain(1)
      + op(2, 0) + c_input(2, post(b"/42", b"all") + post(b"/42,7,41", b"many") + post(b"/42?reply=9"))
      + c_drain(2) + op(0, 15) + c_drain(0) + c_drain(1)
      + c_input(2, post(b"/42", b"1") * 6) + c_drain(2) + op(0, 15) + c_drain(0) + c_drain(1))
# Multi-target sends: partly delivered (207), a repeat, an empty element, with ?reply=.
write("connection", "multi", params()
      + op(0, 0) + c_input(0, upgrade(b"/2")) + c_drain(0)
      + op(1, 0) + c_input(1, post(b"/1,2,3", b"x") + post(b"/2,3,2") + post(b"/1,,2") + post(b"/2,3?reply=5"))
      + c_drain(1) + op(0, 15) + c_drain(0))
# Presence: watch 7 and 8, 7 comes and goes, unwatch, then more ids than max_watch (4).
write("connection", "watch", params()
      + op(0, 0) + c_input(0, upgrade(b"/42", V1) + env(b'{"type":"watch","ids":[7,8,7],"ref":1}')) + c_drain(0)
      + op(1, 0) + c_input(1, upgrade(b"/7")) + op(0, 9) + c_drain(0) + op(1, 12) + op(0, 9) + c_drain(0)
      + c_input(0, env(b'{"type":"unwatch","ids":[7],"ref":2}') + env(b'{"type":"watch","ids":[1,2,3,4,5]}'))
      + c_drain(0) + op(0, 6) + op(0, 15) + c_drain(0))
# Deferred decisions for an envelope listener's send and watch (allowed, then refused).
write("connection", "envelope-deferred", params(1)
      + op(0, 0) + c_input(0, upgrade(b"/42", V1)) + op(0, 10, b"\x00") + op(0, 9) + c_drain(0)
      + c_input(0, env(b'{"type":"send","to":42,"ref":"self"}', b"me")) + op(0, 10, b"\x00") + op(0, 9) + c_drain(0)
      + c_input(0, env(b'{"type":"watch","ids":[5,6],"ref":3}')) + op(0, 10, b"\x00") + op(0, 9)
      + op(0, 10, b"\x03") + op(0, 9) + c_drain(0) + c_advance(2500) + c_drain(0))



# A hand-made reproducer kept in regressions/ (see fuzz/README.md, open findings): topic 42's
# envelope listener watches 7 and does not read; four messages fill its queue; a listener on 7
# overflows it with the "online" event (closed as too slow, counted once), then a fifth message
# to the topic finds it closed and counts it again.
def write_regression(target, name, data):
    d = os.path.join(HERE, "regressions", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


write_regression("connection", "slow-listener-counted-twice", params(0, 0x01)
                 + op(0, 0) + c_input(0, upgrade(b"/42", V1) + env(b'{"type":"watch","ids":[7]}')) + c_drain(0)
                 + op(1, 0) + c_input(1, post(b"/42", b"m") * 4)
                 + op(2, 0) + c_input(2, upgrade(b"/7")) + c_drain(2)
                 + c_input(1, post(b"/42", b"m")) + c_drain(1) + op(0, 9) + c_drain(0))


# envelope: [mode] + an envelope message (mode bit 0 clear) or Sec-WebSocket-Protocol lines.


write("envelope", "send", b"\x00" + envelope_message(b'{"type":"send","to":7,"ref":"a1"}', b"hello"))
write("envelope", "reply", b"\x02" + envelope_message(
    b'{"type":"reply","reply_to":3,"status":201,"content_type":"text/plain","ref":[1,{"x":null}]}', b"done"))
write("envelope", "reply-204", b"\x00" + envelope_message(b'{"type":"reply","reply_to":1,"status":204}'))
write("envelope", "watch", b"\x00" + envelope_message(b'{"type":"watch","ids":[7,8,7,2147483647],"ref":5}'))
write("envelope", "unwatch", b"\x02" + envelope_message(b'{ "ids" : [ 1E0 , 8 ] , "type" : "unwatch" }'))
write("envelope", "garbage", b"\x00" + envelope_message(b'{"type":"send","to":07}', b"x"))
write("envelope", "negotiate", b"\x01" + b"mqtt, fedbroker.v2\n\t fedbroker.v1 ,\n,")


# targets: [mode] + a list (mode bit 0 clear) or [u16 LE count, one byte per element].
write("targets", "list", b"\x00" + b"1,2,3,2147483647,42")
write("targets", "duplicate", b"\x00" + b"9,7,8,7,9")
write("targets", "built", b"\x01" + struct.pack("<H", 1025) + b"\x00\x00\x03\x49\x4a\xe3,9,")


# store_record: [u32 BE id, u64 BE seq] (zero-padded when short) + a stored value
# (version 1, u64 BE at_ms, kind 0 message / 1 skip, payload).
KEY42 = struct.pack(">IQ", 42, 7)
write("store_record", "message", KEY42 + b"\x01" + struct.pack(">Q", 1764950400000) + b"\x00" + b"hello")
write("store_record", "skip", KEY42 + b"\x01" + struct.pack(">Q", 0) + b"\x01")
write("store_record", "unknown-version", KEY42 + b"\x02" + struct.pack(">Q", 1) + b"\x00x")
