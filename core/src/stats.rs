//! The counters behind `GET /` and `GET /metrics` (SPEC §7).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Counters shared by every connection of a broker (relaxed atomics: each is exact on its own;
/// a snapshot of several is not taken at one instant).
#[derive(Debug, Default)]
pub struct Stats {
    connections: AtomicU64,
    messages_received: AtomicU64,
    messages_delivered: AtomicU64,
    messages_rejected: AtomicU64,
    bytes_received: AtomicU64,
    bytes_delivered: AtomicU64,
    replies: AtomicU64,
    replies_timed_out: AtomicU64,
    replies_failed: AtomicU64,
}

/// The figures kept elsewhere than in [`Stats`] (the registry, the pending replies), read at
/// the moment of a snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Ids listened on now.
    pub listeners: usize,
    /// Topic listener connections now.
    pub topic_listeners: usize,
    /// Topic listeners and watchers closed as too slow so far.
    pub slow_listeners_closed: usize,
    /// `POST …?reply=` requests waiting now.
    pub pending_replies: usize,
    /// Watched ids now, over all watchers.
    pub presence_watches: usize,
    /// Messages kept in mailboxes now.
    pub mailbox_messages: u64,
    /// Bytes kept in mailboxes now (payloads plus a fixed overhead per message).
    pub mailbox_bytes: u64,
    /// Mailbox messages dropped so far: pushed out by newer ones, or expired.
    pub mailbox_dropped: u64,
    /// Messages refused so far because a mailbox was full (`507`).
    pub mailbox_refused: u64,
    /// Mailbox writes the store refused or failed so far (`503`).
    pub store_errors: u64,
    /// 1 when this broker routes through a cluster engine.
    pub cluster: u64,
    /// 1 when it is connected to that engine now.
    pub cluster_connected: u64,
    /// Ids it has subscribed to on the engine now.
    pub cluster_subscriptions: u64,
}

/// The figures at one moment, with what the broker adds to them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Snapshot {
    /// `fedbroker`.
    pub name: &'static str,
    /// The crate version, as `--version` prints it.
    pub version: &'static str,
    /// The adapter's runtime: `tokio`, `smol` or `std`.
    pub runtime: &'static str,
    /// Whole seconds since the broker started.
    pub uptime_seconds: u64,
    /// Connections open now.
    pub connections: u64,
    /// Ids listened on now.
    pub listeners: u64,
    /// Messages whose body was received in full.
    pub messages_received: u64,
    /// Messages handed to a listener's connection.
    pub messages_delivered: u64,
    /// Received messages refused (no listener, queue full).
    pub messages_rejected: u64,
    /// Payload bytes of received messages.
    pub bytes_received: u64,
    /// Payload bytes of delivered messages.
    pub bytes_delivered: u64,
    /// Topic listener connections now.
    pub topic_listeners: u64,
    /// Topic listeners closed because their queue was full.
    pub slow_listeners_closed: u64,
    /// Requests waiting for a reply now.
    pub pending_replies: u64,
    /// Requests answered by their listener.
    pub replies: u64,
    /// Requests that got no reply in time (or whose sender left first).
    pub replies_timed_out: u64,
    /// Requests whose listener went away before replying (`502`).
    pub replies_failed: u64,
    /// Watched ids now, over all watchers.
    pub presence_watches: u64,
    /// Messages kept in mailboxes now.
    pub mailbox_messages: u64,
    /// Bytes kept in mailboxes now.
    pub mailbox_bytes: u64,
    /// Mailbox messages dropped (pushed out or expired).
    pub mailbox_dropped: u64,
    /// Messages refused because a mailbox was full (`507`).
    pub mailbox_refused: u64,
    /// Mailbox writes the store refused or failed.
    pub store_errors: u64,
    /// 1 when this broker routes through a cluster engine.
    pub cluster: u64,
    /// 1 when it is connected to that engine now.
    pub cluster_connected: u64,
    /// Ids it has subscribed to on the engine now.
    pub cluster_subscriptions: u64,
}

impl Stats {
    pub(crate) fn connection_opened(&self) -> u64 {
        self.connections.fetch_add(1, Ordering::Relaxed) + 1
    }
    pub(crate) fn connection_closed(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }
    pub(crate) fn received(&self, bytes: usize) {
        self.messages_received.fetch_add(1, Ordering::Relaxed);
        self.bytes_received.fetch_add(bytes as u64, Ordering::Relaxed);
    }
    pub(crate) fn rejected(&self) {
        self.messages_rejected.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn delivered(&self, bytes: usize) {
        self.messages_delivered.fetch_add(1, Ordering::Relaxed);
        self.bytes_delivered.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn replied(&self) {
        self.replies.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn reply_timed_out(&self) {
        self.replies_timed_out.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn reply_failed(&self) {
        self.replies_failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads the counters.
    pub fn snapshot(&self, runtime: &'static str, uptime: Duration, gauges: Gauges) -> Snapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Snapshot {
            name: "fedbroker",
            version: crate::VERSION,
            runtime,
            uptime_seconds: uptime.as_secs(),
            connections: get(&self.connections),
            listeners: gauges.listeners as u64,
            messages_received: get(&self.messages_received),
            messages_delivered: get(&self.messages_delivered),
            messages_rejected: get(&self.messages_rejected),
            bytes_received: get(&self.bytes_received),
            bytes_delivered: get(&self.bytes_delivered),
            topic_listeners: gauges.topic_listeners as u64,
            slow_listeners_closed: gauges.slow_listeners_closed as u64,
            pending_replies: gauges.pending_replies as u64,
            replies: get(&self.replies),
            replies_timed_out: get(&self.replies_timed_out),
            replies_failed: get(&self.replies_failed),
            presence_watches: gauges.presence_watches as u64,
            mailbox_messages: gauges.mailbox_messages,
            mailbox_bytes: gauges.mailbox_bytes,
            mailbox_dropped: gauges.mailbox_dropped,
            mailbox_refused: gauges.mailbox_refused,
            store_errors: gauges.store_errors,
            cluster: gauges.cluster,
            cluster_connected: gauges.cluster_connected,
            cluster_subscriptions: gauges.cluster_subscriptions,
        }
    }
}

impl Snapshot {
    fn counters(&self) -> [(&'static str, &'static str, &'static str, u64); 23] {
        [
            ("connections", "gauge", "Connections open now.", self.connections),
            ("listeners", "gauge", "Ids listened on now.", self.listeners),
            (
                "messages_received",
                "counter",
                "Messages received in full.",
                self.messages_received,
            ),
            (
                "messages_delivered",
                "counter",
                "Messages handed to a listener.",
                self.messages_delivered,
            ),
            (
                "messages_rejected",
                "counter",
                "Received messages refused (no listener, queue full).",
                self.messages_rejected,
            ),
            (
                "bytes_received",
                "counter",
                "Payload bytes received.",
                self.bytes_received,
            ),
            (
                "bytes_delivered",
                "counter",
                "Payload bytes delivered.",
                self.bytes_delivered,
            ),
            ("uptime_seconds", "gauge", "Seconds since start.", self.uptime_seconds),
            (
                "topic_listeners",
                "gauge",
                "Topic listener connections now.",
                self.topic_listeners,
            ),
            (
                "slow_listeners_closed",
                "counter",
                "Listeners closed because their queue was full (topics, presence).",
                self.slow_listeners_closed,
            ),
            (
                "pending_replies",
                "gauge",
                "Requests waiting for a reply now.",
                self.pending_replies,
            ),
            (
                "replies",
                "counter",
                "Requests answered by their listener.",
                self.replies,
            ),
            (
                "replies_timed_out",
                "counter",
                "Requests not answered in time.",
                self.replies_timed_out,
            ),
            (
                "replies_failed",
                "counter",
                "Requests whose listener went away before replying.",
                self.replies_failed,
            ),
            (
                "presence_watches",
                "gauge",
                "Watched ids now, over all watchers.",
                self.presence_watches,
            ),
            (
                "mailbox_messages",
                "gauge",
                "Messages kept in mailboxes now.",
                self.mailbox_messages,
            ),
            (
                "mailbox_bytes",
                "gauge",
                "Bytes kept in mailboxes now (payloads plus 64 per message).",
                self.mailbox_bytes,
            ),
            (
                "mailbox_dropped",
                "counter",
                "Mailbox messages dropped: pushed out by newer ones, or expired.",
                self.mailbox_dropped,
            ),
            (
                "mailbox_refused",
                "counter",
                "Messages refused because a mailbox was full (507).",
                self.mailbox_refused,
            ),
            (
                "store_errors",
                "counter",
                "Mailbox writes the store refused or failed (503).",
                self.store_errors,
            ),
            (
                "cluster",
                "gauge",
                "1 when this broker shares its id space through a cluster engine.",
                self.cluster,
            ),
            (
                "cluster_connected",
                "gauge",
                "1 when connected to the cluster engine now.",
                self.cluster_connected,
            ),
            (
                "cluster_subscriptions",
                "gauge",
                "Ids subscribed to on the cluster engine now.",
                self.cluster_subscriptions,
            ),
        ]
    }

    /// The JSON object of `GET /`.
    pub fn to_json(&self) -> String {
        // All values are plain ASCII words and integers: no escaping is needed.
        let mut s = format!(
            "{{\"name\":\"{}\",\"version\":\"{}\",\"runtime\":\"{}\"",
            self.name, self.version, self.runtime
        );
        for (key, _, _, value) in self.counters() {
            let _ = write!(s, ",\"{key}\":{value}");
        }
        s.push_str("}\n");
        s
    }

    /// The Prometheus text exposition (format 0.0.4) of `GET /metrics`.
    pub fn to_prometheus(&self) -> String {
        let mut s = String::new();
        for (key, kind, help, value) in self.counters() {
            let name = if kind == "counter" {
                format!("fedbroker_{key}_total")
            } else {
                format!("fedbroker_{key}")
            };
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        }
        let _ = writeln!(
            s,
            "# HELP fedbroker_build_info Version and runtime of this broker.\n# TYPE fedbroker_build_info gauge\nfedbroker_build_info{{version=\"{}\",runtime=\"{}\"}} 1",
            self.version, self.runtime
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders() {
        let st = Stats::default();
        st.connection_opened();
        st.received(5);
        st.delivered(5);
        let gauges = Gauges {
            listeners: 1,
            ..Gauges::default()
        };
        let snap = st.snapshot("tokio", Duration::from_secs(3), gauges);
        let json = snap.to_json();
        assert!(json.starts_with("{\"name\":\"fedbroker\",\"version\":\""), "{json}");
        for key in [
            "runtime\":\"tokio\"",
            "\"uptime_seconds\":3",
            "\"connections\":1",
            "\"listeners\":1",
            "\"messages_received\":1",
            "\"messages_delivered\":1",
            "\"messages_rejected\":0",
            "\"bytes_received\":5",
            "\"bytes_delivered\":5",
        ] {
            assert!(json.contains(key), "{key} in {json}");
        }
        let prom = snap.to_prometheus();
        assert!(prom.contains("\nfedbroker_messages_received_total 1\n"), "{prom}");
        assert!(prom.contains("# TYPE fedbroker_connections gauge\n"));
    }
}
