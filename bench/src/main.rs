//! `fedbroker-bench`: a load generator for fedbroker and the brokers a user would pick instead
//! (mosquitto over MQTT-over-WebSocket, nats-server over its WebSocket listener).
//!
//! Every scenario checks every message — content byte for byte, order per sender, exactly once —
//! and exits non-zero with a `FAIL` line on any loss, duplicate, reorder or corruption. Results are
//! printed as one line each and, with `--json FILE`, appended as JSON lines for `report`.
//! `bench/run.sh` drives the whole comparison; see BENCHMARKS.md.

mod conn;
mod fanout;
mod fault;
mod fed;
mod mqtt;
mod nats;
mod net;
mod payload;
mod report;
mod rpc;
mod scenario;

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::net::Target;

#[derive(Parser)]
#[command(
    name = "fedbroker-bench",
    version,
    about = "Load generator for fedbroker and its peers over WebSocket"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args)]
struct Common {
    /// Name of the system under test in the output (e.g. tokio, mosquitto).
    #[arg(long, default_value = "system")]
    label: String,
    /// Append the result as one JSON line to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Worker threads of the generator's tokio runtime.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Fail when nothing is acknowledged or delivered for this many seconds.
    #[arg(long, default_value_t = 15)]
    stall_timeout: u64,
}

#[derive(Subcommand)]
enum Cmd {
    /// L listeners, S senders with W messages in flight each; throughput and POST→frame latency.
    Relay {
        /// fedbroker://ADDR, mqtt-ws://ADDR or nats-ws://ADDR. Several, comma-separated (brokers
        /// of one cluster, docs/cluster.md): listener j connects to the (j mod n)-th.
        #[arg(long, value_delimiter = ',', required = true)]
        target: Vec<Target>,
        /// Senders connect here instead of to their listener's broker (comma-separated: sender i
        /// to the (i mod n)-th), e.g. another broker of the same cluster, so that every message
        /// crosses the cluster's engine. Same protocol as --target.
        #[arg(long, value_delimiter = ',')]
        send_target: Vec<Target>,
        #[arg(long, default_value_t = 16)]
        listeners: u32,
        #[arg(long, default_value_t = 16)]
        senders: u32,
        /// Message size in bytes (at least 20: sender, sequence and timestamp head every message).
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// Messages in total, split evenly over the senders.
        #[arg(long, default_value_t = 100_000)]
        messages: u64,
        /// Messages in flight per sender connection (acknowledged per message; NATS: per window).
        #[arg(long, default_value_t = 16)]
        window: usize,
        /// Pace the senders to this many msgs/s in total (for latency below saturation).
        #[arg(long)]
        rate: Option<f64>,
        /// Start no new message after this many seconds (the result says so).
        #[arg(long)]
        max_seconds: Option<f64>,
        /// The broker's PID: its CPU time per delivered message is reported. Comma-separated for
        /// several processes (a cluster's brokers and its engine): their CPU times are summed.
        #[arg(long, value_delimiter = ',')]
        pid: Vec<u32>,
        /// The ids keep a mailbox (fedbroker --mailbox; with --cluster, in the engine: docs/cluster.md
        /// §3): a POST answered 202 (kept, no listener's subscription in place yet) counts as
        /// acknowledged, and its message must still arrive; every 202/204 must carry a
        /// Fedbroker-Seq, increasing over each sender's answers. Without it, only 204 is accepted.
        #[arg(long)]
        accept_202: bool,
        #[command(flatten)]
        common: Common,
    },
    /// C idle subscribed listeners; the broker's RSS (VmRSS) per connection.
    Idle {
        #[arg(long)]
        target: Target,
        #[arg(long, default_value_t = 10_000)]
        connections: u32,
        /// PID of the broker, whose /proc/PID/status is read before and after.
        #[arg(long)]
        pid: u32,
        /// Spread client sockets over 127.0.0.1 … 127.0.0.N (bound before connect).
        #[arg(long, default_value_t = 32)]
        sources: u32,
        /// Connection handshakes in progress at once.
        #[arg(long, default_value_t = 128)]
        concurrency: usize,
        /// Seconds to wait after the last connection before reading RSS.
        #[arg(long, default_value_t = 3)]
        settle: u64,
        #[command(flatten)]
        common: Common,
    },
    /// Many senders (window 1) to ONE listener: 503s counted and retried, none of the 204s lost.
    Fanin {
        /// fedbroker://ADDR (start the broker with a small --queue-limit)
        #[arg(long)]
        target: Target,
        #[arg(long, default_value_t = 64)]
        senders: u32,
        #[arg(long, default_value_t = 50_000)]
        messages: u64,
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// Pause before retrying a 503'd message, in milliseconds.
        #[arg(long, default_value_t = 2)]
        retry_pause_ms: u64,
        /// Wait the 503's Retry-After seconds instead of --retry-pause-ms.
        #[arg(long)]
        honor_retry_after: bool,
        /// Make the listener slow: sleep this many microseconds after every 64 messages.
        #[arg(long)]
        listener_pause_us: Option<u64>,
        #[command(flatten)]
        common: Common,
    },
    /// One publisher, N listeners on ONE topic; deliveries/s (messages × listeners), every listener
    /// checked for loss, order and bytes.
    Fanout {
        /// fedbroker://ADDR (started with --topics covering --topic), mqtt-ws://ADDR or nats-ws://ADDR
        #[arg(long)]
        target: Target,
        #[arg(long, default_value_t = 100)]
        listeners: u32,
        /// Message size in bytes (at least 20).
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// Messages published (each delivered to every listener).
        #[arg(long, default_value_t = 10_000)]
        messages: u64,
        /// Messages in flight on the publisher's connection (fedbroker: pipelined POSTs, each
        /// answered 204; NATS/MQTT: two halves, each acknowledged by PONG/PINGRESP).
        #[arg(long, default_value_t = 16)]
        window: usize,
        /// The publisher never gets more than this many messages ahead of the slowest listener
        /// (keep it below fedbroker's --queue-limit).
        #[arg(long, default_value_t = 256)]
        lag: u64,
        /// The fedbroker topic id.
        #[arg(long, default_value_t = 1_000_000)]
        topic: u32,
        /// Publish no new message after this many seconds (the result says so).
        #[arg(long)]
        max_seconds: Option<f64>,
        /// The broker's PID: its CPU time per delivery is reported.
        #[arg(long)]
        pid: Option<u32>,
        /// Listener handshakes in progress at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[command(flatten)]
        common: Common,
    },
    /// K requesters (one request outstanding each) and one echoing responder: round trips/s and
    /// round-trip latency. fedbroker: POST /{id}?reply=MS and an envelope (fedbroker.v1) listener;
    /// NATS: PUB with a reply inbox and a subscribed responder.
    Reqrep {
        /// fedbroker://ADDR or nats-ws://ADDR
        #[arg(long)]
        target: Target,
        #[arg(long, default_value_t = 1)]
        requesters: u32,
        /// Request (and reply) size in bytes (at least 20).
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// Round trips in total, split evenly over the requesters.
        #[arg(long, default_value_t = 10_000)]
        requests: u64,
        /// fedbroker: the ?reply= wait in milliseconds.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
        /// fedbroker: the responder's id.
        #[arg(long, default_value_t = 7)]
        id: u32,
        /// Start no new request after this many seconds (the result says so).
        #[arg(long)]
        max_seconds: Option<f64>,
        /// The broker's PID: its CPU time per round trip is reported.
        #[arg(long)]
        pid: Option<u32>,
        #[command(flatten)]
        common: Common,
    },
    /// Mailbox ids under faults: listeners drop and reconnect with ?since= at random, the broker
    /// is killed (SIGKILL) and restarted; every acknowledged (202/204) message must arrive once,
    /// in seq order.
    Fault {
        /// The broker command line, split at spaces, with --mailbox covering the ids and no
        /// --listen: the bench starts it on a free port and restarts it there after each kill.
        #[arg(long, required_unless_present = "target", conflicts_with = "target")]
        broker_cmd: Option<String>,
        /// Or a broker already running at fedbroker://ADDR (no kills then).
        #[arg(long)]
        target: Option<Target>,
        /// Append the broker's stderr to this file (default: this process's stderr).
        #[arg(long)]
        broker_log: Option<PathBuf>,
        /// Mailbox ids, one listener each: --first-id … --first-id + --ids - 1.
        #[arg(long, default_value_t = 16)]
        ids: u32,
        #[arg(long, default_value_t = 1)]
        first_id: u32,
        /// Senders; sender i owns the ids i, i + S, … (at most --ids).
        #[arg(long, default_value_t = 8)]
        senders: u32,
        /// Message size in bytes (at least 20).
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// Messages in total, split evenly over the senders.
        #[arg(long, default_value_t = 100_000)]
        messages: u64,
        /// Requests in flight per sender connection.
        #[arg(long, default_value_t = 16)]
        window: usize,
        /// Every n-th listener speaks the fedbroker.v1 envelope, the others are plain (0: none).
        #[arg(long, default_value_t = 2)]
        envelope_every: u32,
        /// Per message received, the chance that its listener drops the connection (no close
        /// handshake) and reconnects with ?since=LAST.
        #[arg(long, default_value_t = 0.002)]
        drop_prob: f64,
        /// A dropped listener stays away for a random time up to this many milliseconds.
        #[arg(long, default_value_t = 50)]
        offline_ms: u64,
        /// Kill the broker with SIGKILL and start it again this many times, spread evenly over
        /// the messages.
        #[arg(long, default_value_t = 0)]
        kills: u32,
        /// Also kill and restart it every SECS seconds while the senders run.
        #[arg(long)]
        restart_every: Option<f64>,
        /// Milliseconds between a kill and the restart.
        #[arg(long, default_value_t = 100)]
        down_ms: u64,
        /// Seed of the listeners' random drops.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// After the senders finish, wait at most this many seconds for the listeners.
        #[arg(long, default_value_t = 30)]
        drain_timeout: u64,
        /// Fail when a client cannot reach the broker for this many seconds.
        #[arg(long, default_value_t = 30)]
        reconnect_timeout: u64,
        #[command(flatten)]
        common: Common,
    },
    /// Prints the median delivered msgs/s of the matching full-load relay runs (for pacing).
    Median {
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        label: String,
        #[arg(long)]
        payload: u64,
        #[arg(long)]
        window: u64,
    },
    /// Table, results.json and SVG charts from the JSON lines the scenarios appended.
    Report {
        /// The JSON lines file.
        #[arg(long)]
        input: PathBuf,
        /// Directory for table.md, results.json and the charts.
        #[arg(long)]
        out: PathBuf,
        /// Labels that are peers (ratios are to the best of them).
        #[arg(long, value_delimiter = ',', default_value = "mosquitto,nats")]
        peers: Vec<String>,
        /// Skip the SVG charts.
        #[arg(long)]
        no_charts: bool,
    },
}

/// Raises the soft open-file limit to the hard limit (the idle scenario holds thousands).
fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit with a valid, initialised struct.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

fn fail(what: &str, e: &str) -> ! {
    eprintln!("FAIL {what}: {e}");
    std::process::exit(1);
}

fn runtime(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail("runtime", &e.to_string()))
}

fn save(json: &Option<PathBuf>, v: &serde_json::Value) {
    if let Some(p) = json {
        let r = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .and_then(|mut f| writeln!(f, "{v}"));
        if let Err(e) = r {
            fail("json", &format!("{}: {e}", p.display()));
        }
    }
}

fn main() {
    let cli = Cli::parse();
    raise_nofile();
    match cli.cmd {
        Cmd::Relay {
            target,
            send_target,
            listeners,
            senders,
            payload,
            messages,
            window,
            rate,
            max_seconds,
            pid,
            accept_202,
            common,
        } => {
            let what = format!("relay {}", common.label);
            if payload < payload::HEADER {
                fail(&what, &format!("--payload must be at least {} bytes", payload::HEADER));
            }
            if listeners == 0 || senders == 0 || window == 0 || messages < senders as u64 {
                fail(
                    &what,
                    "--listeners, --senders and --window must be positive, --messages at least --senders",
                );
            }
            if rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
                fail(&what, "--rate must be positive");
            }
            if target.iter().chain(&send_target).any(|t| t.kind != target[0].kind) {
                fail(&what, "--target and --send-target must all speak the same protocol");
            }
            if accept_202 && target[0].kind != net::Kind::Fedbroker {
                fail(
                    &what,
                    "--accept-202 is for fedbroker mailbox ids (fedbroker:// targets)",
                );
            }
            let a = scenario::Relay {
                targets: target,
                send_targets: send_target,
                listeners,
                senders,
                payload,
                messages,
                window,
                rate,
                max_seconds,
                pid,
                stall: Duration::from_secs(common.stall_timeout),
                label: common.label.clone(),
                accept_202,
            };
            match runtime(common.threads).block_on(scenario::relay(a)) {
                Ok(v) => save(&common.json, &v),
                Err(e) => fail(&what, &e),
            }
        }
        Cmd::Idle {
            target,
            connections,
            pid,
            sources,
            concurrency,
            settle,
            common,
        } => {
            let what = format!("idle {}", common.label);
            if connections == 0 {
                fail(&what, "--connections must be positive");
            }
            let a = scenario::Idle {
                target,
                connections,
                pid,
                sources,
                concurrency: concurrency.max(1),
                settle: Duration::from_secs(settle),
                label: common.label.clone(),
            };
            match runtime(common.threads).block_on(scenario::idle(a)) {
                Ok(v) => save(&common.json, &v),
                Err(e) => fail(&what, &e),
            }
        }
        Cmd::Fanin {
            target,
            senders,
            messages,
            payload,
            retry_pause_ms,
            honor_retry_after,
            listener_pause_us,
            common,
        } => {
            let what = format!("fanin {}", common.label);
            if payload < payload::HEADER || senders == 0 || messages < senders as u64 {
                fail(
                    &what,
                    "--payload must be at least 20, --senders positive, --messages at least --senders",
                );
            }
            let a = scenario::Fanin {
                target,
                senders,
                messages,
                payload,
                retry_pause: Duration::from_millis(retry_pause_ms),
                honor_retry_after,
                listener_pause: listener_pause_us.map(Duration::from_micros),
                stall: Duration::from_secs(common.stall_timeout),
                label: common.label.clone(),
            };
            match runtime(common.threads).block_on(scenario::fanin(a)) {
                Ok(v) => save(&common.json, &v),
                Err(e) => fail(&what, &e),
            }
        }
        Cmd::Fanout {
            target,
            listeners,
            payload,
            messages,
            window,
            lag,
            topic,
            max_seconds,
            pid,
            concurrency,
            common,
        } => {
            let what = format!("fanout {}", common.label);
            if payload < payload::HEADER || listeners == 0 || messages == 0 || window == 0 || lag == 0 {
                fail(
                    &what,
                    "--payload must be at least 20; --listeners, --messages, --window and --lag positive",
                );
            }
            let a = fanout::Fanout {
                target,
                listeners,
                payload,
                messages,
                window,
                lag,
                topic,
                max_seconds,
                pid,
                concurrency,
                stall: Duration::from_secs(common.stall_timeout),
                label: common.label.clone(),
            };
            match runtime(common.threads).block_on(fanout::fanout(a)) {
                Ok(v) => save(&common.json, &v),
                Err(e) => fail(&what, &e),
            }
        }
        Cmd::Reqrep {
            target,
            requesters,
            payload,
            requests,
            timeout_ms,
            id,
            max_seconds,
            pid,
            common,
        } => {
            let what = format!("reqrep {}", common.label);
            if payload < payload::HEADER || requesters == 0 || requests < requesters as u64 {
                fail(
                    &what,
                    "--payload must be at least 20, --requesters positive, --requests at least --requesters",
                );
            }
            let a = rpc::Rpc {
                target,
                requesters,
                payload,
                requests,
                timeout_ms,
                id,
                max_seconds,
                pid,
                stall: Duration::from_secs(common.stall_timeout),
                label: common.label.clone(),
            };
            match runtime(common.threads).block_on(rpc::rpc(a)) {
                Ok(v) => save(&common.json, &v),
                Err(e) => fail(&what, &e),
            }
        }
        Cmd::Fault {
            broker_cmd,
            target,
            broker_log,
            ids,
            first_id,
            senders,
            payload,
            messages,
            window,
            envelope_every,
            drop_prob,
            offline_ms,
            kills,
            restart_every,
            down_ms,
            seed,
            drain_timeout,
            reconnect_timeout,
            common,
        } => {
            let what = format!("fault {}", common.label);
            if payload < payload::HEADER || senders == 0 || ids < senders || window == 0 || messages < u64::from(ids) {
                fail(
                    &what,
                    "--payload must be at least 20, --senders positive and at most --ids, --window positive, --messages at least --ids",
                );
            }
            if first_id == 0 || first_id.checked_add(ids).is_none_or(|e| e > 1 << 31) {
                fail(&what, "--first-id and --ids must give ids in 1..=2147483647");
            }
            if !(0.0..=1.0).contains(&drop_prob) || restart_every.is_some_and(|r| r.is_nan() || r <= 0.0) {
                fail(&what, "--drop-prob must be in 0..=1 and --restart-every positive");
            }
            let broker = match (broker_cmd, target) {
                (Some(c), _) => fault::BrokerSpec::Command {
                    argv: c.split_whitespace().map(String::from).collect(),
                    log: broker_log,
                },
                (None, Some(t)) if t.kind == net::Kind::Fedbroker => fault::BrokerSpec::Running(t.addr),
                _ => fail(&what, "--target must be fedbroker://ADDR"),
            };
            let a = fault::Fault {
                broker,
                ids,
                first_id,
                senders,
                payload,
                messages,
                window,
                envelope_every,
                drop_prob,
                offline: Duration::from_millis(offline_ms),
                kills,
                restart_every: restart_every.map(Duration::from_secs_f64),
                down: Duration::from_millis(down_ms),
                seed,
                drain_timeout: Duration::from_secs(drain_timeout),
                reconnect_timeout: Duration::from_secs(reconnect_timeout),
                stall: Duration::from_secs(common.stall_timeout),
                label: common.label.clone(),
            };
            match runtime(common.threads).block_on(fault::fault(a)) {
                Ok((v, None)) => save(&common.json, &v),
                Ok((v, Some(e))) => {
                    save(&common.json, &v);
                    fail(&what, &e)
                }
                Err(e) => fail(&what, &e),
            }
        }
        Cmd::Median {
            input,
            label,
            payload,
            window,
        } => match report::median_rate(&input, &label, payload, window) {
            Ok(v) => println!("{v:.0}"),
            Err(e) => fail("median", &e),
        },
        Cmd::Report {
            input,
            out,
            peers,
            no_charts,
        } => match report::report(&input, &out, &peers, !no_charts) {
            Ok(t) => print!("{t}"),
            Err(e) => fail("report", &e),
        },
    }
}
