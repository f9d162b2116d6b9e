//! `fedbroker`: see the crate documentation of `fedbroker_client` and `fedbroker --help`.

fn main() -> std::process::ExitCode {
    fedbroker_client::main(std::env::args_os())
}
