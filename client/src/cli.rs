//! The command line: `fedbroker send ADDRESS [FILE|-]` and `fedbroker listen ADDRESS`, with a
//! man-page style `--help` (what each flag does, its default, an example, the statuses involved).

use std::ffi::OsString;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::address::Address;
use crate::listen::{listen, ListenOptions};
use crate::net::Connector;
use crate::outcome::{Failure, Kind, EXIT_CODES};
use crate::send::{send, SendOptions};

const ADDRESS_HELP: &str = "\
The node to send to or listen as, in one of two forms:

  URL          http://HOST[:PORT][/BASE]/ID or https://… (ws:// and wss:// also accepted),
               e.g. https://broker.example.org:8443/42, http://127.0.0.1:8080/mq/42 for a
               broker started with --base-path /mq. A ?query is passed on as it is.
  ID@DOMAIN    e.g. 42@example.org: the broker is found in DNS, through the SRV record
               _fedbroker._tcp.example.org (RFC 2782): targets are tried by priority, then
               in weighted random order, the next one when a connection fails. No SRV record
               is an error (exit 6); there is no fall-back to example.org:443. TLS is used,
               and the certificate must be valid for the SRV target's name (--http: plain).

ID is a number from 1 to 2147483647 without sign or leading zero.";

const AFTER_HELP: &str = "\
EXAMPLES
    fedbroker listen http://127.0.0.1:8080/42               # messages to stdout
    echo hello | fedbroker send http://127.0.0.1:8080/42    # 204: delivered
    fedbroker send 42@example.org report.pdf --token \"$TOKEN\"
    fedbroker listen 42@example.org --exec 'logger -t fedbroker' --token \"$TOKEN\"

ENVIRONMENT
    FEDBROKER_TOKEN   the token when --token is not given
    FEDBROKER_DNS     the DNS server when --dns is not given
";

/// fedbroker: send to and listen on ids of fedbroker brokers.
#[derive(Parser, Debug)]
#[command(
    name = "fedbroker",
    version,
    about = "Send to and listen on ids of fedbroker brokers (a message broker addressed like e-mail)",
    long_about = "Send to and listen on ids of fedbroker brokers.\n\n\
        A fedbroker node is addressed by (broker, id). `send` POSTs bytes to the broker that the \
        node listens on and succeeds when they were queued for a live listener (204). `listen` \
        holds a WebSocket open on an id and receives each message sent to it.",
    after_long_help = format!("{ADDRESS_SECTION}\n\n{AFTER_HELP}\n{EXIT_CODES}"),
)]
pub struct Cli {
    #[command(subcommand)]
    command: Commands,
}

const ADDRESS_SECTION: &str =
    "ADDRESS\n    URL (http(s)://HOST[:PORT][/BASE]/ID) or ID@DOMAIN (DNS SRV _fedbroker._tcp.DOMAIN); \
    see `fedbroker send --help`.";

#[derive(Subcommand, Debug)]
enum Commands {
    /// Send a message (FILE, or stdin) to ADDRESS; exit 0 once a live listener has it queued.
    #[command(
        long_about = "Send one message to ADDRESS: the bytes of FILE, or of stdin when FILE is - or \
            absent, as they are (any bytes, may be empty, at most the broker's --max-message-size, \
            1 MiB by default).\n\n\
            Success (exit 0) is 204 No Content: the message is in the queue of a live listener on \
            the id; or 202 Accepted: the id has a mailbox and keeps it for a later listener. A 204 \
            is not an end-to-end acknowledgement: on an id without a mailbox, a listener that goes \
            away before reading it loses it. A 2xx answer with a body (a URL with ?reply=MS gets the \
            listener's reply) is printed to stdout.",
        after_long_help = format!("{AFTER_HELP}\n{EXIT_CODES}"),
    )]
    Send(SendArgs),
    /// Listen as ADDRESS: print each message, write it to a directory, or run a command per message.
    #[command(
        long_about = "Listen on the id of ADDRESS over a WebSocket and hand on each message, in the \
            order the broker accepted them: to stdout (the bytes as they are), or to a file per \
            message (--output), and/or to a command per message (--exec). A line \
            `fedbroker: listening on URL` on stderr says when messages can be received.\n\n\
            One listener per id: a later listener on the same id replaces this one (exit 10).\n\n\
            RECONNECTING: a lost connection (network error, broker restart or shutdown, nothing \
            received for --idle-timeout), an unreachable broker or a 503 are retried after 0.5 s, \
            doubling up to 30 s, looking the SRV record up again; without limit unless --retries \
            N bounds consecutive failures (a successful upgrade resets the count). --no-reconnect \
            exits instead. Refusals (401, 403, 400), replacement (4000) and token expiry (4001) \
            are never retried. Messages sent while no connection is up get 404, unless the id has a \
            mailbox: then they are kept, and a reconnection resumes after the last message handed \
            on (?since=).",
        after_long_help = format!("{AFTER_HELP}\n{EXIT_CODES}"),
    )]
    Listen(ListenArgs),
}

/// Flags of both commands.
#[derive(Args, Debug)]
struct Common {
    #[arg(help = "URL (http(s)://HOST[:PORT][/BASE]/ID) or ID@DOMAIN (DNS SRV)", long_help = ADDRESS_HELP)]
    address: String,

    /// Bearer token (tokens-file token or JWT); default: $FEDBROKER_TOKEN.
    #[arg(
        long,
        value_name = "TOKEN",
        long_help = "Credentials, sent as `Authorization: Bearer TOKEN` (on the POST, or on the \
            WebSocket upgrade): a token of the broker's --auth-tokens file, or a JWT issued for \
            the broker's --auth-jwt-secret/--auth-jwt-public-key, whose `send` or `listen` claim \
            must cover the id.\n\
            Default: the environment variable FEDBROKER_TOKEN; none when unset (open-mode brokers).\n\
            Example: --token \"$(cat ~/.config/fedbroker/token)\" (a token on the command line is \
            visible to other local users in ps; prefer the environment variable).\n\
            Statuses: 401 (missing, unknown, expired) and 403 (not for this id or action) exit 4."
    )]
    token: Option<String>,

    /// Trust only the CA certificate(s) in this PEM file for https:// (default: the system's roots).
    #[arg(
        long,
        value_name = "FILE",
        long_help = "Trust only the CA certificates in FILE (PEM, one or more) to check the \
            broker's TLS certificate, instead of the operating system's store (/etc/ssl/certs; \
            read with rustls-native-certs), as curl's --cacert does. For a private CA or a \
            self-signed broker certificate.\n\
            Default: the system's trusted roots.\n\
            Example: --ca /etc/fedbroker/ca.pem\n\
            An untrusted certificate, or one not valid for the broker's host name (the URL's \
            host, or the SRV target), exits 7."
    )]
    ca: Option<PathBuf>,

    /// DNS server for SRV and host lookups, IP[:PORT] (default: the system's resolver; $FEDBROKER_DNS).
    #[arg(
        long,
        value_name = "IP[:PORT]",
        long_help = "Ask this DNS server (UDP, then TCP) for the SRV record of ID@DOMAIN and for \
            every host name, ignoring /etc/hosts. For a split-horizon or test DNS server.\n\
            Default: the environment variable FEDBROKER_DNS; else the system's configuration \
            (/etc/resolv.conf) for SRV lookups and the system resolver (getaddrinfo) for host \
            names. Port 53 when none is given.\n\
            Example: --dns 127.0.0.1:5353\n\
            A name that does not resolve exits 6."
    )]
    dns: Option<String>,

    /// With ID@DOMAIN, speak plain http:// (ws://) to the SRV targets instead of TLS.
    #[arg(
        long,
        long_help = "With an ID@DOMAIN address, connect to the SRV targets over plain HTTP and \
            WebSocket (http://, ws://) instead of TLS. Only for loopback tests and networks where \
            nobody can read or alter traffic: tokens and messages travel in clear.\n\
            Default: off (TLS). URLs say their scheme themselves; this flag does not change them."
    )]
    http: bool,

    /// Seconds to wait for each step: connect, TLS handshake, each read and write.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..=3600),
        long_help = "Seconds to wait for each step: a TCP connection per address, the TLS \
            handshake, each DNS query (at most 5), each read and write of the request and \
            response. A listener's wait for messages is --idle-timeout instead.\n\
            Default: 10. Example: --timeout 30\n\
            A connection that times out on every address exits 5."
    )]
    timeout: u64,

    /// Log each step (SRV order, connection attempts, statuses) to stderr.
    #[arg(
        short,
        long,
        long_help = "Log each step to stderr: the SRV targets in the order they will be tried, \
            each connection attempt, the status of each answer. Tokens are never logged.\n\
            Default: off (stderr has only the `listening on` line, retries and the final error). \
            Example: fedbroker send -v 42@example.org < msg"
    )]
    verbose: bool,
}

#[derive(Args, Debug)]
struct SendArgs {
    #[command(flatten)]
    common: Common,

    /// File with the message; - or absent: stdin.
    #[arg(
        value_name = "FILE|-",
        long_help = "The message: the bytes of FILE as they are, or of stdin when FILE is - or \
            absent. The whole message is read before sending (the broker takes at most its \
            --max-message-size, 1 MiB by default; larger is refused with 413, exit 9).\n\
            Example: fedbroker send http://127.0.0.1:8080/42 photo.jpg"
    )]
    file: Option<PathBuf>,

    /// Retries after a 503 (queue full, broker at its connection limit).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 5,
        long_help = "How many times to send again after a 503 Service Unavailable (the listener's \
            queue is full, or the broker is at --max-connections). Waits 0.5 s before the first \
            retry and doubles each time up to 30 s, or waits the Retry-After the broker sent (at \
            most 60 s) when that is longer. 0: no retry.\n\
            Default: 5 (at most about 16 s of waiting). Example: --retries 0\n\
            503 on every attempt exits 8. Other statuses are not retried; an unreachable broker \
            is not retried either (the next SRV target is tried instead)."
    )]
    retries: u32,

    /// Content-Type header of the message.
    #[arg(
        long,
        value_name = "TYPE",
        default_value = "application/octet-stream",
        long_help = "The Content-Type header of the POST. The broker delivers the body as it is \
            and does not pass the type on to the listener.\n\
            Default: application/octet-stream. Example: --content-type application/json"
    )]
    content_type: String,
}

#[derive(Args, Debug)]
struct ListenArgs {
    #[command(flatten)]
    common: Common,

    /// Write each message to DIR/NNNNNN.bin instead of stdout.
    #[arg(
        long,
        value_name = "DIR",
        long_help = "Write each message to a new file in DIR (created when missing): 000001.bin, \
            000002.bin, …, numbered on after the highest already there, so a restarted listener \
            overwrites nothing. Each file is written aside and renamed into place, so a program \
            watching DIR never sees half a message. Nothing is printed to stdout.\n\
            Example: --output /var/spool/fedbroker/42"
    )]
    output: Option<PathBuf>,

    /// Run CMD (with /bin/sh -c) for each message, the message on its stdin.
    #[arg(
        long,
        value_name = "CMD",
        long_help = "Run CMD with /bin/sh -c for each message, the message's bytes on its stdin, \
            and wait for it before taking the next message (so messages are handled one at a \
            time, in order; a slow command makes the broker's queue for this listener fill up, \
            and senders then get 503). Its environment has FEDBROKER_ID (the id), \
            FEDBROKER_SEQ (1, 2, … per message of this run), FEDBROKER_ADDRESS, and with \
            --output FEDBROKER_FILE (the message's file). A command that exits non-zero is \
            reported on stderr and listening goes on; one that cannot be started exits 1.\n\
            Nothing is printed to stdout but what CMD prints.\n\
            Example: --exec 'jq . >> /var/log/events.json'"
    )]
    exec: Option<String>,

    /// Exit 0 after N messages.
    #[arg(
        long,
        value_name = "N",
        value_parser = clap::value_parser!(u64).range(1..),
        long_help = "Stop after N messages: close the WebSocket and exit 0.\n\
            Default: listen until interrupted or a failure ends it. Example: --count 1"
    )]
    count: Option<u64>,

    /// On stdout, follow each message with a newline.
    #[arg(
        long,
        long_help = "When printing to stdout, write a newline after each message (for text \
            messages read line by line). Default: the bytes only, nothing between messages."
    )]
    newline: bool,

    /// Consecutive failed reconnections before giving up [default: no limit].
    #[arg(
        long,
        value_name = "N",
        long_help = "How many consecutive times to reconnect, after a lost connection, an \
            unreachable broker or a 503, before exiting (a successful upgrade resets the count). \
            Backoff: 0.5 s, doubling up to 30 s.\n\
            Default: no limit. Example: --retries 10\n\
            The exit code is that of the last failure: 5 unreachable, 8 busy (503)."
    )]
    retries: Option<u32>,

    /// Exit when the connection is lost instead of reconnecting.
    #[arg(
        long,
        conflicts_with = "retries",
        long_help = "Exit at the first lost connection, unreachable broker or 503 instead of \
            reconnecting (exit 5, or 8 for 503)."
    )]
    no_reconnect: bool,

    /// Reconnect when nothing (not even a ping) arrived for SECS.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 90,
        value_parser = clap::value_parser!(u64).range(1..=86400),
        long_help = "Treat the connection as lost when nothing, not even one of the broker's \
            pings, arrived for SECS seconds, then reconnect. Brokers ping every --ping-interval \
            (30 s by default): keep this above two intervals.\n\
            Default: 90. Example: --idle-timeout 300"
    )]
    idle_timeout: u64,
}

/// Logs to stderr with `--verbose`.
pub fn verbose(args: std::fmt::Arguments<'_>) {
    if VERBOSE.load(std::sync::atomic::Ordering::Relaxed) {
        eprintln!("fedbroker: {args}");
    }
}

static VERBOSE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Parses `--dns IP[:PORT]`.
pub fn parse_dns(s: &str) -> Result<SocketAddr, Failure> {
    s.parse::<SocketAddr>()
        .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| {
            Failure::new(
                Kind::Usage,
                format!("--dns {s:?}: expected IP or IP:PORT, e.g. 127.0.0.1:5353 or [::1]:53"),
            )
        })
}

fn env_default(flag: Option<String>, var: &str) -> Option<String> {
    flag.or_else(|| std::env::var(var).ok().filter(|v| !v.is_empty()))
}

fn prepare(common: Common) -> Result<(Connector, Address, Option<String>), Failure> {
    VERBOSE.store(common.verbose, std::sync::atomic::Ordering::Relaxed);
    let address = Address::parse(&common.address).map_err(|e| Failure::new(Kind::Usage, e.0))?;
    let dns = env_default(common.dns, "FEDBROKER_DNS")
        .map(|s| parse_dns(&s))
        .transpose()?;
    let token = env_default(common.token, "FEDBROKER_TOKEN");
    if let Some(t) = &token {
        if t.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(Failure::new(
                Kind::Usage,
                "--token: must not contain spaces or control characters",
            ));
        }
    }
    let connector = Connector::new(common.ca, dns, Duration::from_secs(common.timeout), common.http);
    Ok((connector, address, token))
}

fn run_send(args: SendArgs) -> Result<(), Failure> {
    let (mut connector, address, token) = prepare(args.common)?;
    let body = match args.file.as_deref() {
        None => read_stdin()?,
        Some(p) if p.as_os_str() == "-" => read_stdin()?,
        Some(p) => {
            let file = std::fs::File::open(p)
                .map_err(|e| Failure::new(Kind::Local, format!("cannot read {}: {e}", p.display())))?;
            read_bounded(file, &p.display().to_string())?
        }
    };
    let opts = SendOptions {
        token,
        retries: args.retries,
        content_type: args.content_type,
    };
    let response = send(&mut connector, &address, &body, &opts)?;
    if !response.body.is_empty() {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        out.write_all(&response.body)
            .and_then(|()| out.flush())
            .map_err(|e| Failure::new(Kind::Local, format!("writing to stdout: {e}")))?;
    }
    Ok(())
}

fn read_stdin() -> Result<Vec<u8>, Failure> {
    read_bounded(std::io::stdin().lock(), "stdin")
}

/// The largest message read: a broker takes at most 1 GiB (`--max-message-size`).
const MAX_SEND: u64 = 1 << 30;

/// Reads a whole message, refusing one larger than any broker takes (memory stays bounded).
fn read_bounded(input: impl Read, what: &str) -> Result<Vec<u8>, Failure> {
    let mut body = Vec::new();
    input
        .take(MAX_SEND + 1)
        .read_to_end(&mut body)
        .map_err(|e| Failure::new(Kind::Local, format!("cannot read {what}: {e}")))?;
    if body.len() as u64 > MAX_SEND {
        return Err(Failure::new(
            Kind::Local,
            format!("{what}: larger than {MAX_SEND} bytes, more than any broker takes"),
        ));
    }
    Ok(body)
}

fn run_listen(args: ListenArgs) -> Result<(), Failure> {
    let (mut connector, address, token) = prepare(args.common)?;
    let opts = ListenOptions {
        token,
        output: args.output,
        exec: args.exec,
        count: args.count,
        newline: args.newline,
        reconnect: !args.no_reconnect,
        retries: args.retries,
        idle_timeout: Duration::from_secs(args.idle_timeout),
    };
    listen(&mut connector, &address, &opts)
}

/// The whole program: parses `args`, runs the command, returns the exit code (and prints one
/// line on stderr when it fails).
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            let _ = e.print();
            return if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(Kind::Usage.code())
            };
        }
    };
    let result = match cli.command {
        Commands::Send(args) => run_send(args),
        Commands::Listen(args) => run_listen(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("fedbroker: {f}");
            f.exit_code()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_flag_has_a_long_help() {
        let cmd = Cli::command();
        for sub in cmd.get_subcommands() {
            for arg in sub.get_arguments() {
                if arg.get_id() == "help" || arg.get_id() == "version" {
                    continue;
                }
                assert!(
                    arg.get_long_help().is_some(),
                    "{} {}: no long help",
                    sub.get_name(),
                    arg.get_id()
                );
            }
        }
    }

    #[test]
    fn dns_flag() {
        assert_eq!(parse_dns("127.0.0.1:5353").unwrap(), "127.0.0.1:5353".parse().unwrap());
        assert_eq!(parse_dns("::1").unwrap(), "[::1]:53".parse().unwrap());
        assert_eq!(parse_dns("dns.example").unwrap_err().kind, Kind::Usage);
    }
}
