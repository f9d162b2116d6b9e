//! The fedbroker adapter for tokio's multi-threaded runtime: [`run`] serves a [`Broker`] on
//! bound listeners until SIGINT/SIGTERM.
//!
//! One task per connection runs the core's drive loop (see `fedbroker_core`'s crate docs):
//! readiness-based reads into a per-thread buffer and vectored writes from the session's outbox
//! (`Transport::read_from`, `Transport::write_to`), so an idle connection holds no buffer of its
//! own. All protocol logic is in the core.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fedbroker_cli::{Server, Transport};
use fedbroker_core::{Broker, Session};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// How long in-flight work may take after SIGINT/SIGTERM (SPEC §4).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves `broker` on the server's listeners until its signal (SIGINT or SIGTERM), then shuts down
/// gracefully.
pub fn run(broker: Arc<Broker>, server: Server) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(serve(broker, server))
}

async fn serve(broker: Arc<Broker>, server: Server) -> io::Result<()> {
    let Server { listeners, tls, signal } = server;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // Every connection task holds a clone of `alive`; when all are dropped, `recv` returns None.
    let (alive, mut all_done) = mpsc::channel::<()>(1);
    for l in listeners {
        l.set_nonblocking(true)?;
        let l = TcpListener::from_std(l)?;
        tokio::spawn(accept_loop(
            l,
            broker.clone(),
            tls.clone(),
            shutdown_rx.clone(),
            alive.clone(),
        ));
    }
    drop(alive);
    let _ = tokio::task::spawn_blocking(move || signal.wait()).await;
    tracing::info!("shutting down: closing listeners, finishing requests");
    let _ = shutdown_tx.send(true);
    if tokio::time::timeout(SHUTDOWN_GRACE, all_done.recv()).await.is_err() {
        tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; exiting anyway");
    }
    Ok(())
}

async fn accept_loop(
    l: TcpListener,
    broker: Arc<Broker>,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut shutdown: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) {
    loop {
        tokio::select! {
            r = l.accept() => match r {
                Ok((sock, _)) => {
                    let _ = sock.set_nodelay(true);
                    match Transport::new(tls.as_ref()) {
                        Ok(t) => {
                            let s = fedbroker_cli::accept(&broker);
                            tokio::spawn(connection(sock, s, t, shutdown.clone(), alive.clone()));
                        }
                        Err(e) => tracing::warn!("cannot start TLS: {e}"),
                    }
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

/// The drive loop of one connection.
async fn connection(
    mut sock: TcpStream,
    mut s: Session,
    mut t: Transport,
    mut shutdown: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
) {
    let mut write_shut = false;
    let mut shutting_down = *shutdown.borrow();
    if shutting_down {
        s.handle_shutdown(Instant::now());
    }
    loop {
        if t.write_to(&mut s, Instant::now(), |iov| sock.try_write_vectored(iov))
            .is_err()
        {
            return;
        }
        if !write_shut && t.should_shutdown_write(&mut s) {
            write_shut = true;
            // The peer sees our FIN; we keep reading until it closes too (or the linger ends).
            let _ = sock.shutdown().await;
        }
        if s.is_closed() {
            return;
        }
        let deadline = s.poll_timeout().map(tokio::time::Instant::from_std);
        let wants_read = t.wants_read(&s);
        let wants_write = t.wants_write(&mut s);
        tokio::select! {
            r = sock.readable(), if wants_read => match r {
                Ok(()) => t.read_from(&mut s, Instant::now(), |buf| sock.try_read(buf)),
                Err(_) => s.handle_eof(Instant::now()),
            },
            _ = sock.writable(), if wants_write => {}
            () = std::future::poll_fn(|cx| s.poll_wake(cx)) => s.handle_wake(Instant::now()),
            () = sleep_until(deadline) => s.handle_timeout(Instant::now()),
            _ = shutdown.changed(), if !shutting_down => {
                shutting_down = true;
                s.handle_shutdown(Instant::now());
            }
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
