//! `keyward`: the administrators' command-line tool. It talks to
//! keyward-agent's admin socket and never opens the HSM library itself.
//!
//! Admin socket: `--admin-socket PATH`, else `KEYWARD_ADMIN_SOCKET`, else
//! `/run/keyward/admin.sock`. Every command takes `--json`: standard output
//! then carries exactly one JSON document, also on failure
//! (`{"error": {"kind", "message", "exit_code"}}`; the contract is
//! `json.rs`, the schemas `docs/json/`); `audit tail` and
//! `audit query` print JSON lines instead (one record per line, for SIEM
//! export; a failure is one error line). Messages for people go to
//! standard error as `keyward: ...`.
//!
//! Exit codes (also in `keyward --help`; the mapping from the agent's
//! error kinds is [`admin::Exit`]'s `From<AdminErrorKind>`):
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the agent is unreachable, speaks no admin-protocol version in common, or answered something unexpected (`policy check`: the file is not valid) |
//! | 2 | invalid request or usage, clap's own usage errors included |
//! | 3 | the action needs approval: a request was recorded and its id printed |
//! | 4 | not found: key, token, application, class |
//! | 5 | refused by policy or by the key's lifecycle |
//! | 6 | conflict with the current state (name taken, raced) |
//! | 7 | the HSM or the inventory store failed |
//! | 8 | the audit trail does not verify (`audit verify` found tampering) |
//! | 9 | the audit trail no longer holds an anchored head (`audit verify --anchor`: rolled back past it, or rewritten below it) |
//!
//! Layout: `cli.rs` (clap definitions and argument parsers), `run.rs`
//! (command → request → answer → output), `decide.rs` (`request
//! approve|deny`: show, sign, send; `admin-key show`), `signer.rs` (an
//! administrator's key: a PEM file or a `pkcs11:` URI, `uri.rs`),
//! `admin.rs` (the socket exchange and the exit codes), `render.rs`
//! (tables and JSON), `style.rs` (`--wide`, `--local`, plurals),
//! `time.rs` (unix seconds ↔ calendar),
//! `backup.rs` (`backup ...`: the custodians' identities and shares).
#![forbid(unsafe_code)]

mod admin;
mod backup;
mod cert;
mod cli;
mod decide;
mod devices;
mod distribute;
mod docs;
mod files;
mod json;
mod output;
mod render;
mod run;
mod safety;
mod signer;
mod style;
mod time;
mod uri;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Where the admin socket is when neither the flag nor the environment say.
const DEFAULT_ADMIN_SOCKET: &str = "/run/keyward/admin.sock";

fn main() -> ExitCode {
    // Usage errors exit 2, --help and --version 0 (clap's own codes).
    let cli = cli::Cli::try_parse().unwrap_or_else(|e| e.exit());
    style::set(style::Style::from_flags(cli.wide, cli.local));
    let socket = cli
        .admin_socket
        .or_else(|| std::env::var_os("KEYWARD_ADMIN_SOCKET").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ADMIN_SOCKET));
    safety::set(safety::Safety {
        dry_run: cli.dry_run,
        yes: cli.yes,
    });
    match &cli.command {
        cli::Command::Completions { shell } => {
            docs::completions(*shell, &mut std::io::stdout().lock());
            return ExitCode::SUCCESS;
        }
        cli::Command::Man { dir } => {
            return match docs::man(dir.as_deref(), &mut std::io::stdout().lock()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    let _ = writeln!(std::io::stderr(), "keyward: man pages: {e}");
                    ExitCode::from(admin::Exit::Error.code())
                }
            };
        }
        cli::Command::Devices => {
            let (out, err, ok) = if cli.json {
                devices::report_json(devices::scan())
            } else {
                devices::report(devices::scan())
            };
            let _ = std::io::stdout().lock().write_all(out.as_bytes());
            let _ = std::io::stderr().lock().write_all(err.as_bytes());
            return ExitCode::from(if ok { 0 } else { admin::Exit::Error.code() });
        }
        cli::Command::Backup {
            command:
                cli::BackupCommand::CustodianKey {
                    command: cli::CustodianKeyCommand::New { .. },
                },
        } if cli.dry_run => {
            let f = admin::Failure::local(
                admin::Exit::Usage,
                "Usage",
                "backup custodian-key new runs here and only makes its file: --dry-run is not \
                 available for it; nothing was done",
            );
            let out = run::Output::failure(&f, cli.json);
            let _ = std::io::stdout().lock().write_all(out.stdout.as_bytes());
            let _ = std::io::stderr().lock().write_all(out.stderr.as_bytes());
            return ExitCode::from(out.exit.code());
        }
        _ => {}
    }
    if let cli::Command::Audit {
        command: cli::AuditCommand::Tail { n, follow: true },
    } = cli.command
    {
        // Streams until interrupted: prints as it goes.
        let exit = run::follow(
            n,
            &socket,
            cli.json,
            &mut std::io::stdout().lock(),
            &mut std::io::stderr(),
        );
        return ExitCode::from(exit.code());
    }
    let out = run::run(cli.command, &socket, cli.json);
    let mut exit = out.exit;
    if std::io::stdout()
        .lock()
        .write_all(out.stdout.as_bytes())
        .is_err()
        && exit == admin::Exit::Success
    {
        exit = admin::Exit::Error;
    }
    let _ = std::io::stderr().lock().write_all(out.stderr.as_bytes());
    ExitCode::from(exit.code())
}
