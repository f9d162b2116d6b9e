//! `fedbroker-std`: the broker on blocking sockets and OS threads (SPEC §8 for its flags).

fn main() -> std::process::ExitCode {
    fedbroker_cli::main_with("std", fedbroker_cli::Role::Listener, fedbroker_std::run)
}
