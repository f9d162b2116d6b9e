//! # fedbroker-cluster
//!
//! Several equal brokers behind one address share one id space through an engine operators
//! already run (SPEC §10): a `POST` that reaches any broker reaches the listener on whichever
//! broker it is connected to. This crate is the core's [`Router`] for that, over **NATS**:
//!
//! - a broker subscribes to `fedbroker.id.{id}` for each id listened on it (told by
//!   [`Registry::on_listened_change`]);
//! - a message for an id not listened on locally is a NATS request on that subject: the broker
//!   holding the listener routes it locally and answers with the outcome (`Fedbroker-Status:
//!   204`, `503` when its listener's queue is full, …), which becomes this `POST`'s answer; "no
//!   responders" is `404`;
//! - a broker that gets a listener on an id publishes a claim on `fedbroker.claim`; a broker
//!   that held that id closes its listener with `4000` ([`Registry::evict`]): replacement
//!   crosses brokers;
//! - with the engine unreachable, ids listened on locally keep working and the others get `503`
//!   (`the message could not be routed; retry later`); the client reconnects and subscribes
//!   again by itself.
//!
//! The NATS client runs on a runtime of its own, on one thread, so every adapter (tokio, smol,
//! blocking threads) uses it the same way: the router hands it work through a bounded channel
//! and never waits.
//!
//! - a request-reply (`POST …?reply=MS`) to a listener on another broker travels the same way;
//!   the listener's broker answers twice on the request's own inbox: once queued, then with the
//!   listener's reply (or that it went away).
//!
//! - a topic's message reaches its listeners on every broker: brokers announce the topics they
//!   have listeners on (on `fedbroker.claim`), and a broker publishing to a topic asks each of
//!   them by name; `Fedbroker-Recipients` sums their answers.
//!
//! - presence: brokers announce the ids they start and stop listening on; watchers see an id
//!   online while any broker has a listener ([`Registry::set_remote`]).
//!
//! Not yet: Redis, and mailboxes shared across brokers (docs/cluster.md says what they do
//! today).

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::StatusCode;
use async_nats::{HeaderMap, Request, RequestErrorKind};
use bytes::Bytes;
use fedbroker_core::{
    reply_channel, route_channel, Delivered, HttpError, Id, LocalRouter, Registry, ReplyMsg, ReplyOutcome, ReplySender,
    RouteReply, RouteRequest, Router, RouterGauges,
};
use futures_util::StreamExt;
use tokio::sync::mpsc;

/// Messages waiting for the engine's thread before new ones are refused (`503`).
const QUEUE: usize = 65_536;

/// Messages routed through the engine and not answered yet, at most; beyond, `503`.
const IN_FLIGHT: usize = 65_536;

/// How long a message routed through the engine may take to be answered.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The subject of messages for `id`.
fn subject(id: Id) -> String {
    format!("fedbroker.id.{id}")
}

/// The subject on which brokers announce the ids they start listening on (`ID NODE`: a plain
/// id is taken from whoever held it), stop listening on (`ID NODE -`), or listen on already
/// (`ID NODE +`, the answer to `? NODE`, which a broker sends when it (re)connects).
const CLAIMS: &str = "fedbroker.claim";

/// The subject on which broker `node` takes a topic's messages for its own listeners.
fn topic_subject(node: &str, id: Id) -> String {
    format!("fedbroker.node.{node}.topic.{id}")
}

/// Which other brokers have listeners on which id, as they announced it (topics' fan-out and
/// presence).
type Members = Arc<std::sync::Mutex<HashMap<Id, std::collections::BTreeSet<String>>>>;

/// The ids listened on this broker, with when they started to be (wall-clock ms): the newer of
/// two listeners of a plain id on two brokers is the one that stays.
type Mine = Arc<std::sync::Mutex<std::collections::BTreeMap<Id, u64>>>;

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Work for the engine's thread.
enum Work {
    Route(RouteRequest, RouteReply),
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

/// The cluster's router: ids listened on this broker are routed here; the others through NATS.
pub struct NatsRouter {
    registry: Registry,
    local: LocalRouter,
    work: mpsc::Sender<Work>,
    state: Arc<State>,
}

/// What the engine's thread tells the statistics.
#[derive(Default)]
struct State {
    connected: AtomicBool,
    subscriptions: AtomicUsize,
}

impl NatsRouter {
    /// Starts the engine's thread for `url` (`nats://HOST:PORT`) over this broker's `registry`.
    /// It connects in the background: until it is connected, messages for ids not listened on
    /// here get `503`.
    pub fn start(url: &str, registry: Registry) -> Result<NatsRouter, ClusterError> {
        let url = url.to_owned();
        let (tx, rx) = mpsc::channel(QUEUE);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClusterError(format!("cannot start the cluster's runtime: {e}")))?;
        let node = format!("{:016x}", node_id());
        let engine_registry = registry.clone();
        let mine = Mine::default();
        let engine_mine = mine.clone();
        let state = Arc::new(State::default());
        let engine_state = state.clone();
        std::thread::Builder::new()
            .name("fedbroker-cluster".into())
            .spawn({
                let tx = tx.clone();
                move || runtime.block_on(run(url, node, engine_registry, engine_mine, (tx, rx), engine_state))
            })
            .map_err(|e| ClusterError(format!("cannot start the cluster's thread: {e}")))?;
        let changes = tx.clone();
        // The registry holds its observer and the observer a handle of the registry: both live
        // as long as the broker, which is the process.
        let observed = registry.clone();
        registry.on_listened_change(move |id| {
            // When, recorded at once: a claim from another broker is compared with it.
            let mut mine = lock(&mine);
            if observed.is_listened(id) {
                mine.entry(id).or_insert_with(wall_ms);
            } else {
                mine.remove(&id);
            }
            drop(mine);
            // Subscriptions are reconciled with the registry's state by the engine's thread; a
            // change that does not fit now is picked up by the next one for the id.
            let _ = changes.try_send(Work::Changed(id));
        });
        Ok(NatsRouter {
            local: LocalRouter::new(registry.clone()),
            registry,
            work: tx,
            state,
        })
    }
}

impl Router for NatsRouter {
    fn route(&self, request: RouteRequest, reply: RouteReply) {
        if self.registry.is_topic(request.id) {
            // Every broker with listeners on the topic takes it; the engine's thread sums.
            let _ = self.work.try_send(Work::Topic(request, reply));
            return;
        }
        if self.registry.is_listened(request.id) {
            return self.local.route(request, reply);
        }
        // Full or stopped: the reply is dropped with the work, which answers 503.
        let _ = self.work.try_send(Work::Route(request, reply));
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

async fn run(
    url: String,
    node: String,
    registry: Registry,
    mine: Mine,
    (to_self, mut work): (mpsc::Sender<Work>, mpsc::Receiver<Work>),
    state: Arc<State>,
) {
    let events = state.clone();
    let options = async_nats::ConnectOptions::new()
        .name("fedbroker")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .event_callback(move |event| {
            match event {
                async_nats::Event::Connected => {
                    events.connected.store(true, Ordering::Relaxed);
                    // Announcements made while disconnected were lost: make them again.
                    let _ = to_self.try_send(Work::Connected);
                }
                async_nats::Event::Disconnected => events.connected.store(false, Ordering::Relaxed),
                _ => {}
            }
            async move { tracing::info!("cluster engine: {event}") }
        });
    // Credentials go to the client apart from the address, so that no log line (the client's
    // own debug lines print the address it dials) ever shows them.
    let (address, credentials) = split_credentials(&url);
    let options = match credentials {
        Some((user, pass)) => options.user_and_password(user, pass),
        None => options,
    };
    let client = match options.connect(address.as_str()).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("cluster engine {url}: {e}");
            return;
        }
    };
    let local = LocalRouter::new(registry.clone());
    let in_flight = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut subscribed: HashMap<Id, tokio::task::JoinHandle<()>> = HashMap::new();
    let members: Members = Members::default();
    let mut announced: std::collections::BTreeSet<Id> = std::collections::BTreeSet::new();
    // Claims of the other brokers: an id taken elsewhere is closed here (4000); who listens
    // where, for topics' fan-out and for presence.
    {
        let (client, registry, node) = (client.clone(), registry.clone(), node.clone());
        let (members, mine) = (members.clone(), mine.clone());
        tokio::spawn(async move {
            let Ok(mut claims) = client.subscribe(CLAIMS).await else {
                tracing::error!("cluster engine: cannot subscribe to claims");
                return;
            };
            // Ask the others what they listen on (again on every reconnection: Work::Connected).
            let _ = client.publish(CLAIMS, Bytes::from(format!("? {node}"))).await;
            while let Some(m) = claims.next().await {
                let text = String::from_utf8_lossy(&m.payload);
                let mut words = text.split(' ');
                let (Some(what), Some(from)) = (words.next(), words.next()) else {
                    continue;
                };
                if from == node {
                    continue;
                }
                if what == "?" {
                    // Announced again, without taking anything from anyone ("+").
                    let ids: Vec<Id> = lock(&mine).keys().copied().collect();
                    for id in ids {
                        let _ = client.publish(CLAIMS, Bytes::from(format!("{id} {node} +"))).await;
                    }
                    continue;
                }
                let Some(id) = what.parse().ok().and_then(Id::new) else {
                    continue;
                };
                let flag = words.next();
                let topic = registry.is_topic(id);
                // A claim carries when its listener started: an older one than ours (a claim
                // still on its way when ours was made) leaves ours alone; its broker yields
                // when it reads ours.
                let claimed_at = flag.and_then(|f| f.parse::<u64>().ok());
                // The listener this decision is about: a newer one, registered meanwhile, is
                // not evicted by it.
                let generation = registry.listen_generation(id);
                if let (false, Some(theirs)) = (topic, claimed_at) {
                    // Just registered, its start not recorded yet: it is newer than the claim.
                    let ours = lock(&mine)
                        .get(&id)
                        .copied()
                        .or_else(|| registry.is_listened(id).then(wall_ms));
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
                // Present elsewhere first, so that watchers here see no offline blip when this
                // broker's listener is closed for the other one.
                registry.set_remote(id, listened_elsewhere);
                if flag.is_none() && !topic && registry.evict_if(id, Some(generation)) {
                    tracing::debug!(%id, "listener replaced on another broker");
                }
            }
        });
    }
    // Topic messages sent to this broker by name: delivered to its own listeners.
    {
        let (client, local, node) = (client.clone(), local.clone(), node.clone());
        tokio::spawn(async move {
            let Ok(mut topics) = client.subscribe(format!("fedbroker.node.{node}.topic.*")).await else {
                tracing::error!("cluster engine: cannot subscribe to this broker's topics");
                return;
            };
            while let Some(m) = topics.next().await {
                let Some(id) = m
                    .subject
                    .rsplit('.')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .and_then(Id::new)
                else {
                    continue;
                };
                answer(&client, &local, id, m).await;
            }
        });
    }
    while let Some(w) = work.recv().await {
        match w {
            Work::Route(request, reply) => {
                // Not connected: answer 503 now rather than let the client buffer the request
                // and deliver it after the sender was told to retry.
                if client.connection_state() != async_nats::connection::State::Connected {
                    reply.answer(Err(HttpError::RouteUnavailable));
                    continue;
                }
                let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                    reply.answer(Err(HttpError::RouteUnavailable));
                    continue;
                };
                let (client, local, members) = (client.clone(), local.clone(), members.clone());
                tokio::spawn(async move {
                    remote(client, local, members, request, reply).await;
                    drop(permit);
                });
            }
            Work::Connected => {
                let _ = client.publish(CLAIMS, Bytes::from(format!("? {node}"))).await;
                let ids: Vec<Id> = lock(&mine).keys().copied().collect();
                for id in ids {
                    let _ = client.publish(CLAIMS, Bytes::from(format!("{id} {node} +"))).await;
                }
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
                let connected = client.connection_state() == async_nats::connection::State::Connected;
                let (client, local, members) = (client.clone(), local.clone(), members.clone());
                tokio::spawn(async move {
                    let others = if connected { others } else { Vec::new() };
                    topic(client, local, members, others, request, reply, connected).await;
                    drop(permit);
                });
            }
            Work::Changed(id) => {
                let listened = registry.is_listened(id);
                let changed = if listened {
                    announced.insert(id)
                } else {
                    announced.remove(&id)
                };
                if changed && (registry.is_topic(id) || !listened) {
                    // A topic's members, and any id's last listener here gone (presence); a
                    // plain id's claim goes out once it is subscribed, below.
                    let text = if listened {
                        format!("{id} {node}")
                    } else {
                        format!("{id} {node} -")
                    };
                    if let Err(e) = client.publish(CLAIMS, Bytes::from(text)).await {
                        tracing::warn!(%id, "cluster engine: announcement not sent: {e}");
                    }
                }
                if registry.is_topic(id) {
                    continue;
                }
                match (listened, subscribed.contains_key(&id)) {
                    (true, false) => match client.subscribe(subject(id)).await {
                        Ok(sub) => {
                            let task = tokio::spawn(serve(client.clone(), sub, id, local.clone()));
                            subscribed.insert(id, task);
                            state.subscriptions.store(subscribed.len(), Ordering::Relaxed);
                            // Claimed with the listener's own start: none if it left while
                            // the subscription was being made (its leave follows; a claim
                            // stamped now would wrongly beat a newer listener elsewhere).
                            let since = lock(&mine).get(&id).copied();
                            if let Some(since) = since {
                                let claim = format!("{id} {node} {since}");
                                if let Err(e) = client.publish(CLAIMS, Bytes::from(claim)).await {
                                    tracing::warn!(%id, "cluster engine: claim not sent: {e}");
                                }
                            }
                        }
                        Err(e) => tracing::warn!(%id, "cluster engine: cannot subscribe: {e}"),
                    },
                    (false, true) => {
                        if let Some(task) = subscribed.remove(&id) {
                            task.abort();
                        }
                        state.subscriptions.store(subscribed.len(), Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Routes one message through the engine and answers its sender with the outcome.
async fn remote(
    client: async_nats::Client,
    local: LocalRouter,
    members: Members,
    mut request: RouteRequest,
    reply: RouteReply,
) {
    let id = request.id;
    let mut headers = HeaderMap::new();
    if let Some(from) = request.from {
        headers.insert("Fedbroker-From", from.to_string().as_str());
    }
    if let Some((sender, ms)) = request.reply.take() {
        headers.insert("Fedbroker-Reply-Ms", ms.to_string().as_str());
        return remote_request(client, id, request.payload, headers, ms, sender, reply).await;
    }
    let req = Request::new()
        .payload(request.payload.clone())
        .headers(headers)
        .timeout(Some(REQUEST_TIMEOUT));
    let answer = client.send_request(subject(id), req).await;
    if matches!(&answer, Err(e) if e.kind() == RequestErrorKind::NoResponders) && lock(&members).remove(&id).is_some() {
        // A broker announced a listener and is gone without saying so: not present any more.
        local.registry().set_remote(id, false);
    }
    let answer = match answer {
        Ok(m) => decode(id, m.headers.as_ref()),
        // Nobody listens anywhere: a mailbox id keeps the message here (202).
        Err(e) if e.kind() == RequestErrorKind::NoResponders && local.registry().has_mailbox(id) => {
            return local.route(request, reply);
        }
        Err(e) if e.kind() == RequestErrorKind::NoResponders => Err(HttpError::NoListener(id)),
        // The engine's own bound (nats-server's max_payload, 1 MiB by default).
        Err(e) if e.kind() == RequestErrorKind::MaxPayloadExceeded => Err(HttpError::PayloadTooLarge {
            limit: client.try_server_info().map_or(0, |i| i.max_payload),
        }),
        Err(e) => {
            tracing::debug!(%id, "cluster engine: {e}");
            Err(HttpError::RouteUnavailable)
        }
    };
    reply.answer(answer);
}

/// A request-reply to a listener on another broker: on an inbox of its own, the first answer
/// says whether it was queued (the route's answer), the second carries the listener's reply.
async fn remote_request(
    client: async_nats::Client,
    id: Id,
    payload: Bytes,
    headers: HeaderMap,
    ms: u64,
    sender: ReplySender,
    route: RouteReply,
) {
    let inbox = client.new_inbox();
    let mut answers = match client.subscribe(inbox.clone()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%id, "cluster engine: {e}");
            return route.answer(Err(HttpError::RouteUnavailable));
        }
    };
    if let Err(e) = client
        .publish_with_reply_and_headers(subject(id), inbox, headers, payload)
        .await
    {
        tracing::debug!(%id, "cluster engine: {e}");
        return route.answer(Err(HttpError::RouteUnavailable));
    }
    let first = match tokio::time::timeout(REQUEST_TIMEOUT, answers.next()).await {
        Ok(Some(m)) if m.status == Some(StatusCode::NO_RESPONDERS) => Err(HttpError::NoListener(id)),
        Ok(Some(m)) => decode(id, m.headers.as_ref()),
        _ => Err(HttpError::RouteUnavailable),
    };
    let queued = matches!(first, Ok(Delivered::AwaitingReply));
    route.answer(first);
    if !queued {
        return;
    }
    let wait = Duration::from_millis(ms) + Duration::from_secs(1);
    if let Ok(Some(m)) = tokio::time::timeout(wait, answers.next()).await {
        let headers = m.headers.as_ref();
        let get = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str().to_owned());
        if let Some(status) = get("Fedbroker-Reply-Status").and_then(|s| s.parse().ok()) {
            sender.send(ReplyMsg {
                status,
                content_type: get("Content-Type"),
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
async fn topic(
    client: async_nats::Client,
    local: LocalRouter,
    members: Members,
    others: Vec<String>,
    request: RouteRequest,
    reply: RouteReply,
    connected: bool,
) {
    let id = request.id;
    let mut asks = Vec::with_capacity(others.len());
    for node in &others {
        let req = Request::new()
            .payload(request.payload.clone())
            .timeout(Some(REQUEST_TIMEOUT));
        let client = client.clone();
        let subject = topic_subject(node, id);
        asks.push(async move { client.send_request(subject, req).await });
    }
    let (tx, mut pending) = route_channel(None);
    local.route(request, tx);
    poll_fn(|cx| pending.poll_ready(cx)).await;
    let mine = pending.try_take().unwrap_or(Err(HttpError::RouteUnavailable));
    let answers = futures_util::future::join_all(asks).await;
    let (mut recipients, mut slow) = (0u32, false);
    match &mine {
        Ok(Delivered::Topic { recipients: n }) => recipients += n,
        Err(HttpError::QueueFull(_)) => slow = true,
        _ => {}
    }
    for (node, answer) in others.iter().zip(answers) {
        match answer {
            Ok(m) => match decode(id, m.headers.as_ref()) {
                Ok(Delivered::Topic { recipients: n }) => recipients = recipients.saturating_add(n),
                Err(HttpError::QueueFull(_)) => slow = true,
                _ => {}
            },
            Err(e) if e.kind() == RequestErrorKind::NoResponders => {
                if let Some(set) = lock(&members).get_mut(&id) {
                    set.remove(node);
                }
            }
            Err(e) => tracing::debug!(%id, node, "cluster engine: topic message not answered: {e}"),
        }
    }
    reply.answer(match (recipients, slow, connected) {
        (n, _, _) if n > 0 => Ok(Delivered::Topic { recipients: n }),
        (_, true, _) => Err(HttpError::QueueFull(id)),
        (_, _, false) => Err(HttpError::RouteUnavailable),
        _ => Err(HttpError::NoTopicListener(id)),
    });
}

/// The outcome a remote broker answered, as this broker's answer.
fn decode(id: Id, headers: Option<&HeaderMap>) -> Result<Delivered, HttpError> {
    let get = |name: &str| {
        headers
            .and_then(|h| h.get(name))
            .and_then(|v| v.as_str().parse::<u64>().ok())
    };
    match get("Fedbroker-Status") {
        Some(204) if get("Fedbroker-Awaiting") == Some(1) => Ok(Delivered::AwaitingReply),
        Some(204) => match (get("Fedbroker-Recipients"), get("Fedbroker-Seq")) {
            (Some(n), _) => Ok(Delivered::Topic {
                recipients: u32::try_from(n).unwrap_or(u32::MAX),
            }),
            (None, Some(seq)) => Ok(Delivered::Mailbox { seq, live: true }),
            (None, None) => Ok(Delivered::Listener),
        },
        Some(202) => Ok(Delivered::Mailbox {
            seq: get("Fedbroker-Seq").unwrap_or(0),
            live: false,
        }),
        Some(404) => Err(HttpError::NoListener(id)),
        Some(409) => Err(HttpError::CannotReply(id)),
        Some(503) => Err(HttpError::QueueFull(id)),
        Some(507) => Err(HttpError::MailboxFull(id)),
        _ => Err(HttpError::RouteUnavailable),
    }
}

/// Takes the engine's messages for `id` and routes each into this broker, answering with the
/// outcome. One at a time, so that messages between two brokers keep their order.
async fn serve(client: async_nats::Client, mut sub: async_nats::Subscriber, id: Id, local: LocalRouter) {
    while let Some(m) = sub.next().await {
        answer(&client, &local, id, m).await;
    }
}

/// Routes one message from the engine into this broker and answers with the outcome.
async fn answer(client: &async_nats::Client, local: &LocalRouter, id: Id, m: async_nats::Message) {
    {
        let from = m
            .headers
            .as_ref()
            .and_then(|h| h.get("Fedbroker-From"))
            .and_then(|v| v.as_str().parse().ok())
            .and_then(Id::new);
        let reply_ms = m
            .headers
            .as_ref()
            .and_then(|h| h.get("Fedbroker-Reply-Ms"))
            .and_then(|v| v.as_str().parse::<u64>().ok());
        let (reply, waiting) = match reply_ms {
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
        let Some(reply_to) = m.reply else { return };
        let mut headers = HeaderMap::new();
        let status = match &result {
            Ok(Delivered::AwaitingReply) => {
                headers.insert("Fedbroker-Awaiting", "1");
                204
            }
            Ok(Delivered::Listener) => 204,
            Ok(Delivered::Topic { recipients }) => {
                headers.insert("Fedbroker-Recipients", recipients.to_string().as_str());
                204
            }
            Ok(Delivered::Mailbox { seq, live }) => {
                headers.insert("Fedbroker-Seq", seq.to_string().as_str());
                if *live {
                    204
                } else {
                    202
                }
            }
            Err(e) => e.status(),
        };
        headers.insert("Fedbroker-Status", status.to_string().as_str());
        let queued = matches!(result, Ok(Delivered::AwaitingReply));
        let body = result.err().map(|e| Bytes::from(e.to_string())).unwrap_or_default();
        if let Err(e) = client.publish_with_headers(reply_to.clone(), headers, body).await {
            tracing::debug!(%id, "cluster engine: answer not sent: {e}");
        }
        if let (true, Some((rx, ms))) = (queued, waiting) {
            // The listener's reply goes back on the same inbox, without holding up the id's
            // next messages.
            let client = client.clone();
            tokio::spawn(async move {
                let outcome = tokio::time::timeout(Duration::from_millis(ms), async {
                    poll_fn(|cx| rx.poll_ready(cx)).await;
                    rx.try_take()
                })
                .await;
                let mut headers = HeaderMap::new();
                let body = match outcome {
                    Ok(Some(ReplyOutcome::Replied(r))) => {
                        headers.insert("Fedbroker-Reply-Status", r.status.to_string().as_str());
                        if let Some(ct) = &r.content_type {
                            headers.insert("Content-Type", ct.as_str());
                        }
                        r.body
                    }
                    // Gone, or no reply in time: an answer without a reply status tells the
                    // waiting broker at once (502, unless its POST timed out first).
                    _ => Bytes::new(),
                };
                if let Err(e) = client.publish_with_headers(reply_to, headers, body).await {
                    tracing::debug!(%id, "cluster engine: reply not sent: {e}");
                }
            });
        }
    }
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

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
