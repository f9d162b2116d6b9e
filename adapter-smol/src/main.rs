//! `fedbroker-smol`: the broker on smol (SPEC §8 for its flags).

fn main() -> std::process::ExitCode {
    fedbroker_cli::main_with("smol", fedbroker_cli::Role::Listener, fedbroker_smol::run)
}
