//! # fedbroker-cluster
//!
//! Several equal brokers behind one address share one id space through an engine operators
//! already run (SPEC §10): a `POST` that reaches any broker reaches the listener on whichever
//! broker it is connected to. This crate is the core's [`Router`] for that, over **NATS** or
//! **Redis** (≥ 7, sharded pub/sub), both behind one trait (`engine::Engine`: publish,
//! subscribe, an inbox for answers, the mailboxes); everything below is written once over it.
//!
//! - a broker subscribes to `fedbroker.id.{id}` for each id listened on it (told by
//!   [`Registry::on_listened_change`]);
//! - a message for an id not listened on locally is sent on that subject with an inbox to answer
//!   on: the broker holding the listener routes it locally and answers with the outcome
//!   (`Fedbroker-Status: 204`, `503` when its listener's queue is full, …), which becomes this
//!   `POST`'s answer; "no responders" (NATS's, or Redis's `SPUBLISH` count of 0) is `404`;
//! - a broker that gets a listener on an id publishes a claim on `fedbroker.claim`; a broker
//!   that held that id closes its listener with `4000` ([`Registry::evict`]): replacement
//!   crosses brokers;
//! - with the engine unreachable, ids listened on locally keep working and the others get `503`
//!   (`the message could not be routed; retry later`); the engine connects and subscribes again
//!   by itself.
//! - a request-reply (`POST …?reply=MS`) to a listener on another broker travels the same way;
//!   the listener's broker answers twice on the request's inbox: once queued, then with the
//!   listener's reply (or that it went away).
//! - a topic's message reaches its listeners on every broker: brokers announce the topics they
//!   have listeners on (on `fedbroker.claim`), and a broker publishing to a topic asks each of
//!   them by name (`fedbroker.node.{node}.topic`); `Fedbroker-Recipients` sums their answers.
//! - presence: brokers announce the ids they start and stop listening on; watchers see an id
//!   online while any broker has a listener ([`Registry::set_remote`]). Brokers also say every
//!   [`HEARTBEAT`] that they are alive: one not heard for three of them is taken as gone, and
//!   its ids as no longer listened on.
//!
//! The engine's client runs on a runtime of its own, on one thread, so every adapter (tokio,
//! smol, blocking threads) uses it the same way: the router hands it work through a bounded
//! channel and never waits.
//!
//! - mailbox ids: the engine keeps the mailboxes, shared by every broker (Redis: a stream per
//!   id, appended and published by one script; NATS: a JetStream subject per id), and numbers
//!   their records; this broker's mailbox of an id is a window onto it while the id has a
//!   listener here ([`Registry::mirror_mailboxes`]), read when a listener connects
//!   ([`Router::prepare_listen`]) and again whenever records are missing from it.

mod engine;
mod nats;
mod redis;
mod resp;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use engine::{Engine, EngineError, MailboxLimits, Msg};
use fedbroker_core::mailbox::Restored;
use fedbroker_core::{
    reply_channel, route_channel, Delivered, FullPolicy, HttpError, Id, ListenReply, LocalRouter, MailboxSync,
    MirrorItem, Mirrored, PendingReply, Registry, ReplyMsg, ReplyOutcome, ReplySender, RouteReply, RouteRequest,
    Router, RouterGauges,
};
use futures_util::StreamExt;
use tokio::sync::mpsc;

/// Messages waiting for the engine's thread before new ones are refused (`503`).
const QUEUE: usize = 65_536;

/// Messages routed through the engine and not answered yet, at most; beyond, `503`.
const IN_FLIGHT: usize = 65_536;

/// How long a message routed through the engine may take to be answered.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a broker tells the others it is alive; one not heard for three of these is gone.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// The subject of messages for `id`.
fn subject(id: Id) -> String {
    format!("fedbroker.id.{id}")
}

/// The subject on which brokers announce the ids they start listening on (`ID NODE TS`: a plain
/// id is taken from whoever held it, TS being when its listener started, in wall-clock µs), stop listening on
/// (`ID NODE -`), or listen on already (`ID NODE +`, the answer to `? NODE`, which a broker
/// sends when it (re)connects); and say they are alive (`! NODE`).
const CLAIMS: &str = "fedbroker.claim";

/// The subject on which broker `node` takes topics' messages for its own listeners (the topic
/// in `Fedbroker-Topic`).
fn topic_subject(node: &str) -> String {
    format!("fedbroker.node.{node}.topic")
}

/// Which other brokers have listeners on which id, as they announced it (topics' fan-out and
/// presence).
type Members = Arc<std::sync::Mutex<HashMap<Id, BTreeSet<String>>>>;

/// The ids listened on this broker, with when they started to be (wall-clock µs): the newer of
/// two listeners of a plain id on two brokers is the one that stays. Microseconds, not
/// milliseconds: two listeners a few hundred µs apart were found tied (and the tie, broken by
/// node, kept the older one).
type Mine = Arc<std::sync::Mutex<BTreeMap<Id, u64>>>;

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Listener changes and (re)connections for the engine's thread: kept apart from the messages'
/// queue, coalesced per id, so that none is lost when that queue is full (a change not acted on
/// would leave an id unsubscribed, or another broker's listener not replaced, for good).
#[derive(Default)]
struct Control {
    pending: std::sync::Mutex<(BTreeSet<Id>, bool)>,
    wake: tokio::sync::Notify,
}

impl Control {
    fn changed(&self, id: Id) {
        lock(&self.pending).0.insert(id);
        self.wake.notify_one();
    }

    fn connected(&self) {
        lock(&self.pending).1 = true;
        self.wake.notify_one();
    }

    /// What is pending, the (re)connection first.
    fn take(&self) -> Vec<Work> {
        let (ids, connected) = std::mem::take(&mut *lock(&self.pending));
        connected
            .then_some(Work::Connected)
            .into_iter()
            .chain(ids.into_iter().map(Work::Changed))
            .collect()
    }
}

/// Work for the engine's thread.
enum Work {
    Route(RouteRequest, RouteReply),
    /// A message for a mailbox id, whose mailbox the engine keeps.
    Mailbox(RouteRequest, RouteReply),
    /// A listener is about to register on a mailbox id: read what its mailbox holds.
    Prepare(Id, ListenReply),
    Topic(RouteRequest, RouteReply),
    Changed(Id),
    /// (Re)connected to the engine: announce what is listened on here, ask the others.
    Connected,
}

/// Why a cluster could not start.
#[derive(Debug)]
pub struct ClusterError(pub String);

impl std::fmt::Display for ClusterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ClusterError {}

/// The cluster's router: ids listened on this broker are routed here; the others through the
/// engine.
pub struct ClusterRouter {
    registry: Registry,
    local: LocalRouter,
    work: mpsc::Sender<Work>,
    state: Arc<State>,
    /// The engine keeps the mailboxes; this broker's are windows onto them.
    windows: bool,
}

/// What the engine's thread tells the statistics.
#[derive(Default)]
struct State {
    connected: AtomicBool,
    subscriptions: AtomicUsize,
}

/// Which engine a `--cluster` address names.
enum Kind {
    Nats,
    Redis,
}

/// Checks a `--cluster` address: `nats://…` or `redis://…`, with a host and port.
pub fn check_url(url: &str) -> Result<(), ClusterError> {
    match kind(url)? {
        Kind::Nats => Ok(()),
        // What the Redis client would refuse later, refused at start.
        Kind::Redis => redis::Redis::check(url),
    }
}

fn kind(url: &str) -> Result<Kind, ClusterError> {
    let (scheme, rest) = url
        .split_once("://")
        // Not echoed: it may hold credentials.
        .ok_or_else(|| ClusterError("expected nats://HOST:PORT or redis://HOST:PORT".into()))?;
    let kind = match scheme {
        "nats" => Kind::Nats,
        "redis" => Kind::Redis,
        // A scheme is letters (RFC 3986 adds digits, +, - and .); anything else is not
        // echoed, as it may be credentials.
        _ if scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) => {
            return Err(ClusterError(format!(
                "{scheme}:// is not an engine; expected nats://HOST:PORT or redis://HOST:PORT"
            )))
        }
        _ => {
            return Err(ClusterError(
                "not an engine's address; expected nats://HOST:PORT or redis://HOST:PORT".into(),
            ))
        }
    };
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host = host.split(['/', '?']).next().unwrap_or("");
    if host.is_empty() {
        return Err(ClusterError(format!(
            "{scheme}:// without a host; expected {scheme}://HOST:PORT"
        )));
    }
    // `[::1]:4222`, `[::1]`, `host:4222`, `host`.
    let port = match host.strip_prefix('[') {
        Some(v6) => v6
            .split_once(']')
            .map(|(_, rest)| rest.strip_prefix(':').unwrap_or(rest)),
        None => Some(host.rsplit_once(':').map_or("", |(_, p)| p)),
    };
    match port {
        Some("") => {}
        Some(p) if p.parse::<u16>().is_ok() => {}
        _ => {
            return Err(ClusterError(format!(
                "{scheme}://{host}: the port is not a number 0-65535"
            )))
        }
    }
    Ok(kind)
}

impl ClusterRouter {
    /// Starts the engine's thread for `url` (`nats://HOST:PORT` or `redis://HOST:PORT`) over this
    /// broker's `registry`. It connects in the background: until it is connected, messages for
    /// ids not listened on here get `503`.
    pub fn start(url: &str, registry: Registry) -> Result<ClusterRouter, ClusterError> {
        let kind = kind(url)?;
        // Named without its credentials, in this line as in every other.
        tracing::info!(engine = %split_credentials(url).0, "cluster: connecting");
        let url = url.to_owned();
        let (tx, rx) = mpsc::channel(QUEUE);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClusterError(format!("cannot start the cluster's runtime: {e}")))?;
        let node = format!("{:016x}", node_id());
        // The engine keeps the mailboxes, shared by every broker (Redis: a stream per id; NATS:
        // a JetStream subject per id); this broker's are windows onto them.
        let windows = registry.mailbox_config().is_some();
        if windows {
            registry.mirror_mailboxes();
        }
        let limits = registry.mailbox_config().map(|c| MailboxLimits {
            max_messages: c.max_messages,
            refuse: c.full == FullPolicy::Refuse,
            ttl_ms: c.ttl_ms(),
        });
        let mine = Mine::default();
        let state = Arc::new(State::default());
        let control = Arc::new(Control::default());
        let shared = Shared {
            control: control.clone(),
            node: node.clone(),
            registry: registry.clone(),
            local: LocalRouter::new(registry.clone()),
            members: Members::default(),
            mine: mine.clone(),
            seen: Default::default(),
            state: state.clone(),
            windows,
            limits,
            epochs: Arc::default(),
        };
        let to_self = control.clone();
        let events = state.clone();
        let notify: Arc<dyn Fn(bool) + Send + Sync> = Arc::new(move |connected| {
            events.connected.store(connected, Ordering::Relaxed);
            if connected {
                // Announcements made while disconnected were lost: make them again.
                to_self.connected();
            }
        });
        std::thread::Builder::new()
            .name("fedbroker-cluster".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match kind {
                        Kind::Nats => match nats::Nats::connect(&url, notify).await {
                            Ok(engine) => run(engine, shared, rx).await,
                            Err(e) => tracing::error!("cluster engine: {e}"),
                        },
                        Kind::Redis => match redis::Redis::connect(&url, &node, notify) {
                            Ok(engine) => run(engine, shared, rx).await,
                            Err(e) => tracing::error!("cluster engine: {e}"),
                        },
                    }
                })
            })
            .map_err(|e| ClusterError(format!("cannot start the cluster's thread: {e}")))?;
        let changes = control;
        // The registry holds its observer and the observer a handle of the registry: both live
        // as long as the broker, which is the process.
        let observed = registry.clone();
        registry.on_listened_change(move |id| {
            // When, recorded at once: a claim from another broker is compared with it.
            let mut mine = lock(&mine);
            if observed.is_listened(id) {
                mine.entry(id).or_insert_with(wall_us);
            } else {
                mine.remove(&id);
            }
            drop(mine);
            // Subscriptions are reconciled with the registry's state by the engine's thread.
            changes.changed(id);
        });
        Ok(ClusterRouter {
            local: LocalRouter::new(registry.clone()),
            registry,
            work: tx,
            state,
            windows,
        })
    }
}

impl Router for ClusterRouter {
    fn route(&self, request: RouteRequest, reply: RouteReply) {
        if self.registry.is_topic(request.id) {
            // Every broker with listeners on the topic takes it; the engine's thread sums.
            let _ = self.work.try_send(Work::Topic(request, reply));
            return;
        }
        if self.windows && self.registry.has_mailbox(request.id) {
            // Numbered and kept by the engine, wherever its listener is.
            let _ = self.work.try_send(Work::Mailbox(request, reply));
            return;
        }
        if self.registry.is_listened(request.id) {
            return self.local.route(request, reply);
        }
        // Full or stopped: the reply is dropped with the work, which answers 503.
        let _ = self.work.try_send(Work::Route(request, reply));
    }

    fn prepare_listen(&self, id: Id, _since: Option<u64>, reply: ListenReply) {
        if !self.windows {
            return reply.answer(Ok(None));
        }
        // Full or stopped: dropped, which answers 503.
        let _ = self.work.try_send(Work::Prepare(id, reply));
    }

    fn gauges(&self) -> RouterGauges {
        RouterGauges {
            clustered: true,
            connected: self.state.connected.load(Ordering::Relaxed),
            subscriptions: self.state.subscriptions.load(Ordering::Relaxed),
        }
    }
}

/// `nats://user:password@host:port` → (`nats://host:port`, the user and password).
fn split_credentials(url: &str) -> (String, Option<(String, String)>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_owned(), None);
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            let decode = |s: &str| {
                // Percent-encoded characters, as in any URL's userinfo.
                let mut out = Vec::with_capacity(s.len());
                let b = s.as_bytes();
                let mut i = 0;
                while i < b.len() {
                    let hex = |c: u8| (c as char).to_digit(16);
                    match (
                        b[i],
                        b.get(i + 1).copied().and_then(hex),
                        b.get(i + 2).copied().and_then(hex),
                    ) {
                        (b'%', Some(h), Some(l)) => {
                            out.push((h * 16 + l) as u8);
                            i += 3;
                        }
                        (c, _, _) => {
                            out.push(c);
                            i += 1;
                        }
                    }
                }
                String::from_utf8_lossy(&out).into_owned()
            };
            (format!("{scheme}://{host}"), Some((decode(user), decode(pass))))
        }
        None => (url.to_owned(), None),
    }
}

/// A number that tells this broker's claims from the others'.
fn node_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded at random per process: with the pid, unique among the brokers.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish()
}

/// What the engine's thread and its tasks share.
#[derive(Clone)]
struct Shared {
    control: Arc<Control>,
    node: String,
    registry: Registry,
    local: LocalRouter,
    members: Members,
    mine: Mine,
    /// When each other broker was last heard from.
    seen: Arc<std::sync::Mutex<HashMap<String, Instant>>>,
    state: Arc<State>,
    /// The engine keeps the mailboxes (see [`ClusterRouter`]).
    windows: bool,
    /// Their bounds, when the broker has mailbox ids.
    limits: Option<MailboxLimits>,
    /// The epoch (numbering) of each window here, as read from the engine: a record or a read
    /// of another epoch means the engine started the id's numbering again.
    epochs: Arc<std::sync::Mutex<HashMap<Id, String>>>,
}

async fn publish_claim<E: Engine>(engine: &E, text: String) {
    match engine.publish(CLAIMS.to_owned(), Msg::new(text)).await {
        // Nobody else there: fine.
        Ok(()) | Err(EngineError::NoResponders) => {}
        Err(e) => tracing::warn!("cluster engine: announcement not sent: {e}"),
    }
}

async fn run<E: Engine>(engine: E, shared: Shared, mut work: mpsc::Receiver<Work>) {
    let Shared {
        node,
        registry,
        local,
        members,
        mine,
        state,
        ..
    } = shared.clone();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    // Each subscribed id's reader, stopped (after the message it is answering, if any) by
    // dropping its sender.
    let mut subscribed: HashMap<Id, tokio::sync::oneshot::Sender<()>> = HashMap::new();
    let mut announced: BTreeSet<Id> = BTreeSet::new();
    // Claims of the other brokers: an id taken elsewhere is closed here (4000); who listens
    // where, for topics' fan-out and for presence.
    match engine.subscribe(CLAIMS.to_owned()).await {
        Ok((claims, _)) => {
            tokio::spawn(follow_claims(engine.clone(), shared.clone(), claims));
        }
        Err(e) => tracing::error!("cluster engine: cannot subscribe to claims: {e}"),
    }
    // Topic messages sent to this broker by name: delivered to its own listeners.
    match engine.subscribe(topic_subject(&node)).await {
        Ok((mut topics, _)) => {
            let (engine, local) = (engine.clone(), local.clone());
            tokio::spawn(async move {
                while let Some(m) = topics.next().await {
                    let Some(id) = m
                        .number("Fedbroker-Topic")
                        .and_then(|n| u32::try_from(n).ok())
                        .and_then(Id::new)
                    else {
                        continue;
                    };
                    answer(&engine, &local, id, m).await;
                }
            });
        }
        Err(e) => tracing::error!("cluster engine: cannot subscribe to this broker's topics: {e}"),
    }
    // Alive, every HEARTBEAT; brokers not heard for three are gone.
    tokio::spawn(heartbeat(engine.clone(), shared.clone()));
    loop {
        let next = tokio::select! {
            biased;
            () = shared.control.wake.notified() => None,
            w = work.recv() => match w {
                Some(w) => Some(w),
                None => break,
            },
        };
        let items = match next {
            Some(w) => vec![w],
            None => shared.control.take(),
        };
        for w in items {
            match w {
                Work::Route(request, reply) => {
                    // Not connected: answer 503 now rather than hold the request and deliver it
                    // after the sender was told to retry.
                    let Some(permit) = admit(&engine, &in_flight) else {
                        reply.answer(Err(HttpError::RouteUnavailable));
                        continue;
                    };
                    let (engine, shared) = (engine.clone(), shared.clone());
                    tokio::spawn(async move {
                        remote(engine, shared, request, reply).await;
                        drop(permit);
                    });
                }
                Work::Mailbox(request, reply) => {
                    let Some(permit) = admit(&engine, &in_flight) else {
                        reply.answer(Err(HttpError::RouteUnavailable));
                        continue;
                    };
                    let (engine, shared) = (engine.clone(), shared.clone());
                    tokio::spawn(async move {
                        mailbox_send(engine, shared, request, reply).await;
                        drop(permit);
                    });
                }
                Work::Prepare(id, reply) => {
                    let Some(permit) = admit(&engine, &in_flight) else {
                        reply.answer(Err(HttpError::RouteUnavailable));
                        continue;
                    };
                    let (engine, shared) = (engine.clone(), shared.clone());
                    tokio::spawn(async move {
                        reply.answer(read_mailbox(&engine, &shared, id).await.map(Some));
                        drop(permit);
                    });
                }
                Work::Connected => {
                    if shared.windows {
                        // What was published while this broker was away reached no window here.
                        let ids: Vec<Id> = lock(&mine).keys().copied().collect();
                        let ids: Vec<Id> = ids.into_iter().filter(|id| registry.has_mailbox(*id)).collect();
                        let (engine, shared) = (engine.clone(), shared.clone());
                        // One after the other, on the side: a broker with many listeners does
                        // not read every mailbox at once.
                        tokio::spawn(async move {
                            for id in ids {
                                catch_up(&engine, &shared, id).await;
                            }
                        });
                    }
                    // Those not heard while this broker was away are not gone for that.
                    let now = Instant::now();
                    lock(&shared.seen).values_mut().for_each(|t| *t = now);
                    publish_claim(&engine, format!("? {node}")).await;
                    announce_all(&engine, &shared).await;
                }
                Work::Topic(request, reply) => {
                    let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                        reply.answer(Err(HttpError::RouteUnavailable));
                        continue;
                    };
                    let others: Vec<String> = lock(&members)
                        .get(&request.id)
                        .map(|s| s.iter().cloned().collect())
                        .unwrap_or_default();
                    let connected = engine.connected();
                    let (engine, shared) = (engine.clone(), shared.clone());
                    tokio::spawn(async move {
                        let others = if connected { others } else { Vec::new() };
                        topic(engine, shared, others, request, reply, connected).await;
                        drop(permit);
                    });
                }
                Work::Changed(id) => {
                    let listened = registry.is_listened(id);
                    tracing::debug!(%id, listened, "cluster: listened changed");
                    // A leave goes out whenever the id is not listened on here, even if this loop
                    // never saw it listened: it may have been announced already (to a broker that
                    // asked, or on reconnecting), from `mine`.
                    let changed = if listened {
                        announced.insert(id)
                    } else {
                        announced.remove(&id);
                        true
                    };
                    if changed && (registry.is_topic(id) || !listened) {
                        // A topic's members, and any id's last listener here gone (presence); a
                        // plain id's claim goes out once it is subscribed, below.
                        let text = if listened {
                            format!("{id} {node}")
                        } else {
                            format!("{id} {node} -")
                        };
                        publish_claim(&engine, text).await;
                    }
                    if registry.is_topic(id) {
                        continue;
                    }
                    match (listened, subscribed.contains_key(&id)) {
                        (true, false) => match engine.subscribe(subject(id)).await {
                            Ok((sub, in_place)) => {
                                let (stop, stopped) = tokio::sync::oneshot::channel();
                                tokio::spawn(serve(engine.clone(), sub, id, shared.clone(), stopped));
                                subscribed.insert(id, stop);
                                state.subscriptions.store(subscribed.len(), Ordering::Relaxed);
                                // Claimed once the subscription is in place (a broker reading
                                // the claim closes its listener, and messages must then reach
                                // this one), on the side, so that other work goes on meanwhile;
                                // with the listener's own start, and not at all if it left
                                // meanwhile (its leave follows; a claim stamped now would wrongly
                                // beat a newer listener elsewhere).
                                let (engine, mine, node) = (engine.clone(), mine.clone(), node.clone());
                                let window = shared.windows && registry.has_mailbox(id);
                                let shared = shared.clone();
                                tokio::spawn(async move {
                                    in_place.await;
                                    if window {
                                        // Records appended between the window's read and now
                                        // were published before this broker took them.
                                        catch_up(&engine, &shared, id).await;
                                    }
                                    let since = lock(&mine).get(&id).copied();
                                    if let Some(since) = since {
                                        publish_claim(&engine, format!("{id} {node} {since}")).await;
                                    }
                                });
                            }
                            Err(e) => tracing::warn!(%id, "cluster engine: cannot subscribe: {e}"),
                        },
                        (false, true) => {
                            subscribed.remove(&id);
                            state.subscriptions.store(subscribed.len(), Ordering::Relaxed);
                        }
                        (true, true) if shared.windows && registry.has_mailbox(id) => {
                            // A listener came back before the subscription went: records
                            // published between its window's read and its registration found no
                            // window here.
                            if let Ok(permit) = in_flight.clone().try_acquire_owned() {
                                let (engine, shared) = (engine.clone(), shared.clone());
                                tokio::spawn(async move {
                                    catch_up(&engine, &shared, id).await;
                                    drop(permit);
                                });
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

/// A place for one more piece of work in flight with the engine, when it is connected (else the
/// work is answered `503` at once rather than held).
fn admit<E: Engine>(engine: &E, in_flight: &Arc<tokio::sync::Semaphore>) -> Option<tokio::sync::OwnedSemaphorePermit> {
    if !engine.connected() {
        return None;
    }
    in_flight.clone().try_acquire_owned().ok()
}

/// Announces every id listened on here: a plain id claimed with its listener's start (so that
/// two listeners of one id on two brokers that did not hear of each other, during an outage or
/// a broker's start, are settled as any two claims are: the newer stays), a topic as a member
/// (`+`).
async fn announce_all<E: Engine>(engine: &E, shared: &Shared) {
    let ids: Vec<(Id, u64)> = lock(&shared.mine).iter().map(|(id, t)| (*id, *t)).collect();
    for (id, since) in ids {
        let node = &shared.node;
        let text = if shared.registry.is_topic(id) {
            format!("{id} {node} +")
        } else {
            format!("{id} {node} {since}")
        };
        publish_claim(engine, text).await;
    }
}

/// Follows the other brokers' claims, leaves and heartbeats.
async fn follow_claims<E: Engine>(engine: E, shared: Shared, mut claims: engine::Subscription) {
    let Shared {
        node,
        registry,
        members,
        mine,
        seen,
        ..
    } = shared.clone();
    // Ask the others what they listen on (again on every reconnection: Work::Connected).
    publish_claim(&engine, format!("? {node}")).await;
    while let Some(m) = claims.next().await {
        let text = String::from_utf8_lossy(&m.payload);
        let mut words = text.split(' ');
        let (Some(what), Some(from)) = (words.next(), words.next()) else {
            continue;
        };
        if from == node {
            continue;
        }
        tracing::debug!(claim = %text, "cluster: claim");
        let new = lock(&seen).insert(from.to_owned(), Instant::now()).is_none();
        if new && what == "!" {
            // A broker not heard of (or taken as gone, and back): ask it what it listens on.
            publish_claim(&engine, format!("? {node} {from}")).await;
        }
        if what == "!" {
            continue;
        }
        if what == "?" {
            // Asked of everyone, or of this broker: announced again, on the side, so that
            // heartbeats keep being read meanwhile.
            if words.next().is_none_or(|to| to == node) {
                let (engine, shared) = (engine.clone(), shared.clone());
                tokio::spawn(async move { announce_all(&engine, &shared).await });
            }
            continue;
        }
        let Some(id) = what.parse().ok().and_then(Id::new) else {
            continue;
        };
        let flag = words.next();
        let topic = registry.is_topic(id);
        // A claim carries when its listener started: an older one than ours (a claim still on
        // its way when ours was made) leaves ours alone; its broker yields when it reads ours.
        let claimed_at = flag.and_then(|f| f.parse::<u64>().ok());
        // The listener this decision is about: a newer one, registered meanwhile, is not
        // evicted by it.
        let generation = registry.listen_generation(id);
        if let (false, Some(theirs)) = (topic, claimed_at) {
            // Just registered, its start not recorded yet: it is newer than the claim.
            let ours = lock(&mine)
                .get(&id)
                .copied()
                .or_else(|| registry.is_listened(id).then(wall_us));
            if ours.is_some_and(|t| (t, node.as_str()) > (theirs, from)) {
                continue;
            }
        }
        let flag = if claimed_at.is_some() { None } else { flag };
        let listened_elsewhere = {
            let mut members = lock(&members);
            let set = members.entry(id).or_default();
            match flag {
                Some("-") => {
                    set.remove(from);
                }
                // A plain id has one listener: the claimant's replaces the others.
                None if !topic => {
                    set.clear();
                    set.insert(from.to_owned());
                }
                _ => {
                    set.insert(from.to_owned());
                }
            }
            let any = !set.is_empty();
            if !any {
                members.remove(&id);
            }
            any
        };
        // Present elsewhere first, so that watchers here see no offline blip when this broker's
        // listener is closed for the other one.
        registry.set_remote(id, listened_elsewhere);
        if flag.is_none() && !topic && registry.evict_if(id, Some(generation)) {
            tracing::debug!(%id, "listener replaced on another broker");
        }
    }
}

/// Says this broker is alive every [`HEARTBEAT`], and forgets the brokers not heard for three:
/// their ids are no longer listened on, for presence and topics.
async fn heartbeat<E: Engine>(engine: E, shared: Shared) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_connected = false;
    loop {
        tick.tick().await;
        let connected = engine.connected();
        if !connected {
            // Nothing is heard while away: nobody is taken as gone for it.
            was_connected = false;
            continue;
        }
        if !was_connected {
            // Back: the others are given three heartbeats from now, whatever ran first.
            let now = Instant::now();
            lock(&shared.seen).values_mut().for_each(|t| *t = now);
            was_connected = true;
        }
        publish_claim(&engine, format!("! {}", shared.node)).await;
        let now = Instant::now();
        let gone: Vec<String> = {
            let mut seen = lock(&shared.seen);
            let gone = seen
                .iter()
                .filter(|(_, t)| now.duration_since(**t) > 3 * HEARTBEAT)
                .map(|(n, _)| n.clone())
                .collect::<Vec<_>>();
            gone.iter().for_each(|n| {
                seen.remove(n);
            });
            gone
        };
        if gone.is_empty() {
            continue;
        }
        tracing::info!(brokers = ?gone, "cluster engine: brokers not heard for {:?}: gone", 3 * HEARTBEAT);
        let changed: Vec<(Id, bool)> = {
            let mut members = lock(&shared.members);
            let mut changed = Vec::new();
            members.retain(|id, set| {
                let before = set.len();
                set.retain(|n| !gone.contains(n));
                if set.len() != before {
                    changed.push((*id, !set.is_empty()));
                }
                !set.is_empty()
            });
            changed
        };
        for (id, listened) in changed {
            shared.registry.set_remote(id, listened);
        }
    }
}

/// Routes one message through the engine and answers its sender with the outcome.
async fn remote<E: Engine>(engine: E, shared: Shared, mut request: RouteRequest, reply: RouteReply) {
    let id = request.id;
    let mut msg = Msg::new(request.payload.clone());
    if let Some(from) = request.from {
        msg = msg.with("Fedbroker-From", from);
    }
    if let Some((sender, ms)) = request.reply.take() {
        msg = msg.with("Fedbroker-Reply-Ms", ms);
        return remote_request(engine, id, msg, ms, sender, reply).await;
    }
    let answer = engine.request(subject(id), msg, REQUEST_TIMEOUT).await;
    if matches!(answer, Err(EngineError::NoResponders)) && lock(&shared.members).remove(&id).is_some() {
        // A broker announced a listener and is gone without saying so: not present any more.
        shared.registry.set_remote(id, false);
    }
    let answer = match answer {
        Ok(m) => outcome(id, &m),
        // Nobody listens anywhere: a mailbox id keeps the message here (202).
        Err(EngineError::NoResponders) if shared.registry.has_mailbox(id) => {
            return shared.local.route(request, reply);
        }
        Err(EngineError::NoResponders) => Err(HttpError::NoListener(id)),
        // The engine's own bound (nats-server's max_payload, 1 MiB by default).
        Err(EngineError::TooLarge(limit)) => Err(HttpError::PayloadTooLarge { limit }),
        Err(e) => {
            tracing::debug!(%id, "cluster engine: {e}");
            Err(HttpError::RouteUnavailable)
        }
    };
    reply.answer(answer);
}

/// A request-reply to a listener on another broker: on an inbox of its own, the first answer
/// says whether it was queued (the route's answer), the second carries the listener's reply.
async fn remote_request<E: Engine>(engine: E, id: Id, mut msg: Msg, ms: u64, sender: ReplySender, route: RouteReply) {
    let (inbox, mut answers) = match engine.inbox().await {
        Ok(inbox) => inbox,
        Err(e) => {
            tracing::debug!(%id, "cluster engine: {e}");
            return route.answer(Err(HttpError::RouteUnavailable));
        }
    };
    msg.reply = Some(inbox);
    let first = match engine.publish(subject(id), msg).await {
        Err(EngineError::NoResponders) => Err(HttpError::NoListener(id)),
        Err(EngineError::TooLarge(limit)) => Err(HttpError::PayloadTooLarge { limit }),
        Err(e) => {
            tracing::debug!(%id, "cluster engine: {e}");
            Err(HttpError::RouteUnavailable)
        }
        Ok(()) => first_answer(id, &mut answers).await,
    };
    relay_reply(first, answers, ms, sender, route).await;
}

/// The first answer to a request: whether it was queued.
async fn first_answer(id: Id, answers: &mut engine::Answers) -> Result<Delivered, HttpError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, answers.next()).await {
        Ok(Some(Err(EngineError::NoResponders))) => Err(HttpError::NoListener(id)),
        Ok(Some(Ok(m))) => outcome(id, &m),
        _ => Err(HttpError::RouteUnavailable),
    }
}

/// Answers a request's route with `first`, then, once queued, hands the listener's reply (the
/// second answer) to the waiting `POST`.
async fn relay_reply(
    first: Result<Delivered, HttpError>,
    mut answers: engine::Answers,
    ms: u64,
    sender: ReplySender,
    route: RouteReply,
) {
    let queued = matches!(first, Ok(Delivered::AwaitingReply));
    route.answer(first);
    if !queued {
        return;
    }
    let wait = Duration::from_millis(ms) + Duration::from_secs(1);
    if let Ok(Some(Ok(m))) = tokio::time::timeout(wait, answers.next()).await {
        if let Some(status) = m.number("Fedbroker-Reply-Status").and_then(|s| u16::try_from(s).ok()) {
            sender.send(ReplyMsg {
                status,
                content_type: m.header("Content-Type").map(str::to_owned),
                body: m.payload,
            });
        }
    }
    // No reply in time, or the listener went away: dropping the sender tells the POST (502, or
    // its own 504 first).
}

/// A topic message: to this broker's listeners and to every other broker that announced
/// listeners on the topic, each asked by name; `Fedbroker-Recipients` sums them. A broker that
/// is gone (no responders) is forgotten.
async fn topic<E: Engine>(
    engine: E,
    shared: Shared,
    others: Vec<String>,
    request: RouteRequest,
    reply: RouteReply,
    connected: bool,
) {
    let id = request.id;
    let mut asks = Vec::with_capacity(others.len());
    for node in &others {
        let msg = Msg::new(request.payload.clone()).with("Fedbroker-Topic", id);
        asks.push(engine.request(topic_subject(node), msg, REQUEST_TIMEOUT));
    }
    let (tx, mut pending) = route_channel(None);
    shared.local.route(request, tx);
    poll_fn(|cx| pending.poll_ready(cx)).await;
    let mine = pending.try_take().unwrap_or(Err(HttpError::RouteUnavailable));
    let answers = futures_util::future::join_all(asks).await;
    let (mut recipients, mut slow, mut unanswered) = (0u32, false, false);
    match &mine {
        Ok(Delivered::Topic { recipients: n }) => recipients += n,
        Err(HttpError::QueueFull(_)) => slow = true,
        _ => {}
    }
    for (node, answer) in others.iter().zip(answers) {
        match answer {
            Ok(m) => match outcome(id, &m) {
                Ok(Delivered::Topic { recipients: n }) => recipients = recipients.saturating_add(n),
                Err(HttpError::QueueFull(_)) => slow = true,
                _ => {}
            },
            Err(EngineError::NoResponders) => {
                if let Some(set) = lock(&shared.members).get_mut(&id) {
                    set.remove(node);
                }
            }
            Err(e) => {
                tracing::debug!(%id, node, "cluster engine: topic message not answered: {e}");
                unanswered = true;
            }
        }
    }
    reply.answer(match (recipients, slow, connected && !unanswered) {
        (n, _, _) if n > 0 => Ok(Delivered::Topic { recipients: n }),
        (_, true, _) => Err(HttpError::QueueFull(id)),
        // Not connected, or a broker with listeners did not answer: not "nobody listens".
        (_, _, false) => Err(HttpError::RouteUnavailable),
        _ => Err(HttpError::NoTopicListener(id)),
    });
}

/// The refusals a broker's local routing can answer, by a name that crosses the engine: the
/// broker the `POST` reached answers the same refusal (status and sentence), not only the same
/// status.
const REFUSALS: [&str; 7] = [
    "queue-full",
    "store-unavailable",
    "too-many-pending-replies",
    "mailbox-full",
    "cannot-reply",
    "no-listener",
    "no-topic-listener",
];

fn refusal_name(e: &HttpError) -> Option<&'static str> {
    let i = match e {
        HttpError::QueueFull(_) => 0,
        HttpError::StoreUnavailable => 1,
        HttpError::TooManyPendingReplies => 2,
        HttpError::MailboxFull(_) => 3,
        HttpError::CannotReply(_) => 4,
        HttpError::NoListener(_) => 5,
        HttpError::NoTopicListener(_) => 6,
        _ => return None,
    };
    Some(REFUSALS[i])
}

fn refusal(id: Id, name: &str) -> Option<HttpError> {
    Some(match REFUSALS.iter().position(|n| *n == name)? {
        0 => HttpError::QueueFull(id),
        1 => HttpError::StoreUnavailable,
        2 => HttpError::TooManyPendingReplies,
        3 => HttpError::MailboxFull(id),
        4 => HttpError::CannotReply(id),
        5 => HttpError::NoListener(id),
        _ => HttpError::NoTopicListener(id),
    })
}

/// A local routing's outcome as the answer sent back through the engine ([`outcome`] reads it).
fn answer_of(result: &Result<Delivered, HttpError>) -> Msg {
    let mut answer = Msg::default();
    let status = match result {
        Ok(Delivered::AwaitingReply) => {
            answer = answer.with("Fedbroker-Awaiting", 1);
            204
        }
        Ok(Delivered::Listener) => 204,
        Ok(Delivered::Topic { recipients }) => {
            answer = answer.with("Fedbroker-Recipients", recipients);
            204
        }
        Ok(Delivered::Mailbox { seq, live }) => {
            answer = answer.with("Fedbroker-Seq", seq);
            if *live {
                204
            } else {
                202
            }
        }
        Err(e) => {
            if let Some(name) = refusal_name(e) {
                answer = answer.with("Fedbroker-Error", name);
            }
            answer.payload = Bytes::from(e.to_string());
            e.status()
        }
    };
    answer.with("Fedbroker-Status", status)
}

/// The outcome a remote broker answered, as this broker's answer.
fn outcome(id: Id, m: &Msg) -> Result<Delivered, HttpError> {
    if let Some(e) = m.header("Fedbroker-Error").and_then(|name| refusal(id, name)) {
        return Err(e);
    }
    match m.number("Fedbroker-Status") {
        Some(204) if m.number("Fedbroker-Awaiting") == Some(1) => Ok(Delivered::AwaitingReply),
        Some(204) => match (m.number("Fedbroker-Recipients"), m.number("Fedbroker-Seq")) {
            (Some(n), _) => Ok(Delivered::Topic {
                recipients: u32::try_from(n).unwrap_or(u32::MAX),
            }),
            (None, Some(seq)) => Ok(Delivered::Mailbox { seq, live: true }),
            (None, None) => Ok(Delivered::Listener),
        },
        Some(202) => Ok(Delivered::Mailbox {
            seq: m.number("Fedbroker-Seq").unwrap_or(0),
            live: false,
        }),
        Some(404) => Err(HttpError::NoListener(id)),
        Some(409) => Err(HttpError::CannotReply(id)),
        // A 503 not named above (a broker shutting down, for instance): retry later.
        Some(503) => Err(HttpError::RouteUnavailable),
        Some(507) => Err(HttpError::MailboxFull(id)),
        _ => Err(HttpError::RouteUnavailable),
    }
}

/// Takes the engine's messages for `id` and routes each into this broker, answering with the
/// outcome. One at a time, so that messages between two brokers keep their order.
///
/// Stopped when `stop`'s sender is dropped, between two messages: a message being answered is
/// answered (cancelled midway, a delivered message would be answered `503` for want of an
/// answer, and a retry would deliver it twice).
async fn serve<E: Engine>(
    engine: E,
    mut sub: engine::Subscription,
    id: Id,
    shared: Shared,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => return,
            m = sub.next() => match m {
                Some(m) if shared.windows && m.header("Fedbroker-Seq").is_some() => mirror_record(&engine, &shared, id, m).await,
                Some(m) if shared.windows && shared.registry.has_mailbox(id) => {
                    // From a broker that keeps no mailbox for this id: numbered here, it would
                    // take a seq of the engine's sequence.
                    tracing::warn!(%id, "cluster: a message for a mailbox id from a broker without that mailbox (give every broker the same --mailbox)");
                    if let Some(reply_to) = m.reply {
                        respond(&engine, id, reply_to, Err(HttpError::RouteUnavailable), None).await;
                    }
                }
                Some(m) => answer(&engine, &shared.local, id, m).await,
                None => return,
            },
        }
    }
}

/// Routes one message from the engine into this broker and answers with the outcome.
async fn answer<E: Engine>(engine: &E, local: &LocalRouter, id: Id, m: Msg) {
    let from = m
        .number("Fedbroker-From")
        .and_then(|n| u32::try_from(n).ok())
        .and_then(Id::new);
    let (reply, waiting) = match m.number("Fedbroker-Reply-Ms") {
        Some(ms) => {
            let (tx, rx) = reply_channel();
            (Some((tx, ms)), Some((rx, ms)))
        }
        None => (None, None),
    };
    let request = RouteRequest {
        id,
        payload: m.payload,
        from,
        reply,
        at_ms: wall_ms(),
    };
    let (tx, mut pending) = route_channel(None);
    local.route(request, tx);
    poll_fn(|cx| pending.poll_ready(cx)).await;
    let result = pending.try_take().unwrap_or(Err(HttpError::RouteUnavailable));
    if let Some(reply_to) = m.reply {
        respond(engine, id, reply_to, result, waiting).await;
    }
}

/// Answers a message from another broker on its inbox with this broker's outcome; for a request
/// queued to a listener here, then with the listener's reply (without holding up the id's next
/// messages).
async fn respond<E: Engine>(
    engine: &E,
    id: Id,
    reply_to: String,
    result: Result<Delivered, HttpError>,
    waiting: Option<(PendingReply, u64)>,
) {
    let answer = answer_of(&result);
    let queued = matches!(result, Ok(Delivered::AwaitingReply));
    if let Err(e) = engine.publish(reply_to.clone(), answer).await {
        tracing::debug!(%id, "cluster engine: answer not sent: {e}");
    }
    if let (true, Some((rx, ms))) = (queued, waiting) {
        let engine = engine.clone();
        tokio::spawn(async move {
            let outcome = tokio::time::timeout(Duration::from_millis(ms), async {
                poll_fn(|cx| rx.poll_ready(cx)).await;
                rx.try_take()
            })
            .await;
            let mut answer = Msg::default();
            if let Ok(Some(ReplyOutcome::Replied(r))) = outcome {
                answer = answer.with("Fedbroker-Reply-Status", r.status);
                if let Some(ct) = &r.content_type {
                    answer = answer.with("Content-Type", ct);
                }
                answer.payload = r.body;
            }
            // Gone, or no reply in time: an answer without a reply status tells the waiting
            // broker at once (502, unless its POST timed out first).
            if let Err(e) = engine.publish(reply_to, answer).await {
                tracing::debug!(%id, "cluster engine: reply not sent: {e}");
            }
        });
    }
}

/// A mailbox record as the core's window takes it.
fn restored(seq: u64, m: Msg) -> Restored {
    Restored {
        seq,
        at_ms: m.number("Fedbroker-At").unwrap_or(0),
        from: m
            .number("Fedbroker-From")
            .and_then(|n| u32::try_from(n).ok())
            .and_then(Id::new),
        // A request's seq: taken, its body not kept.
        payload: m.header("Fedbroker-Reply-Ms").is_none().then_some(m.payload),
    }
}

/// Reads what `id`'s mailbox in the engine holds after this broker's window of it (everything,
/// when it has none), as much as the window keeps.
async fn read_mailbox<E: Engine>(engine: &E, shared: &Shared, id: Id) -> Result<MailboxSync, HttpError> {
    let (max_bytes, max_messages) = shared
        .registry
        .mailbox_config()
        .map_or((usize::MAX, usize::MAX), |c| (c.max_bytes, c.max_messages));
    // At most twice: once more from the start when the engine's numbering was found reset.
    for _ in 0..2 {
        let after = shared.registry.window_last(id).unwrap_or(0);
        let read = engine
            .mailbox_read(id, after, max_bytes, max_messages)
            .await
            .map_err(|e| {
                tracing::debug!(%id, "cluster engine: mailbox not read: {e}");
                HttpError::RouteUnavailable
            })?;
        let known = lock(&shared.epochs).get(&id).cloned();
        let reset = read.last < after || known.is_some_and(|k| !read.epoch.is_empty() && k != read.epoch);
        if reset && after > 0 {
            lost_in_the_engine(shared, id, read.last, after);
            continue;
        }
        remember_epoch(shared, id, &read.epoch);
        return Ok(MailboxSync {
            after,
            trimmed_through: read.trimmed_through,
            last: read.last,
            records: read.records.into_iter().map(|(seq, m)| restored(seq, m)).collect(),
        });
    }
    Err(HttpError::RouteUnavailable)
}

/// Remembers the epoch of `id`'s window here (nothing when the engine has none yet: the first
/// record tells it).
fn remember_epoch(shared: &Shared, id: Id, epoch: &str) {
    if epoch.is_empty() {
        return;
    }
    let mut epochs = lock(&shared.epochs);
    if epochs.len() >= 65_536 {
        // Bounded: only the ids with a window here are kept.
        epochs.retain(|id, _| shared.registry.window_last(*id).is_some());
    }
    epochs.insert(id, epoch.to_owned());
}

/// The engine started numbering `id` again (it lost its data): the window here is given back
/// and its listener closed (`4002`), to listen again and read the mailbox afresh.
fn lost_in_the_engine(shared: &Shared, id: Id, last: u64, window: u64) {
    tracing::warn!(
        %id,
        last,
        window,
        "cluster engine: the mailbox was lost in the engine (its numbering started again); its listener here is closed to start again"
    );
    lock(&shared.epochs).remove(&id);
    shared.registry.reset_window(id);
}

/// Brings `id`'s window here up to its mailbox in the engine (records published while this
/// broker was not subscribed, or lost on the way).
async fn catch_up<E: Engine>(engine: &E, shared: &Shared, id: Id) {
    if shared.registry.window_last(id).is_none() {
        return;
    }
    match read_mailbox(engine, shared, id).await {
        Ok(sync) => {
            shared.registry.sync_window(id, sync, wall_ms());
        }
        Err(_) => tracing::debug!(%id, "cluster engine: window not brought up to date"),
    }
}

/// A record of `id`'s mailbox, published by the engine as it was appended: into the window here,
/// after any records missed before it; a request's answer goes back on its inbox.
async fn mirror_record<E: Engine>(engine: &E, shared: &Shared, id: Id, m: Msg) {
    let Some(seq) = m.number("Fedbroker-Seq") else { return };
    if let Some(epoch) = m.header("Fedbroker-Epoch") {
        let known = lock(&shared.epochs).get(&id).cloned();
        match (known, shared.registry.window_last(id)) {
            (Some(k), Some(last)) if k != epoch => {
                // Numbered again by the engine: the window's seqs mean other messages now.
                lost_in_the_engine(shared, id, seq, last);
                if let Some(reply_to) = m.reply {
                    respond(engine, id, reply_to, Err(HttpError::RouteUnavailable), None).await;
                }
                return;
            }
            (None, Some(_)) => remember_epoch(shared, id, epoch),
            _ => {}
        }
    }
    if shared.registry.window_last(id).is_some_and(|last| last + 1 < seq) {
        catch_up(engine, shared, id).await;
    }
    let at_ms = m.number("Fedbroker-At").unwrap_or_else(wall_ms);
    let from = m
        .number("Fedbroker-From")
        .and_then(|n| u32::try_from(n).ok())
        .and_then(Id::new);
    let (item, waiting) = match (m.number("Fedbroker-Reply-Ms"), &m.reply) {
        (Some(ms), Some(_)) => {
            let (tx, rx) = reply_channel();
            let item = MirrorItem::Request {
                payload: m.payload.clone(),
                reply: tx,
                timeout_ms: ms,
            };
            (item, Some((rx, ms)))
        }
        (Some(_), None) => (MirrorItem::Taken, None),
        (None, _) => (MirrorItem::Message(m.payload.clone()), None),
    };
    let result = match shared.registry.mirror(id, seq, at_ms, from, item, wall_ms()) {
        Mirrored::Done(result) => result,
        Mirrored::NoWindow => Err(HttpError::NoListener(id)),
        Mirrored::Behind => Err(HttpError::RouteUnavailable),
        Mirrored::Ahead { last } => {
            tracing::warn!(%id, seq, last, "cluster engine: mailbox records missing from the window");
            Err(HttpError::RouteUnavailable)
        }
    };
    if let Some(reply_to) = m.reply {
        respond(engine, id, reply_to, result, waiting).await;
    }
}

/// A message for a mailbox id: appended to its mailbox in the engine, which numbers it and
/// publishes it to the broker holding its listener, if any (`204`; `202` when none); a request
/// then waits for that broker's answers on an inbox of its own.
async fn mailbox_send<E: Engine>(engine: E, shared: Shared, mut request: RouteRequest, reply: RouteReply) {
    let id = request.id;
    let Some(limits) = shared.limits else {
        return reply.answer(Err(HttpError::NoListener(id)));
    };
    // Larger than a window keeps (`--mailbox-bytes`): refused, as one broker's mailbox does,
    // rather than kept by the engine and dropped by every window.
    let fits = shared
        .registry
        .mailbox_config()
        .is_none_or(|c| request.payload.len() + fedbroker_core::mailbox::ENTRY_OVERHEAD <= c.max_bytes);
    if !fits {
        return reply.answer(Err(HttpError::MailboxFull(id)));
    }
    let mut msg = Msg::new(request.payload.clone()).with("Fedbroker-At", request.at_ms);
    if let Some(from) = request.from {
        msg = msg.with("Fedbroker-From", from);
    }
    let asks = request.reply.take();
    let mut answers = None;
    if let Some((_, ms)) = &asks {
        match engine.inbox().await {
            Ok((inbox, a)) => {
                msg.reply = Some(inbox);
                answers = Some(a);
            }
            Err(e) => {
                tracing::debug!(%id, "cluster engine: {e}");
                return reply.answer(Err(HttpError::RouteUnavailable));
            }
        }
        msg = msg.with("Fedbroker-Reply-Ms", ms);
    }
    let appended = engine
        .mailbox_append(id, subject(id), msg, asks.is_none(), limits, request.at_ms)
        .await;
    let (seq, receivers) = match appended {
        Ok(a) => a,
        Err(EngineError::Full) => return reply.answer(Err(HttpError::MailboxFull(id))),
        Err(EngineError::TooLarge(limit)) => return reply.answer(Err(HttpError::PayloadTooLarge { limit })),
        Err(e) => {
            tracing::debug!(%id, "cluster engine: mailbox append failed: {e}");
            return reply.answer(Err(HttpError::RouteUnavailable));
        }
    };
    match (asks, answers) {
        (Some((sender, ms)), Some(mut answers)) => {
            if receivers == 0 {
                return reply.answer(Err(HttpError::NoListener(id)));
            }
            let first = first_answer(id, &mut answers).await;
            relay_reply(first, answers, ms, sender, reply).await;
        }
        _ => reply.answer(Ok(Delivered::Mailbox {
            seq,
            live: receivers > 0,
        })),
    }
}

fn wall_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn wall_ms() -> u64 {
    wall_us() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_cross_the_engine_as_they_were() {
        let id = Id::new(9).unwrap();
        let outcomes = [
            Ok(Delivered::Listener),
            Ok(Delivered::AwaitingReply),
            Ok(Delivered::Topic { recipients: 3 }),
            Ok(Delivered::Mailbox { seq: 7, live: true }),
            Ok(Delivered::Mailbox { seq: 8, live: false }),
            Err(HttpError::QueueFull(id)),
            Err(HttpError::StoreUnavailable),
            Err(HttpError::TooManyPendingReplies),
            Err(HttpError::MailboxFull(id)),
            Err(HttpError::CannotReply(id)),
            Err(HttpError::NoListener(id)),
            Err(HttpError::NoTopicListener(id)),
        ];
        for o in outcomes {
            let bytes = engine::encode(&answer_of(&o)).unwrap();
            let back = outcome(id, &engine::decode(Bytes::from(bytes)).unwrap());
            assert_eq!(back, o);
        }
        // Any other refusal: its status, as a routing failure.
        let other = answer_of(&Err(HttpError::ShuttingDown));
        assert_eq!(outcome(id, &other), Err(HttpError::RouteUnavailable));
    }

    #[test]
    fn engine_urls_are_checked() {
        for good in [
            "nats://127.0.0.1:4222",
            "nats://h",
            "redis://u:p@h:6379/0",
            "redis://:p@[::1]:6379",
            "nats://[::1]",
            "nats://[::1]:4222",
        ] {
            assert!(check_url(good).is_ok(), "{good}");
        }
        for bad in [
            "h:4222",
            "http://h",
            "rediss://h",
            "nats://",
            "redis://u:p@",
            "nats://h:99999",
            "nats://[::1]x",
            "nats://h:x",
            "u:p@h:4222",
            "u:p@h://x",
            "nats:/u:p@h",
            "redis://u:p@h:6379/notadb",
        ] {
            let e = check_url(bad).expect_err(bad);
            assert!(!e.0.contains(":p@"), "{e}");
        }
    }

    #[test]
    fn credentials_are_kept_out_of_the_address() {
        assert_eq!(
            split_credentials("nats://127.0.0.1:4222"),
            ("nats://127.0.0.1:4222".into(), None)
        );
        assert_eq!(
            split_credentials("nats://fed:s3%40cret@h:4222"),
            ("nats://h:4222".into(), Some(("fed".into(), "s3@cret".into())))
        );
        assert_eq!(
            split_credentials("nats://token@h:1"),
            ("nats://h:1".into(), Some(("token".into(), String::new())))
        );
    }
}
