//! A WebSocket echo endpoint on the core's WebSocket session, served by the smol adapter: every
//! `GET /{id}` upgrade echoes each message back. For the Autobahn|Testsuite conformance run
//! (docs/conformance.md); not a route of the broker. Same flags as `fedbroker-smol`.

fn main() -> std::process::ExitCode {
    fedbroker_cli::main_with("smol", fedbroker_cli::Role::Echo, fedbroker_smol::run)
}
