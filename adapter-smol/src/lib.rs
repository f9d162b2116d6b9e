//! The fedbroker adapter for smol: [`run`] serves a [`Broker`] on bound listeners until
//! SIGINT/SIGTERM, on an executor with one thread per core.
//!
//! One task per connection runs the core's drive loop (see `fedbroker_core`'s crate docs), the
//! same loop as the tokio adapter in smol's idiom: `Async` readiness, a `Timer`, and
//! `future::or` to wait for whichever comes first. All protocol logic is in the core.

use std::future::{pending, poll_fn, Future};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener as StdListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fedbroker_cli::{Server, Transport};
use fedbroker_core::{Broker, Session};
use smol::channel::{Receiver, Sender};
use smol::future::{or, FutureExt};
use smol::{Async, Executor, Timer};

/// How long in-flight work may take after SIGINT/SIGTERM (SPEC §4).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves `broker` on the server's listeners until its signal (SIGINT or SIGTERM), then shuts down
/// gracefully.
pub fn run(broker: Arc<Broker>, server: Server) -> io::Result<()> {
    let ex = Arc::new(Executor::new());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Extra executor threads run until `stop` closes; the calling thread runs `serve`.
    let (stop, stopped) = smol::channel::bounded::<()>(1);
    let workers: Vec<_> = (1..threads)
        .map(|_| {
            let (ex, stopped) = (ex.clone(), stopped.clone());
            std::thread::spawn(move || smol::block_on(ex.run(stopped.recv())))
        })
        .collect();
    let result = smol::block_on(ex.run(serve(ex.clone(), broker, server)));
    drop(stop);
    for w in workers {
        let _ = w.join();
    }
    result
}

async fn serve(ex: Arc<Executor<'static>>, broker: Arc<Broker>, server: Server) -> io::Result<()> {
    let Server { listeners, tls, signal } = server;
    // `shutdown` closes on shutdown; every connection task holds an `alive` sender, so `recv` on
    // `all_done` fails once they have all finished.
    let (shutdown_tx, shutdown) = smol::channel::bounded::<()>(1);
    let (alive, all_done) = smol::channel::bounded::<()>(1);
    for l in listeners {
        let l = Async::new(l)?;
        ex.spawn(accept_loop(
            ex.clone(),
            l,
            broker.clone(),
            tls.clone(),
            shutdown.clone(),
            alive.clone(),
        ))
        .detach();
    }
    drop(alive);
    smol::unblock(move || signal.wait()).await;
    tracing::info!("shutting down: closing listeners, finishing requests");
    shutdown_tx.close();
    let finished = async { all_done.recv().await.is_err() };
    if !finished
        .or(async {
            Timer::after(SHUTDOWN_GRACE).await;
            false
        })
        .await
    {
        tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; exiting anyway");
    }
    Ok(())
}

async fn accept_loop(
    ex: Arc<Executor<'static>>,
    l: Async<StdListener>,
    broker: Arc<Broker>,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: Receiver<()>,
    alive: Sender<()>,
) {
    loop {
        let accepted = or(async { Some(l.accept().await) }, async {
            let _ = shutdown.recv().await;
            None
        })
        .await;
        match accepted {
            None => return,
            Some(Ok((sock, _))) => {
                let _ = sock.get_ref().set_nodelay(true);
                match Transport::new(tls.as_ref()) {
                    Ok(t) => {
                        let s = fedbroker_cli::accept(&broker);
                        ex.spawn(connection(sock, s, t, shutdown.clone(), alive.clone()))
                            .detach();
                    }
                    Err(e) => tracing::warn!("cannot start TLS: {e}"),
                }
            }
            Some(Err(e)) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                Timer::after(Duration::from_millis(50)).await;
            }
        }
    }
}

/// What woke the connection's loop.
enum Wake {
    Readable,
    Writable,
    Session,
    Timer,
    Shutdown,
}

/// `wake` once `fut` completes, if `enabled`; never otherwise.
async fn when<F: Future>(enabled: bool, fut: F, wake: Wake) -> Wake {
    if !enabled {
        pending::<()>().await;
    }
    let _ = fut.await;
    wake
}

/// The drive loop of one connection.
async fn connection(
    sock: Async<TcpStream>,
    mut s: Session,
    mut t: Transport,
    shutdown: Receiver<()>,
    _alive: Sender<()>,
) {
    let mut write_shut = false;
    let mut shutting_down = shutdown.is_closed();
    if shutting_down {
        s.handle_shutdown(Instant::now());
    }
    // One timer for the connection's life, moved only to an earlier deadline: async-io wakes its
    // reactor thread (an eventfd write, an epoll round and a timerfd update) for every timer it
    // registers, which per loop turn cost more than the rest of a 64 KiB message's handling.
    // A deadline that moved later makes the timer fire early; the core then does nothing
    // (`handle_timeout` acts only on what is due) and the timer moves to the new deadline.
    let mut timer = Timer::never();
    let mut armed: Option<Instant> = None;
    // The last read filled the buffer, so more is likely waiting. async-io learns readiness only
    // from its reactor (a oneshot epoll re-arm and a reactor round per wait), so then the next
    // read goes ahead after a yield to the executor instead of waiting for readiness; a read that
    // finds nothing returns `WouldBlock`, which the core ignores. Readiness is awaited with
    // `poll_readable`/`poll_writable`, whose waker stays registered from one loop turn to the
    // next: a `readable()` future would deregister when another event wins the race and
    // re-register (an `epoll_ctl`) on the next turn.
    let mut read_more = false;
    loop {
        if t.write_to(&mut s, Instant::now(), |iov| sock.get_ref().write_vectored(iov))
            .is_err()
        {
            return;
        }
        if !write_shut && t.should_shutdown_write(&mut s) {
            write_shut = true;
            // The peer sees our FIN; we keep reading until it closes too (or the linger ends).
            let _ = sock.get_ref().shutdown(Shutdown::Write);
        }
        if s.is_closed() {
            return;
        }
        if let Some(d) = s.poll_timeout() {
            if armed.is_none_or(|a| d < a) {
                timer.set_at(d);
                armed = Some(d);
            }
        }
        let wants_read = t.wants_read(&s);
        let wants_write = t.wants_write(&mut s);
        // Whichever comes first, as tokio's `select!` with its `if` guards.
        let readable = async {
            if read_more {
                smol::future::yield_now().await;
            } else {
                let _ = poll_fn(|cx| sock.poll_readable(cx)).await;
            }
        };
        let wake = when(wants_read, readable, Wake::Readable)
            .or(when(wants_write, poll_fn(|cx| sock.poll_writable(cx)), Wake::Writable))
            .or(when(true, poll_fn(|cx| s.poll_wake(cx)), Wake::Session))
            .or(when(armed.is_some(), &mut timer, Wake::Timer))
            .or(when(!shutting_down, shutdown.recv(), Wake::Shutdown))
            .await;
        let now = Instant::now();
        match wake {
            Wake::Readable => t.read_from(&mut s, now, |buf| {
                let r = sock.get_ref().read(buf);
                read_more = matches!(r, Ok(n) if n == buf.len());
                r
            }),
            Wake::Writable => {}
            Wake::Session => s.handle_wake(now),
            Wake::Timer => {
                armed = None;
                s.handle_timeout(now);
            }
            Wake::Shutdown => {
                shutting_down = true;
                s.handle_shutdown(now);
            }
        }
    }
}
