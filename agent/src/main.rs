//! `keyward-agent`: see the library crate for the layout.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    keyward_agent::cli::main()
}
