//! The command line: run, `set-pin`, `check`.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use zeroize::Zeroizing;

use crate::agent::Agent;
use crate::config::{Config, DEFAULT_CONFIG};
use crate::server::{bind, Server};
use crate::state::{pin_len_ok, Role, StateDir, MAX_PIN_LEN, MIN_PIN_LEN};

/// keyward-agent: serves HSM-backed virtual PKCS#11 tokens to applications.
#[derive(Debug, Parser)]
#[command(name = "keyward-agent", version)]
pub struct Cli {
    /// The configuration file.
    #[arg(long, short, env = "KEYWARD_AGENT_CONFIG", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// What to do; without a command the agent runs in the foreground.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Sub-commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read a PIN from standard input and store its hash for a virtual token.
    SetPin {
        /// The virtual token's label.
        #[arg(long)]
        token: String,
        /// Whose PIN.
        #[arg(long, value_enum)]
        role: RoleArg,
    },
    /// Validate the configuration and exit.
    Check,
}

/// `--role`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    /// The user PIN applications log in with.
    User,
    /// The security officer's PIN.
    So,
}

/// Runs the command line; the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = Config::load(&cli.config)
        .map_err(|e| e.to_string())
        .and_then(|config| match cli.command {
            None => run(&config),
            Some(Command::Check) => check(&config, &cli.config),
            Some(Command::SetPin { token, role }) => {
                let role = match role {
                    RoleArg::User => Role::User,
                    RoleArg::So => Role::So,
                };
                set_pin(&config, &token, role, &mut std::io::stdin().lock())
            }
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "keyward-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to standard error; level from `KEYWARD_LOG`, else `RUST_LOG`, else info.
fn init_logging() {
    let filter = std::env::var("KEYWARD_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    let _ = env_logger::Builder::new()
        .parse_filters(&filter)
        .target(env_logger::Target::Stderr)
        .try_init();
}

/// The configured policy file, or the built-in lab policy.
fn load_policy(config: &Config) -> Result<keyward_policy::Policy, String> {
    match &config.agent.policy {
        Some(path) => {
            let policy = keyward_policy::Policy::from_file(path).map_err(|e| e.to_string())?;
            log::info!("policy {} ({:?} mode)", path.display(), policy.mode());
            Ok(policy)
        }
        None => {
            log::warn!("no policy configured: the built-in lab policy applies (a plain PKCS#11 token for local root and agent-user peers)");
            Ok(keyward_policy::Policy::lab())
        }
    }
}

/// Runs the agent in the foreground until SIGTERM or SIGINT.
pub fn run(config: &Config) -> Result<(), String> {
    let policy = load_policy(config)?;
    let agent = Arc::new(
        Agent::from_config(config)
            .map_err(|e| format!("state directory {}: {e}", config.agent.state_dir.display()))?
            .with_policy(policy),
    );
    agent.recover_pending();
    agent.setup_audit_key();
    agent.audit_agent(
        "start",
        concat!("keyward-agent ", env!("CARGO_PKG_VERSION")),
    );
    agent.spawn_checkpoints(crate::audit::CheckpointEvery {
        events: 1000,
        interval: std::time::Duration::from_secs(60),
    });
    agent.spawn_use_recorder(std::time::Duration::from_secs(5));
    agent.spawn_scheduler(std::time::Duration::from_secs(60));
    let app = bind(&config.agent.socket, config.agent.socket_mode.0).map_err(|e| e.to_string())?;
    let admin = bind(&config.agent.admin_socket, config.agent.admin_socket_mode.0)
        .map_err(|e| e.to_string())?;
    let server = Server::new(
        agent.clone(),
        config.agent.socket.clone(),
        config.agent.admin_socket.clone(),
    );
    // Before the sockets answer: once `keyward status` does, the metrics
    // endpoint and its metrics.addr are there too.
    crate::metrics::clear_addr_file(&config.agent.state_dir);
    let exporter = match &config.metrics {
        Some(m) => Some(crate::metrics::Exporter::start(
            m.listen.0,
            server.metrics().clone(),
            Arc::downgrade(&agent),
            &config.agent.state_dir,
        )?),
        None => None,
    };
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let handle = signals.handle();
    let s = server.clone();
    let watcher = std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            log::info!("signal {sig}: shutting down");
            s.shutdown();
        }
    });
    log::info!(
        "keyward-agent {} listening on {} (admin {}), protocol {}",
        env!("CARGO_PKG_VERSION"),
        config.agent.socket.display(),
        config.agent.admin_socket.display(),
        keyward_protocol::PROTOCOL_VERSION
    );
    server.run(app, admin);
    drop(exporter);
    handle.close();
    let _ = watcher.join();
    agent.flush_uses();
    agent.audit_agent("stop", "signal");
    agent.checkpoint();
    // The last reference to the agent goes with `server`: every backend
    // token closes its anchor session and each library is finalised.
    drop(server);
    drop(agent);
    Ok(())
}

/// Validates the configuration beyond its shape: libraries exist, backend
/// PINs resolve, the state directory can be created.
pub fn check(config: &Config, path: &Path) -> Result<(), String> {
    let mut problems = Vec::new();
    if let Err(e) = load_policy(config) {
        problems.push(e);
    }
    for t in &config.tokens {
        if !t.library.is_file() {
            problems.push(format!(
                "token {:?}: library {} does not exist",
                t.label,
                t.library.display()
            ));
        }
        if let Err(e) = t.backend_pin.read() {
            problems.push(format!("token {:?}: backend_pin: {e}", t.label));
        }
    }
    if let Err(e) = StateDir::open(&config.agent.state_dir) {
        problems.push(format!(
            "state_dir {}: {e}",
            config.agent.state_dir.display()
        ));
    }
    if problems.is_empty() {
        println!(
            "{}: OK ({} token{})",
            path.display(),
            config.tokens.len(),
            if config.tokens.len() == 1 { "" } else { "s" }
        );
        Ok(())
    } else {
        Err(format!("{}:\n  {}", path.display(), problems.join("\n  ")))
    }
}

/// Reads one line (the PIN) from `input` and stores its hash.
pub fn set_pin(
    config: &Config,
    token: &str,
    role: Role,
    input: &mut dyn BufRead,
) -> Result<(), String> {
    if !config.tokens.iter().any(|t| t.label == token) {
        let known: Vec<&str> = config.tokens.iter().map(|t| t.label.as_str()).collect();
        return Err(format!(
            "no token labelled {token:?} in the configuration (known: {known:?})"
        ));
    }
    let mut line = Zeroizing::new(Vec::new());
    input
        .read_until(b'\n', &mut line)
        .map_err(|e| format!("cannot read the PIN from standard input: {e}"))?;
    let mut pin: &[u8] = &line;
    pin = pin.strip_suffix(b"\n").unwrap_or(pin);
    pin = pin.strip_suffix(b"\r").unwrap_or(pin);
    if !pin_len_ok(pin) {
        return Err(format!(
            "the PIN must be {MIN_PIN_LEN} to {MAX_PIN_LEN} bytes (one line on standard input)"
        ));
    }
    let state = StateDir::open(&config.agent.state_dir)
        .map_err(|e| format!("state directory {}: {e}", config.agent.state_dir.display()))?;
    state
        .token(token)
        .set_pin(role, pin)
        .map_err(|e| format!("cannot store the PIN: {e}"))?;
    log::info!("{role:?} PIN of token {token:?} stored");
    Ok(())
}
