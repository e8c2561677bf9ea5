//! The command line: run, `set-pin`, `check`.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use zeroize::Zeroizing;

use crate::agent::Agent;
use crate::config::{Config, DEFAULT_CONFIG};
use crate::listener::sockets::bind;
use crate::listener::Server;
use crate::state::{pin_len_ok, PinRef, Role, StateDir, MAX_PIN_LEN, MIN_PIN_LEN};

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
        /// With `--role user`: the user PIN of this application of the
        /// policy (strict mode: each application has its own PIN; without
        /// one it logs in with the token's user PIN).
        #[arg(long = "app", value_name = "NAME")]
        application: Option<String>,
    },
    /// Validate the configuration and exit.
    Check,
    /// The backend security officer's one job, read from standard input
    /// (started by the agent itself; see `lifecycle::officer`).
    #[command(hide = true)]
    Officer,
    /// Print the completion script for a shell (the install step runs it).
    #[command(hide = true)]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: crate::docs::Shell,
    },
    /// Write the manual pages to DIR (without DIR: keyward-agent.1 on
    /// standard output).
    #[command(hide = true)]
    Man {
        /// Where the pages go.
        dir: Option<PathBuf>,
    },
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
    if let Some(Command::Officer) = cli.command {
        // Needs no configuration: the agent hands over what it needs.
        return match crate::lifecycle::officer::serve(
            &mut std::io::stdin().lock(),
            &mut std::io::stdout().lock(),
        ) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                let _ = writeln!(std::io::stderr(), "keyward-agent: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match &cli.command {
        // Need no configuration either: they describe the command line.
        Some(Command::Completions { shell }) => {
            crate::docs::completions(Cli::command(), *shell, &mut std::io::stdout().lock());
            return ExitCode::SUCCESS;
        }
        Some(Command::Man { dir }) => {
            return match crate::docs::man(
                Cli::command(),
                dir.as_deref(),
                &mut std::io::stdout().lock(),
            ) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    let _ = writeln!(std::io::stderr(), "keyward-agent: man pages: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    let result = Config::load(&cli.config)
        .map_err(|e| e.to_string())
        .and_then(|config| match cli.command {
            None => run(&config, &cli.config),
            Some(Command::Check) => check(&config, &cli.config),
            Some(Command::Officer | Command::Completions { .. } | Command::Man { .. }) => {
                Err("not reached: handled before the configuration is read".into())
            }
            Some(Command::SetPin {
                token,
                role,
                application,
            }) => {
                let role = match role {
                    RoleArg::User => Role::User,
                    RoleArg::So => Role::So,
                };
                set_pin(
                    &config,
                    &token,
                    role,
                    application.as_deref(),
                    &mut std::io::stdin().lock(),
                )
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

/// The configured policy file, or the built-in lab policy, with what the
/// audit trail says of it: the file and the SHA-256 of its bytes.
/// The policy the configuration names: parsed, with its description for
/// the log and the trail, and the file it came from (`None`: the built-in
/// lab policy).
type LoadedPolicy = (
    keyward_policy::Policy,
    String,
    Option<crate::lifecycle::governance::PolicyFile>,
);

fn load_policy(config: &Config) -> Result<LoadedPolicy, String> {
    match &config.agent.policy {
        Some(path) => {
            let bytes = std::fs::read(path)
                .map_err(|e| format!("policy {}: cannot read: {e}", path.display()))?;
            let text = String::from_utf8(bytes)
                .map_err(|_| format!("policy {}: not UTF-8 text", path.display()))?;
            let file = crate::lifecycle::governance::PolicyFile::new(path, text);
            let policy = file.parse()?;
            log::info!("policy {} ({} mode)", path.display(), policy.mode().name());
            for note in &policy.notes {
                log::warn!("policy {}: {note}", path.display());
            }
            let source = describe_policy(&file, &policy);
            Ok((policy, source, Some(file)))
        }
        None => {
            log::warn!("no policy configured: the built-in lab policy applies (a plain PKCS#11 token for local root and agent-user peers)");
            Ok((
                keyward_policy::Policy::lab(),
                "the built-in lab policy".to_owned(),
                None,
            ))
        }
    }
}

fn describe_policy(
    file: &crate::lifecycle::governance::PolicyFile,
    policy: &keyward_policy::Policy,
) -> String {
    format!(
        "{} ({} mode, sha256 {})",
        file.path.display(),
        policy.mode().name(),
        file.sha256
    )
}

/// `loaded`, unless the approved policy guards itself against files edited
/// outside `keyward policy apply` (see `Lifecycle::admit_policy_file`):
/// then the approved one, or an error when it cannot be had.
fn admitted(agent: &Agent, loaded: LoadedPolicy) -> Result<LoadedPolicy, String> {
    let (policy, source, file) = loaded;
    let Some(file) = file else {
        return Ok((policy, source, None));
    };
    use crate::lifecycle::governance::Admission;
    match agent
        .lifecycle
        .admit_policy_file(&file, &policy, crate::clock::now())
    {
        Admission::Admitted => Ok((policy, source, Some(file))),
        Admission::Refused(approved) => {
            let (approved, p) = *approved;
            let source = describe_policy(&approved, &p);
            Ok((p, source, Some(approved)))
        }
        Admission::Unknown => Err(format!(
            "policy {}: the approved policy cannot be read from the store",
            file.path.display()
        )),
    }
}

/// The run's first records: the clock raised to this agent's newest
/// record in the trail (decisions never use an earlier time, so a clock
/// stepped back while the agent was down brings nothing back), whether the
/// last run stopped cleanly (if not, which uses may be missing), and the
/// clock's step back, if any.
fn begin_run(agent: &Agent, config: &Config) -> Result<(), String> {
    let host = match &config.postgres {
        Some(p) => Some(p.host_name()?),
        None => None,
    };
    let newest = agent.audit.newest_record_time(host.as_deref());
    let behind = newest.and_then(|newest| {
        crate::clock::raise_to(newest);
        let behind = newest.duration_since(std::time::SystemTime::now()).ok()?;
        (behind >= crate::clock::STEP).then_some((behind, crate::clock::to_us(newest)))
    });
    if let Some(gap) = agent.audit.begin_run(&config.agent.state_dir) {
        if let Err(e) = agent.audit.durable(gap) {
            log::error!("audit: the crash-gap record could not be written: {e}");
        }
    }
    if let Some((behind, kept)) = behind {
        agent
            .lifecycle
            .clock_stepped(crate::clock::Step::Back(behind), kept);
    }
    Ok(())
}

/// Runs the agent in the foreground until SIGTERM or SIGINT; SIGHUP
/// reloads the policy (see [`reload`]).
pub fn run(config: &Config, path: &Path) -> Result<(), String> {
    let loaded = load_policy(config)?;
    // The remote listener's certificates and key, before anything starts.
    let remote = config
        .remote
        .as_ref()
        .map(crate::listener::remote::RemoteConfig::open)
        .transpose()?;
    secure_state_dir(&config.agent.state_dir)?;
    let agent = Arc::new(
        Agent::from_config(config)
            .map_err(|e| format!("state directory {}: {e}", config.agent.state_dir.display()))?,
    );
    begin_run(&agent, config)?;
    // The file, unless dual control keeps the approved policy in force.
    let (policy, source, file) = admitted(&agent, loaded)?;
    agent.set_policy(policy);
    if let Some(file) = file {
        agent.lifecycle.policy_in_force(file);
    }
    agent.lifecycle.recover_pending();
    agent.lifecycle.record_missing_fingerprints();
    agent.setup_audit_key();
    agent.audit_agent(
        "start",
        concat!("keyward-agent ", env!("CARGO_PKG_VERSION")),
    );
    agent.audit_policy("load", 0, &source);
    // Requests approved before a stop and not carried out: now, once.
    agent.lifecycle.note_backup_keys();
    agent.lifecycle.resume_approved();
    agent
        .retry_backends()
        .map_err(|e| format!("cannot start the backend retry: {e}"))?;
    let policy_source = Arc::new(std::sync::Mutex::new(source));
    install_reloader(&agent, config, path, &policy_source);
    agent
        .core()
        .spawn_checkpoints(crate::audit::CheckpointEvery {
            events: config.audit.checkpoint_events,
            interval: std::time::Duration::from_secs(config.audit.checkpoint_seconds),
        });
    agent.spawn_use_recorder(std::time::Duration::from_secs(
        keyward_protocol::admin::LAST_USE_EVERY_SECS,
    ));
    agent
        .lifecycle
        .spawn_scheduler(crate::lifecycle::scheduler::EVERY);
    raise_descriptor_limit();
    let app = bind(&config.agent.socket_spec()).map_err(|e| e.to_string())?;
    let admin = bind(&config.agent.admin_socket_spec()).map_err(|e| e.to_string())?;
    let server = Server::new(
        agent.clone(),
        config.agent.socket_spec(),
        config.agent.admin_socket_spec(),
        config.agent.limits(),
    );
    if let Some(r) = remote {
        log::info!(
            "remote clients (mutual TLS) on {}",
            r.listener
                .local_addr()
                .map_or_else(|e| e.to_string(), |a| a.to_string())
        );
        server.set_remote(r);
    }
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
    let notifier = start_webhook(config, &agent, server.metrics())?;
    let (handle, watcher) = watch_signals(&server, &agent, config, path, policy_source)?;
    log::info!(
        "keyward-agent {} listening on {} (admin {}), application protocol {}, admin protocol {}",
        env!("CARGO_PKG_VERSION"),
        config.agent.socket.display(),
        config.agent.admin_socket.display(),
        keyward_protocol::APP_VERSIONS,
        keyward_protocol::ADMIN_VERSIONS
    );
    server.run(app, admin);
    drop(exporter);
    stop_webhook(notifier.as_deref(), &agent);
    handle.close();
    let _ = watcher.join();
    agent.flush_uses();
    agent.audit_agent("stop", "signal");
    // A failure is logged; the records stay unsealed until the next start.
    let _ = agent.checkpoint();
    // Everything queued is stored: the next start records no gap.
    agent.audit.end_run();
    // The last reference to the agent goes with `server`: every backend
    // token closes its anchor session and each library is finalised.
    drop(server);
    drop(agent);
    Ok(())
}

/// SIGHUP reloads the policy (as `keyward policy reload`); SIGTERM and
/// SIGINT stop the server. The handle closes the watcher.
fn watch_signals(
    server: &Arc<Server>,
    agent: &Arc<Agent>,
    config: &Config,
    path: &Path,
    policy_source: Arc<std::sync::Mutex<String>>,
) -> Result<(signal_hook::iterator::Handle, std::thread::JoinHandle<()>), String> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let handle = signals.handle();
    let s = server.clone();
    let (a, running, path) = (agent.clone(), config.clone(), path.to_owned());
    let watcher = std::thread::spawn(move || {
        for sig in signals.forever() {
            if sig == signal_hook::consts::SIGHUP {
                let mut source = policy_source.lock().unwrap_or_else(|p| p.into_inner());
                let _ = reload(&a, &path, &running, &mut source);
                continue;
            }
            log::info!("signal {sig}: shutting down");
            s.shutdown();
            break;
        }
    });
    Ok((handle, watcher))
}

/// Posts `agent-stop` and gives the sender its last moments.
fn stop_webhook(notifier: Option<&crate::notify::Notifier>, agent: &Agent) {
    let Some(n) = notifier else {
        return;
    };
    n.send(crate::notify::Event::new(
        crate::notify::EventKind::AgentStop,
        crate::notify::Severity::Info,
        format!("agent-stop:{}", agent.instance),
        crate::keys::secs(crate::clock::now()),
        "keyward-agent is stopping".into(),
    ));
    n.stop();
}

/// Starts the webhook when `[webhook]` is configured: its sender, its
/// counters in the metrics, its watcher, and the agent's start event.
fn start_webhook(
    config: &Config,
    agent: &Arc<Agent>,
    metrics: &Arc<crate::metrics::Metrics>,
) -> Result<Option<Arc<crate::notify::Notifier>>, String> {
    let Some(w) = &config.webhook else {
        return Ok(None);
    };
    let notifier = crate::notify::Notifier::start(w)?;
    metrics.set_webhook(notifier.stats().clone());
    notifier.send(crate::notify::Event::new(
        crate::notify::EventKind::AgentStart,
        crate::notify::Severity::Info,
        format!("agent-start:{}", agent.instance),
        crate::keys::secs(crate::clock::now()),
        concat!("keyward-agent ", env!("CARGO_PKG_VERSION"), " started").into(),
    ));
    crate::notify::watch::spawn(Arc::downgrade(&agent.lifecycle), notifier.clone(), w)?;
    Ok(Some(notifier))
}

/// Gives an existing state directory the mode the agent creates it with
/// (0700): PIN hashes and the inventory are nobody else's to read.
fn secure_state_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(m) = std::fs::metadata(dir) else {
        return Ok(());
    };
    let mode = m.permissions().mode() & 0o7777;
    if mode != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
            format!(
                "state directory {}: cannot set mode 0700: {e}",
                dir.display()
            )
        })?;
        log::warn!(
            "state directory {}: mode was {mode:04o}, set to 0700",
            dir.display()
        );
    }
    Ok(())
}

/// Raises the soft limit on open descriptors to the hard limit: each
/// connection holds two, and the connection caps should be what bounds
/// them, not the default soft limit of 1024.
fn raise_descriptor_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                log::warn!("cannot raise the descriptor limit from {soft} to {hard}: {e}");
            }
        }
    }
}

/// What `keyward policy reload` runs: [`reload`] of `path` against the
/// running `config`, with the policy source SIGHUP's reload shares.
fn install_reloader(
    agent: &Arc<Agent>,
    config: &Config,
    path: &Path,
    source: &Arc<std::sync::Mutex<String>>,
) {
    let (weak, running, path, source) = (
        Arc::downgrade(agent),
        config.clone(),
        path.to_owned(),
        source.clone(),
    );
    agent.core().set_reloader(Box::new(move || {
        let agent = weak
            .upgrade()
            .ok_or_else(|| "the agent is stopping".to_owned())?;
        let mut source = source.lock().unwrap_or_else(|p| p.into_inner());
        reload(&agent, &path, &running, &mut source)
    }));
}

/// Reloads on SIGHUP: reads the configuration file `path` again and puts
/// its policy in force when it differs from `source` (what is in force).
/// Every other setting needs a restart; a reload names the ones that
/// changed. A file that does not load changes nothing. Each reload is
/// recorded (an `agent` event), and a policy change too (a `policy` event
/// from the old file and digest to the new).
pub fn reload(
    agent: &Agent,
    path: &Path,
    running: &Config,
    source: &mut String,
) -> Result<String, String> {
    let failed = |why: String| {
        log::error!("reload: {why}; nothing changed");
        // A dry run (`keyward policy reload --dry-run`) records nothing.
        if !crate::lifecycle::dry_run::planning() {
            agent.audit_reload(
                ck_failed(),
                &format!("{}: {why}; nothing changed", path.display()),
            );
        }
        Err(format!("{}: {why}", path.display()))
    };
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return failed(e.to_string()),
    };
    let (policy, new_source, file) = match load_policy(&config).and_then(|l| {
        let file_sha = l.2.as_ref().map(|f| f.sha256.clone());
        let admitted = admitted(agent, l)?;
        // A file the approved policy refuses changes nothing.
        if admitted.2.as_ref().map(|f| &f.sha256) != file_sha.as_ref() {
            return Err(
                "the policy file changed outside `keyward policy apply` and dual control \
                        is on: not loaded (see the log)"
                    .to_owned(),
            );
        }
        Ok(admitted)
    }) {
        Ok(p) => p,
        Err(e) => return failed(e),
    };
    let mut restart = Vec::new();
    if config.agent.socket != running.agent.socket
        || config.agent.socket_mode != running.agent.socket_mode
        || config.agent.admin_socket != running.agent.admin_socket
        || config.agent.admin_socket_mode != running.agent.admin_socket_mode
        || config.agent.state_dir != running.agent.state_dir
    {
        restart.push("[agent] sockets or state_dir");
    }
    if config.tokens != running.tokens {
        restart.push("[[token]]");
    }
    if config.audit != running.audit {
        restart.push("[audit]");
    }
    if config.metrics != running.metrics {
        restart.push("[metrics]");
    }
    if config.webhook != running.webhook {
        restart.push("[webhook]");
    }
    if config.remote != running.remote {
        restart.push("[remote]");
    }
    crate::lifecycle::dry_run::commit_point(
        || {
            let policy = if new_source == *source {
                format!("the policy in force stays {source}")
            } else {
                format!("the policy in force becomes {new_source} (now {source})")
            };
            match restart.is_empty() {
                true => policy,
                false => format!(
                    "{policy}; {} changed: they take effect at the next start",
                    restart.join(", ")
                ),
            }
        },
        || keyward_protocol::plan::PlanOutcome::Done,
    )
    .map_err(|e| e.message)?;
    let mut reason = if new_source == *source {
        "policy unchanged".to_owned()
    } else {
        agent.set_policy(policy);
        if let Some(file) = file {
            agent.lifecycle.policy_in_force(file);
        }
        agent.audit_policy("change", 0, &format!("from {source} to {new_source}"));
        log::info!("reload: policy now {new_source}");
        let reason = format!("policy now {new_source}");
        *source = new_source;
        reason
    };
    if !restart.is_empty() {
        log::warn!(
            "reload: {} changed and take effect at the next start",
            restart.join(", ")
        );
        reason.push_str(&format!(
            "; {} changed: they take effect at the next start",
            restart.join(", ")
        ));
    }
    agent.audit_reload(0, &reason);
    Ok(reason)
}

fn ck_failed() -> u64 {
    cryptoki_sys::CKR_FUNCTION_FAILED
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
    if let Some(Err(e)) = config.remote.as_ref().map(|r| r.server_config()) {
        problems.push(e);
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

/// Reads one line (the PIN) from `input` and stores its hash: the token's
/// PIN of `role`, or the user PIN of application `app`. A new PIN starts
/// with no wrong attempts counted.
pub fn set_pin(
    config: &Config,
    token: &str,
    role: Role,
    app: Option<&str>,
    input: &mut dyn BufRead,
) -> Result<(), String> {
    if !config.tokens.iter().any(|t| t.label == token) {
        let known: Vec<&str> = config.tokens.iter().map(|t| t.label.as_str()).collect();
        return Err(format!(
            "no token labelled {token:?} in the configuration (known: {known:?})"
        ));
    }
    let which = match (role, app) {
        (Role::So, Some(_)) => {
            return Err("--app names an application's user PIN: use it with --role user".into())
        }
        (_, Some(app)) => {
            let (policy, _, _) = load_policy(config)?;
            if policy.application(app).is_none() {
                let known: Vec<&str> = policy
                    .applications
                    .iter()
                    .map(|a| a.name.as_str())
                    .collect();
                return Err(format!(
                    "the policy names no application {app:?} (known: {known:?})"
                ));
            }
            PinRef::app(app)
        }
        (role, None) => PinRef::from(role),
    };
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
        .set_pin(which, pin)
        .map_err(|e| format!("cannot store the PIN: {e}"))?;
    log::info!("{which} of token {token:?} stored");
    Ok(())
}
