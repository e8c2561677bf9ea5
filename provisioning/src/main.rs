//! `keyward`: the administrators' command-line tool. It talks to
//! keyward-agent's admin socket and never opens the HSM library itself.
//!
//! Admin socket: `--admin-socket PATH`, else `KEYWARD_ADMIN_SOCKET`, else
//! `/run/keyward/admin.sock`.
#![forbid(unsafe_code)]

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use keyward_protocol::admin::{AdminRequest, AdminResponse, Status};
use keyward_protocol::frame::{read_message, write_message};

/// Where the admin socket is when neither the flag nor the environment say.
const DEFAULT_ADMIN_SOCKET: &str = "/run/keyward/admin.sock";
/// Bound on one exchange with the agent.
const TIMEOUT: Duration = Duration::from_secs(30);

/// keyward: administer a keyward agent.
#[derive(Debug, Parser)]
#[command(name = "keyward", version)]
struct Cli {
    /// The agent's admin socket (else $KEYWARD_ADMIN_SOCKET, else /run/keyward/admin.sock).
    #[arg(long, global = true)]
    admin_socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the agent's version, uptime and tokens with their backends.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Work with policy files.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Check a policy file; exit 0 when valid, 1 with `FILE:LINE:COL: field: problem` when not.
    Check {
        /// The policy file.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let socket = cli
        .admin_socket
        .or_else(|| std::env::var_os("KEYWARD_ADMIN_SOCKET").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ADMIN_SOCKET));
    let result = match cli.command {
        Command::Status { json } => status(&socket, json),
        Command::Policy {
            command: PolicyCommand::Check { file, json },
        } => policy_check(&file, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "keyward: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `keyward policy check FILE`: the same parser and validation the agent
/// uses, run locally (no agent needed).
fn policy_check(file: &Path, json: bool) -> Result<(), String> {
    let result = keyward_policy::Policy::from_file(file);
    if json {
        let v = match &result {
            Ok(p) => serde_json::json!({
                "file": file.display().to_string(), "valid": true,
                "mode": format!("{:?}", p.mode()).to_lowercase(),
                "applications": p.applications.len(), "classes": p.classes.len(),
            }),
            Err(e) => serde_json::json!({
                "file": file.display().to_string(), "valid": false, "error": e.to_string(),
            }),
        };
        println!("{v}");
    }
    match result {
        Ok(p) => {
            if !json {
                println!(
                    "{}: valid ({} mode, {} applications, {} key classes)",
                    file.display(),
                    format!("{:?}", p.mode()).to_lowercase(),
                    p.applications.len(),
                    p.classes.len()
                );
            }
            Ok(())
        }
        // The JSON on standard output already carries the error.
        Err(_) if json => Err(format!("{} is not valid", file.display())),
        Err(e) => Err(e.to_string()),
    }
}

/// One request, one response on the admin socket.
fn exchange(socket: &Path, req: &AdminRequest) -> Result<AdminResponse, String> {
    let unreachable = |e: &dyn std::fmt::Display| {
        format!(
            "cannot reach keyward-agent at {}: {e} (is the agent running? set --admin-socket or KEYWARD_ADMIN_SOCKET)",
            socket.display()
        )
    };
    let mut stream = UnixStream::connect(socket).map_err(|e| unreachable(&e))?;
    let _ = stream.set_read_timeout(Some(TIMEOUT));
    let _ = stream.set_write_timeout(Some(TIMEOUT));
    let mut buf = Vec::new();
    write_message(&mut stream, req, &mut buf).map_err(|e| unreachable(&e))?;
    read_message(&mut stream, &mut buf).map_err(|e| unreachable(&e))
}

fn status(socket: &Path, json: bool) -> Result<(), String> {
    let status = match exchange(socket, &AdminRequest::Status)? {
        AdminResponse::Status(s) => s,
        AdminResponse::Err(e) => return Err(format!("the agent refused: {e}")),
    };
    let mut out = std::io::stdout().lock();
    let written = if json {
        serde_json::to_writer_pretty(&mut out, &status)
            .map_err(|e| e.to_string())
            .and_then(|()| writeln!(out).map_err(|e| e.to_string()))
    } else {
        out.write_all(render(&status).as_bytes())
            .map_err(|e| e.to_string())
    };
    written.map_err(|e| format!("cannot write the status: {e}"))
}

fn render(s: &Status) -> String {
    let mut o = String::new();
    let mut line = |l: String| {
        o.push_str(&l);
        o.push('\n');
    };
    line(format!("agent:     keyward-agent {}", s.agent_version));
    line(format!("protocol:  {}", s.protocol_version));
    line(format!("pid:       {}", s.pid));
    line(format!("uptime:    {}", uptime(s.uptime_secs)));
    line(format!("socket:    {}", s.socket));
    line(format!("tokens:    {}", s.tokens.len()));
    for t in &s.tokens {
        line(String::new());
        line(format!("slot {}: {:?}", t.slot, t.label));
        line(format!(
            "  user PIN set:      {}",
            if t.user_pin_initialized { "yes" } else { "no" }
        ));
        line(format!(
            "  allow_init_token:  {}",
            if t.allow_init_token { "yes" } else { "no" }
        ));
        line(format!("  backend library:   {}", t.backend_library));
        if !t.backend_library_description.is_empty() {
            line(format!(
                "                     {} {}.{}",
                t.backend_library_description,
                t.backend_library_version.major,
                t.backend_library_version.minor
            ));
        }
        if t.backend_present {
            line(format!(
                "  backend token:     {:?} ({} {}, serial {})",
                t.backend_label, t.backend_manufacturer, t.backend_model, t.backend_serial
            ));
        }
        if let Some(e) = &t.backend_error {
            line(format!("  backend error:     {e}"));
        }
    }
    o
}

fn uptime(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h}h {m}m {s}s")
    } else if h > 0 {
        format!("{h}h {m}m {s}s")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_protocol::admin::TokenStatus;

    #[test]
    fn text_shows_every_field() {
        let s = Status {
            agent_version: "0.1.0".into(),
            protocol_version: 1,
            pid: 42,
            uptime_secs: 3723,
            socket: "/run/keyward/keyward.sock".into(),
            tokens: vec![TokenStatus {
                slot: 0,
                label: "keyward".into(),
                user_pin_initialized: true,
                allow_init_token: false,
                backend_library: "/usr/lib/softhsm/libsofthsm2.so".into(),
                backend_library_description: "Implementation of PKCS11".into(),
                backend_library_version: keyward_protocol::Version { major: 2, minor: 6 },
                backend_present: true,
                backend_label: "kw-backend".into(),
                backend_manufacturer: "SoftHSM project".into(),
                backend_model: "SoftHSM v2".into(),
                backend_serial: "abc".into(),
                backend_error: None,
            }],
        };
        let text = render(&s);
        for want in [
            "0.1.0",
            "pid:       42",
            "1h 2m 3s",
            "keyward.sock",
            "slot 0: \"keyward\"",
            "user PIN set:      yes",
            "allow_init_token:  no",
            "Implementation of PKCS11 2.6",
            "\"kw-backend\" (SoftHSM project SoftHSM v2, serial abc)",
        ] {
            assert!(text.contains(want), "{want:?} missing in\n{text}");
        }
    }

    #[test]
    fn unreachable_agent_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("kw-none-{}", std::process::id()));
        let e = exchange(&dir.join("admin.sock"), &AdminRequest::Status).unwrap_err();
        assert!(e.contains("cannot reach keyward-agent"), "{e}");
    }
}
