//! `fedbroker-tokio`: the broker on tokio (SPEC §8 for its flags).

fn main() -> std::process::ExitCode {
    fedbroker_cli::main_with("tokio", fedbroker_cli::Role::Listener, fedbroker_tokio::run)
}
