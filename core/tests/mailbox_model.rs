//! The mailbox state (`fedbroker_core::mailbox::History`) against a simple model, under random
//! operation sequences with injected time: bounds, seq numbering, TTL, both full policies, store
//! writes that settle late or fail, and readers that reconnect from any seq they saw.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use fedbroker_core::mailbox::{
    Budget, FullPolicy, History, MailboxConfig, Read, Refused, Restored, StartError, ENTRY_OVERHEAD,
};
use fedbroker_core::reply_channel;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    /// A message of `len` bytes, `pending` in a store when set.
    Append { len: usize, pending: bool },
    /// A seq taken by a request (not kept).
    Skip,
    /// A request for the connected reader: read once, in seq order, never replayed.
    Request,
    /// The store answers its oldest pending write.
    Settle { ok: bool },
    /// The reader takes up to `n` reads.
    Read { n: usize },
    /// The reader reconnects after a seq it saw (index into what it saw), or live.
    Reconnect { pick: Option<usize> },
    /// Time passes.
    Wait { ms: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..200, any::<bool>()).prop_map(|(len, pending)| Op::Append { len, pending }),
        1 => Just(Op::Skip),
        1 => Just(Op::Request),
        2 => prop_oneof![3 => Just(true), 1 => Just(false)].prop_map(|ok| Op::Settle { ok }),
        3 => (1usize..6).prop_map(|n| Op::Read { n }),
        1 => proptest::option::of(0usize..64).prop_map(|pick| Op::Reconnect { pick }),
        1 => (0u64..4000).prop_map(|ms| Op::Wait { ms }),
    ]
}

/// What the model knows of each seq.
#[derive(Clone, Debug, PartialEq)]
enum Fate {
    Kept {
        at: u64,
        len: usize,
        pending: bool,
    },
    Failed,
    Skip,
    /// A request not read yet (dropped with the rest when older than the TTL).
    Request {
        at: u64,
    },
    Dropped,
}

struct Model {
    cfg: MailboxConfig,
    fates: BTreeMap<u64, Fate>,
    last: u64,
    /// Seqs a reader received, for the delivered-before-refuse rule.
    delivered_through: u64,
}

impl Model {
    fn kept(&self) -> impl Iterator<Item = (u64, usize)> + '_ {
        self.fates.iter().filter_map(|(s, f)| match f {
            Fate::Kept { len, .. } => Some((*s, *len)),
            _ => None,
        })
    }

    fn bytes(&self) -> usize {
        self.kept().map(|(_, l)| l + ENTRY_OVERHEAD).sum()
    }

    fn expire(&mut self, now: u64) {
        let ttl = self.cfg.ttl.as_millis() as u64;
        for f in self.fates.values_mut() {
            match f {
                Fate::Kept { at, .. } if *at + ttl <= now => *f = Fate::Dropped,
                Fate::Request { at } if *at + ttl <= now => *f = Fate::Skip,
                _ => {}
            }
        }
    }

    /// The oldest entry still held (kept or a not-yet-trimmed skip/failure) decides what is
    /// dropped first; the model drops kept messages oldest first.
    fn oldest_kept(&self) -> Option<u64> {
        self.kept().next().map(|(s, _)| s)
    }
}

/// Seqs `from..to` that a read passed over without a word: they must never have been messages
/// (only requests' seqs, failed writes, or nothing the model knows).
fn pass_over(m: &Model, got: &mut Vec<u64>, from: u64, to: u64) {
    for s in from..to {
        assert!(
            matches!(m.fates.get(&s), Some(Fate::Skip | Fate::Failed) | None),
            "seq {s} passed over silently: {:?}",
            m.fates.get(&s)
        );
        got.push(s);
    }
}

fn run(ops: Vec<Op>, max_messages: usize, max_bytes: usize, full: FullPolicy) {
    let cfg = MailboxConfig {
        max_messages,
        max_bytes,
        max_total_bytes: usize::MAX,
        ttl: Duration::from_secs(5),
        full,
        ..MailboxConfig::default()
    };
    let budget = Budget::default();
    let mut h = History::new(0);
    let mut m = Model {
        cfg: cfg.clone(),
        fates: BTreeMap::new(),
        last: 0,
        delivered_through: 0,
    };
    let mut now = 1_000u64;
    let mut pending: VecDeque<u64> = VecDeque::new();
    // The reader: its cursor, and every seq it got (message or gap) since it last connected.
    let mut cursor = h.start(None).unwrap();
    let mut since: u64 = 0;
    let mut got: Vec<u64> = Vec::new();
    let mut seen: Vec<u64> = Vec::new();
    // The senders of requests, kept waiting.
    let mut waiting = Vec::new();

    for op in ops {
        match op {
            Op::Append { len, pending: p } => {
                m.expire(now);
                let charge = len + ENTRY_OVERHEAD;
                let payload = Bytes::from(vec![len as u8; len]);
                match h.append(&cfg, &budget, now, None, Some(payload), p) {
                    Ok(a) => {
                        m.last += 1;
                        assert_eq!(a.seq, m.last, "seqs are consecutive");
                        // Make room in the model as the policy says.
                        while m.kept().count() >= max_messages || m.bytes() + charge > max_bytes {
                            let oldest = m.oldest_kept().expect("room can be made");
                            if full == FullPolicy::Refuse {
                                assert!(oldest <= m.delivered_through, "refuse drops only delivered");
                            }
                            m.fates.insert(oldest, Fate::Dropped);
                        }
                        m.fates.insert(
                            a.seq,
                            Fate::Kept {
                                at: now,
                                len,
                                pending: p,
                            },
                        );
                        if p {
                            pending.push_back(a.seq);
                        }
                    }
                    Err(Refused::Full) => {
                        assert_eq!(full, FullPolicy::Refuse, "drop-oldest always makes room");
                        // Dropping every delivered message from the front would not make room.
                        let mut kept: Vec<(u64, usize)> = m.kept().collect();
                        while kept.len() >= max_messages
                            || kept.iter().map(|(_, l)| l + ENTRY_OVERHEAD).sum::<usize>() + charge > max_bytes
                        {
                            let oldest = kept.first().expect("full means something is kept").0;
                            if oldest > m.delivered_through {
                                break;
                            }
                            kept.remove(0);
                        }
                        let fits = kept.len() < max_messages
                            && kept.iter().map(|(_, l)| l + ENTRY_OVERHEAD).sum::<usize>() + charge <= max_bytes;
                        assert!(!fits, "refused though room could be made without loss");
                    }
                    Err(Refused::BudgetSpent) => panic!("no budget limit here"),
                }
            }
            Op::Skip => {
                m.expire(now);
                if let Ok(a) = h.append(&cfg, &budget, now, None, None, false) {
                    m.last += 1;
                    assert_eq!(a.seq, m.last);
                    m.fates.insert(a.seq, Fate::Skip);
                }
            }
            Op::Request => {
                m.expire(now);
                let (tx, rx) = reply_channel();
                if let Ok(a) = h.append_request(&cfg, &budget, now, Bytes::from_static(b"q"), tx, 100) {
                    m.last += 1;
                    assert_eq!(a.seq, m.last);
                    m.fates.insert(a.seq, Fate::Request { at: now });
                    waiting.push(rx);
                }
            }
            Op::Settle { ok } => {
                if let Some(seq) = pending.pop_front() {
                    let still = h.settle(&budget, seq, ok);
                    match m.fates.get_mut(&seq) {
                        Some(Fate::Kept { pending, .. }) => {
                            assert!(still);
                            if ok {
                                *pending = false;
                            } else {
                                m.fates.insert(seq, Fate::Failed);
                            }
                        }
                        _ => assert!(!still, "a dropped write is not kept"),
                    }
                }
            }
            Op::Read { n } => {
                for _ in 0..n {
                    match h.read(&mut cursor) {
                        Read::Empty => {
                            // Nothing readable: the next seq is pending, or beyond the last.
                            let next = got.last().map_or(since + 1, |s| s + 1);
                            let blocked = (next..=m.last).find_map(|s| match m.fates.get(&s) {
                                Some(Fate::Kept { pending: true, .. }) => Some(true),
                                Some(Fate::Kept { pending: false, .. }) => Some(false),
                                _ => None,
                            });
                            assert_ne!(blocked, Some(false), "a readable message was not read");
                            break;
                        }
                        Read::Gap { from, to } => {
                            let next = got.last().map_or(since + 1, |s| s + 1);
                            assert!(from >= next, "a gap starts where the reader is");
                            pass_over(&m, &mut got, next, from);
                            assert!(
                                (from..=to).any(|s| m.fates.get(&s) == Some(&Fate::Dropped)),
                                "a gap covers a dropped message"
                            );
                            for s in from..=to {
                                assert!(
                                    !matches!(m.fates.get(&s), Some(Fate::Kept { .. })),
                                    "a gap hides kept message {s}"
                                );
                                got.push(s);
                            }
                        }
                        Read::Request { seq, .. } => {
                            let next = got.last().map_or(since + 1, |s| s + 1);
                            pass_over(&m, &mut got, next, seq);
                            assert!(
                                matches!(m.fates.get(&seq), Some(Fate::Request { .. })),
                                "request {seq} read once"
                            );
                            m.fates.insert(seq, Fate::Skip);
                            got.push(seq);
                        }
                        Read::Message { seq, payload, .. } => {
                            let next = got.last().map_or(since + 1, |s| s + 1);
                            pass_over(&m, &mut got, next, seq);
                            match m.fates.get(&seq) {
                                Some(Fate::Kept {
                                    len, pending: false, ..
                                }) => assert_eq!(payload.len(), *len),
                                other => panic!("read seq {seq} which is {other:?}"),
                            }
                            m.delivered_through = m.delivered_through.max(seq);
                            got.push(seq);
                            seen.push(seq);
                        }
                    }
                }
            }
            Op::Reconnect { pick } => {
                let s = pick.and_then(|i| seen.get(i % seen.len().max(1)).copied());
                // A new listener: requests for the old one are dropped.
                h.drop_requests();
                for f in m.fates.values_mut() {
                    if matches!(f, Fate::Request { .. }) {
                        *f = Fate::Skip;
                    }
                }
                match h.start(s) {
                    Ok(c) => {
                        cursor = c;
                        since = c - 1;
                        got.clear();
                    }
                    Err(StartError::Ahead { last }) => panic!("a seen seq is never ahead ({s:?} > {last})"),
                }
            }
            Op::Wait { ms } => {
                now += ms;
                let _ = h.expire(&cfg, &budget, now);
                m.expire(now);
            }
        }
        // Invariants after every step.
        assert!(h.len() <= max_messages);
        assert!(h.bytes() <= max_bytes);
        assert_eq!(h.bytes(), budget.used(), "the budget follows the mailbox");
        assert_eq!(h.last_seq(), m.last);
        assert_eq!(h.len(), m.kept().count(), "kept count");
        assert_eq!(h.bytes(), m.bytes(), "kept bytes");
        for w in got.windows(2) {
            assert_eq!(w[1], w[0] + 1, "in order, no duplicate, nothing skipped unaccounted");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn drop_oldest_matches_model(ops in proptest::collection::vec(op(), 1..120), max in 1usize..6, kib in 1usize..3) {
        run(ops, max, kib * 300, FullPolicy::DropOldest);
    }

    #[test]
    fn refuse_matches_model(ops in proptest::collection::vec(op(), 1..120), max in 1usize..6, kib in 1usize..3) {
        run(ops, max, kib * 300, FullPolicy::Refuse);
    }

    /// What a store hands back at startup becomes the same mailbox: seqs go on after the last one
    /// stored (never reused), and what was trimmed is a gap.
    #[test]
    fn restore_continues_numbering(seqs in proptest::collection::btree_set(1u64..500, 0..40), trimmed in 0u64..50) {
        let cfg = MailboxConfig { max_messages: 1000, ..MailboxConfig::default() };
        let budget = Budget::default();
        let records: Vec<Restored> = seqs
            .iter()
            .filter(|s| **s > trimmed)
            .map(|&seq| Restored { seq, at_ms: 10, from: None, payload: Some(Bytes::from_static(b"r")) })
            .collect();
        let (mut h, _) = History::restore(&cfg, &budget, trimmed, records.clone(), 20);
        let last = records.last().map_or(trimmed, |r| r.seq);
        prop_assert_eq!(h.last_seq(), last);
        prop_assert_eq!(h.len(), records.len());
        let mut cursor = h.start(Some(0)).unwrap();
        if trimmed > 0 {
            prop_assert_eq!(h.read(&mut cursor), Read::Gap { from: 1, to: trimmed });
        }
        for r in &records {
            match h.read(&mut cursor) {
                Read::Message { seq, .. } => prop_assert_eq!(seq, r.seq),
                other => prop_assert!(false, "expected {}, got {:?}", r.seq, other),
            }
        }
        let a = h.append(&cfg, &budget, 30, None, Some(Bytes::new()), false).unwrap();
        prop_assert_eq!(a.seq, last + 1);
    }
}
