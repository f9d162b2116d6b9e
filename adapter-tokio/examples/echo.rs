//! A WebSocket echo endpoint on the core's WebSocket session, served by the tokio adapter: every
//! `GET /{id}` upgrade echoes each message back. For the Autobahn|Testsuite conformance run
//! (docs/conformance.md); not a route of the broker. Same flags as `fedbroker-tokio`.

fn main() -> std::process::ExitCode {
    fedbroker_cli::main_with("tokio", fedbroker_cli::Role::Echo, fedbroker_tokio::run)
}
