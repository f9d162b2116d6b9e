//! docs/mailbox.md: mailboxes and replay — `202` when nobody listens, `seq` per id,
//! `GET /{id}?since=SEQ` with no gap and no duplicate at the seam, gaps told honestly, full
//! mailboxes under both policies, the TTL, and the durable store across `kill -9`.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::*;
use fedbroker_tests::*;

/// Mailbox ids 1–100 (and the topics 1000–1999, for the overlap checks).
const MAILBOX: [&str; 2] = ["--mailbox", "1-100"];

/// Bound on waiting for something the broker does asynchronously.
const WAIT: Duration = Duration::from_secs(10);

fn start(a: Adapter, extra: &[&str]) -> Broker {
    let mut args = MAILBOX.to_vec();
    args.extend_from_slice(extra);
    Broker::start(a, &args)
}

/// `POST /{id}`, which must answer `status` with `Fedbroker-Seq: seq`.
#[track_caller]
fn post_seq(broker: &Broker, id: u32, body: &[u8], status: u16, seq: u64) {
    let r = broker.post(id, body);
    r.assert_status(status);
    assert_eq!(
        r.header("fedbroker-seq"),
        Some(seq.to_string().as_str()),
        "wrong Fedbroker-Seq:\n{r:?}"
    );
}

/// An envelope listener on `path` (which may carry `?since=`).
#[track_caller]
fn envelope(broker: &Broker, path: &str) -> EnvelopeListener {
    EnvelopeListener::new(broker.listen_with(path, &[("Sec-WebSocket-Protocol", SUBPROTOCOL)]))
}

/// The next message of an envelope listener: its seq and payload.
#[track_caller]
fn next_message(l: &mut EnvelopeListener, id: u32) -> (u64, Vec<u8>) {
    let e = l.recv_kind("message");
    assert_eq!(e.uint("id"), u64::from(id), "{e:?}");
    (e.uint("seq"), e.payload.clone())
}

adapter_tests! {
    /// A mailbox id with nobody listening keeps the message: `202 Accepted`, numbered from 1;
    /// an id without a mailbox still answers `404`.
    fn kept_when_nobody_listens(a: Adapter) {
        let broker = start(a, &[]);
        post_seq(&broker, 5, b"one", 202, 1);
        post_seq(&broker, 5, b"two", 202, 2);
        post_seq(&broker, 6, b"", 202, 1);
        broker.post(500, b"x").assert_error(404);
        assert_eq!(broker.stat("mailbox_messages"), 3);
    }

    /// `since=SEQ` replays what came after SEQ, in order, then goes live: the `101` says the
    /// last seq, and a live message gets `204`.
    fn plain_replay_then_live(a: Adapter) {
        let broker = start(a, &[]);
        for (i, body) in [&b"a"[..], b"b", b"c"].iter().enumerate() {
            post_seq(&broker, 5, body, 202, i as u64 + 1);
        }
        let mut l = broker.listen_with("/5?since=1", &[]);
        assert_eq!(l.seq_header(), Some(3), "the 101 names the last seq");
        assert_eq!(l.recv(), b"b");
        assert_eq!(l.recv(), b"c");
        post_seq(&broker, 5, b"d", 204, 4);
        assert_eq!(l.recv(), b"d");
    }

    /// Without `since`, a listener of a mailbox id gets only what arrives after it connected.
    fn no_since_is_live_only(a: Adapter) {
        let broker = start(a, &[]);
        post_seq(&broker, 5, b"old", 202, 1);
        let mut l = broker.listen(5);
        assert_eq!(l.seq_header(), Some(1));
        post_seq(&broker, 5, b"new", 204, 2);
        assert_eq!(l.recv(), b"new");
    }

    /// An envelope listener gets each replayed and live message with its `seq` in the header.
    fn envelope_replay_has_seq(a: Adapter) {
        let broker = start(a, &[]);
        post_seq(&broker, 7, b"x1", 202, 1);
        post_seq(&broker, 7, b"x2", 202, 2);
        let mut l = envelope(&broker, "/7?since=0");
        assert_eq!(next_message(&mut l, 7), (1, b"x1".to_vec()));
        assert_eq!(next_message(&mut l, 7), (2, b"x2".to_vec()));
        post_seq(&broker, 7, b"x3", 204, 3);
        assert_eq!(next_message(&mut l, 7), (3, b"x3".to_vec()));
    }

    /// A listener that drops and reconnects with `since` while messages keep arriving receives
    /// every message exactly once, in order: plain listeners count from the `101`'s seq, envelope
    /// listeners read it from each header.
    fn reconnect_with_since_under_load(a: Adapter) {
        const N: u64 = 400;
        let broker = start(a, &["--mailbox-messages", "1000"]);
        let addr = broker.addr();
        let sender = std::thread::spawn(move || {
            let mut conn = Conn::connect(addr);
            for i in 1..=N {
                let r = conn.post("/9", i.to_string().as_bytes());
                assert!(r.status == 202 || r.status == 204, "POST {i}: {r:?}");
            }
        });
        let mut seen: Vec<u64> = Vec::new();
        let mut last = 0u64;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut round = 0u64;
        while last < N {
            assert!(Instant::now() < deadline, "only {last} of {N} messages after 60 s");
            round += 1;
            // Alternate plain and envelope listeners; each takes a few messages, then leaves.
            let take = 1 + (round * 7919) % 37;
            if round.is_multiple_of(2) {
                let mut l = broker.listen_with(&format!("/9?since={last}"), &[]);
                for _ in 0..take.min(N - last) {
                    let body = l.recv();
                    last += 1;
                    seen.push(String::from_utf8(body).unwrap().parse().unwrap());
                }
                drop(l);
            } else {
                let mut l = envelope(&broker, &format!("/9?since={last}"));
                for _ in 0..take.min(N - last) {
                    let (seq, body) = next_message(&mut l, 9);
                    assert_eq!(seq, last + 1, "seq follows the last one seen");
                    last = seq;
                    seen.push(String::from_utf8(body).unwrap().parse().unwrap());
                }
                drop(l);
            }
        }
        sender.join().expect("sender");
        let expected: Vec<u64> = (1..=N).collect();
        assert_eq!(seen, expected, "every message once, in order");
    }

    /// `--mailbox-full drop-oldest` (the default): a full mailbox drops its oldest message; a
    /// replay from before tells an envelope listener with a `gap` event, and refuses a plain
    /// listener with `410` naming where to resume.
    fn drop_oldest_reports_the_gap(a: Adapter) {
        let broker = start(a, &["--mailbox-messages", "3"]);
        for i in 1..=5u64 {
            post_seq(&broker, 4, format!("m{i}").as_bytes(), 202, i);
        }
        assert_eq!(broker.stat("mailbox_dropped"), 2);
        assert_eq!(broker.stat("mailbox_messages"), 3);
        let mut l = envelope(&broker, "/4?since=0");
        let gap = l.recv_kind("gap");
        assert_eq!((gap.uint("id"), gap.uint("from"), gap.uint("to")), (4, 1, 2), "{gap:?}");
        for seq in 3..=5 {
            assert_eq!(next_message(&mut l, 4), (seq, format!("m{seq}").into_bytes()));
        }
        drop(l);
        let refused = upgrade_with(&broker, "/4?since=0", &[]);
        refused.assert_error(410);
        assert_eq!(refused.header("fedbroker-seq"), Some("2"), "{refused:?}");
        let mut plain = broker.listen_with("/4?since=2", &[]);
        assert_eq!(plain.recv(), b"m3");
    }

    /// `--mailbox-full refuse`: a full mailbox answers `507` (with `Retry-After`) rather than drop
    /// a message nobody has received; once they were delivered, the oldest make room.
    fn refuse_policy_answers_507(a: Adapter) {
        let broker = start(a, &["--mailbox-messages", "2", "--mailbox-full", "refuse"]);
        post_seq(&broker, 3, b"a", 202, 1);
        post_seq(&broker, 3, b"b", 202, 2);
        let r = broker.post(3, b"c");
        r.assert_error(507);
        assert!(r.header("retry-after").is_some(), "{r:?}");
        assert_eq!(broker.stat("mailbox_refused"), 1);
        let mut l = broker.listen_with("/3?since=0", &[]);
        assert_eq!(l.recv(), b"a");
        assert_eq!(l.recv(), b"b");
        post_seq(&broker, 3, b"c", 204, 3);
        assert_eq!(l.recv(), b"c");
    }

    /// A plain listener that falls behind a drop-oldest mailbox (it does not read) is closed with
    /// `4002` once it reaches the messages that were dropped under it.
    fn lagging_plain_listener_closed_4002(a: Adapter) {
        let broker = start(a, &["--mailbox-messages", "4"]);
        let mut l = broker.listen(8);
        let mut conn = broker.connect();
        // 48 × 256 KiB = 12 MiB: far beyond what socket buffers hold for a reader that is away.
        for seed in 0..48 {
            let r = conn.post("/8", &random_bytes(seed, 256 * 1024));
            assert!(r.status == 204, "{r:?}");
        }
        l.set_read_timeout(WAIT);
        let (code, reason, _messages) = l.expect_close_after_messages();
        assert_eq!(code, 4002, "close reason {reason:?}");
    }

    /// `since` must be a number, needs a mailbox id, and may not be ahead of the last seq
    /// (`409`, naming the last seq: the mailbox was reset).
    fn since_refusals(a: Adapter) {
        let broker = start(a, &[]);
        upgrade_with(&broker, "/5?since=abc", &[]).assert_error(400);
        upgrade_with(&broker, "/5?since=", &[]).assert_error(400);
        upgrade_with(&broker, "/500?since=0", &[]).assert_error(400);
        post_seq(&broker, 5, b"x", 202, 1);
        let r = upgrade_with(&broker, "/5?since=9", &[]);
        r.assert_error(409);
        assert_eq!(r.header("fedbroker-seq"), Some("1"), "{r:?}");
    }

    /// `--mailbox-ttl`: a message older than the TTL is dropped, and a replay says so.
    fn ttl_drops_old_messages(a: Adapter) {
        let broker = start(a, &["--mailbox-ttl", "1s"]);
        post_seq(&broker, 2, b"soon gone", 202, 1);
        std::thread::sleep(Duration::from_millis(2200));
        post_seq(&broker, 2, b"fresh", 202, 2);
        let mut l = envelope(&broker, "/2?since=0");
        let gap = l.recv_kind("gap");
        assert_eq!((gap.uint("from"), gap.uint("to")), (1, 1), "{gap:?}");
        assert_eq!(next_message(&mut l, 2), (2, b"fresh".to_vec()));
        assert_eq!(broker.stat("mailbox_dropped"), 1);
    }

    /// A multi-target send reports `202` and the seq for a mailbox id nobody listens on.
    fn multi_target_reports_kept(a: Adapter) {
        let broker = start(a, &[]);
        let mut l = broker.listen(500);
        let r = broker.connect().post("/5,500", b"hi");
        r.assert_status(207);
        assert_eq!(
            r.json(),
            json!({"results": [{"id": 5, "status": 202, "seq": 1}, {"id": 500, "status": 204}]})
        );
        assert_eq!(l.recv(), b"hi");
    }

    /// A request-reply to a mailbox id takes a seq, which replay skips without reporting a gap.
    fn request_seq_is_not_a_gap(a: Adapter) {
        let broker = start(a, &[]);
        let mut l = envelope(&broker, "/6");
        let addr = broker.addr();
        let asker = std::thread::spawn(move || Conn::connect(addr).post("/6?reply=5000", b"ping"));
        let request = l.recv_kind("request");
        assert_eq!(request.uint("seq"), 1);
        l.reply(1, 200, None, json!(1), b"pong").assert_ack(&json!(1), 200);
        let answered = asker.join().unwrap();
        answered.assert_status(200);
        post_seq(&broker, 6, b"after", 204, 2);
        assert_eq!(next_message(&mut l, 6), (2, b"after".to_vec()));
        drop(l);
        let mut again = envelope(&broker, "/6?since=0");
        assert_eq!(next_message(&mut again, 6), (2, b"after".to_vec()));
    }

    /// Bad mailbox settings stop the broker at startup with one line naming the flag.
    fn bad_mailbox_settings_exit_2(a: Adapter) {
        for (args, needle) in [
            (&["--mailbox", "1-10", "--topics", "5-20"][..], "--mailbox"),
            (&["--store", "/tmp/x"], "--store"),
            (&["--mailbox-ttl", "5m"], "--mailbox-ttl"),
            (&["--mailbox", "1", "--mailbox-ttl", "soon"], "--mailbox-ttl"),
            (&["--mailbox", "1", "--mailbox-full", "maybe"], "--mailbox-full"),
            (&["--mailbox", "1", "--store-sync", "never"], "--store-sync"),
            (&["--mailbox", "1", "--mailbox-bytes", "10"], "--mailbox-bytes"),
            (&["--mailbox", "x"], "--mailbox"),
        ] {
            let out = run_cli(a, args);
            assert_eq!(out.code(), 2, "{args:?}: {out:?}");
            assert!(out.stderr.contains(needle), "{args:?}: {}", out.stderr);
            assert_eq!(out.stderr.trim_end().lines().count(), 1, "{args:?}: {}", out.stderr);
        }
    }

    /// The statistics carry the mailbox figures, also in Prometheus form.
    fn statistics_show_mailboxes(a: Adapter) {
        let broker = start(a, &[]);
        post_seq(&broker, 5, b"12345", 202, 1);
        assert_eq!(broker.stat("mailbox_messages"), 1);
        assert_eq!(broker.stat("mailbox_bytes"), 5 + 64);
        for key in ["mailbox_dropped", "mailbox_refused", "store_errors"] {
            assert_eq!(broker.stat(key), 0, "{key}");
        }
        let metrics = String::from_utf8(broker.get("/metrics").body).unwrap();
        assert!(metrics.contains("fedbroker_mailbox_messages 1"), "{metrics}");
    }

    // ---- §5 durable mailboxes: --store ----

    /// Messages answered `202` survive `kill -9` under `--store-sync always`: the restarted broker
    /// replays every one, byte for byte, and numbering goes on after the last seq.
    fn durable_across_kill_9(a: Adapter) {
        let dir = TempDir::new();
        let store = dir.path().join("store").display().to_string();
        let args = ["--mailbox", "1-100", "--store", store.as_str(), "--store-sync", "always"];
        let mut broker = Broker::start(a, &args);
        for i in 1..=40u64 {
            post_seq(&broker, 5, &random_bytes(i, 100 + i as usize), 202, i);
        }
        post_seq(&broker, 6, b"six", 202, 1);
        broker.signal(libc::SIGKILL);
        broker.wait_exit(WAIT);
        let broker = Broker::start(a, &args);
        assert_eq!(broker.stat("mailbox_messages"), 41);
        let mut l = envelope(&broker, "/5?since=0");
        for i in 1..=40u64 {
            assert_eq!(next_message(&mut l, 5), (i, random_bytes(i, 100 + i as usize)));
        }
        post_seq(&broker, 5, b"after", 204, 41);
        assert_eq!(next_message(&mut l, 5), (41, b"after".to_vec()));
        let mut six = broker.listen_with("/6?since=0", &[]);
        assert_eq!(six.recv(), b"six");
    }

    /// A broker killed while senders are busy keeps everything it acknowledged, in order, under
    /// both sync policies (a process crash leaves the written data to the kernel; `batch` only
    /// risks a power loss); seqs it gave are never given again.
    fn acknowledged_messages_survive_a_kill_under_load(a: Adapter) {
        for sync in ["always", "batch"] {
            let dir = TempDir::new();
            let store = dir.path().join("store").display().to_string();
            let args = ["--mailbox", "1-100", "--store", store.as_str(), "--store-sync", sync];
            let mut broker = Broker::start(a, &args);
            let addr = broker.addr();
            let senders: Vec<_> = (1..=4u32)
                .map(|id| {
                    std::thread::spawn(move || {
                        // Sends until the broker is gone; returns (seq, body) of every 202.
                        let mut acked = Vec::new();
                        let Ok(mut conn) = Conn::try_connect(addr) else { return acked };
                        for i in 0..5000u64 {
                            let body = format!("{id}:{i}");
                            match conn.try_post(&format!("/{id}"), body.as_bytes()) {
                                Ok(r) if r.status == 202 => {
                                    let seq: u64 = r.header("fedbroker-seq").unwrap().parse().unwrap();
                                    acked.push((seq, body));
                                }
                                Ok(r) => panic!("{sync}: POST {body}: {r:?}"),
                                Err(_) => break,
                            }
                        }
                        acked
                    })
                })
                .collect();
            // Kill once every sender has had answers.
            eventually(WAIT, "some messages acknowledged", || {
                (broker.stat("mailbox_messages") >= 200).then_some(())
            });
            broker.signal(libc::SIGKILL);
            broker.wait_exit(WAIT);
            let acked: Vec<Vec<(u64, String)>> = senders.into_iter().map(|s| s.join().unwrap()).collect();
            let broker = Broker::start(a, &args);
            for (k, acked) in acked.iter().enumerate() {
                let id = k as u32 + 1;
                assert!(!acked.is_empty(), "{sync}: sender {id} got no answer before the kill");
                let mut l = envelope(&broker, &format!("/{id}?since=0"));
                let last = acked.last().unwrap().0;
                let mut got = Vec::new();
                while got.last().is_none_or(|(s, _)| *s < last) {
                    got.push(next_message(&mut l, id));
                }
                for (seq, body) in acked {
                    let found = got.iter().find(|(s, _)| s == seq);
                    assert_eq!(
                        found.map(|(_, b)| b.as_slice()),
                        Some(body.as_bytes()),
                        "{sync}: acknowledged message {seq} on id {id} lost after kill -9"
                    );
                }
                let next = broker.post(id, b"next");
                let seq: u64 = next.header("fedbroker-seq").unwrap().parse().unwrap();
                assert!(seq > last, "{sync}: seq {seq} reused after restart (last acked {last})");
            }
        }
    }

    /// One store, one broker: a second broker on the same `--store` is refused at start.
    fn store_in_use_is_refused(a: Adapter) {
        let dir = TempDir::new();
        let store = dir.path().join("store").display().to_string();
        let _first = Broker::start(a, &["--mailbox", "1-100", "--store", store.as_str()]);
        let out = run_cli(a, &["--listen", "127.0.0.1:0", "--mailbox", "1-100", "--store", store.as_str()]);
        assert_ne!(out.code(), 0, "{out:?}");
        assert!(out.stderr.contains("--store"), "{}", out.stderr);
    }
}
