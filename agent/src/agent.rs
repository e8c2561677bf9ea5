//! The agent: its parts, built from the configuration. A request flows
//! through the stages the crate's layout shows (see `lib.rs`); this file
//! holds what they share.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use keyward_protocol::admin::{Status, TokenStatus};
use keyward_protocol::{ADMIN_VERSIONS, APP_VERSIONS};

use crate::config::Config;
use crate::listener::identity::Peer;
use keyward_policy::Policy;

use crate::audit::writer::Auditor;
use crate::clients::registry::Clients;
use crate::keys::ManagedKeys;
use crate::lifecycle::Lifecycle;
pub use crate::shared::Core;
use crate::state::{Role, StateDir};

/// The application name of a peer the lab policy admits without listing it.
pub const LAB_APPLICATION: &str = "lab";
pub use crate::tokens::VirtualToken;

/// The agent: the request path's own state (the connected clients, this
/// run's instance) over the shared [`Core`], and the key [`Lifecycle`].
#[derive(Debug)]
pub struct Agent {
    core: Arc<Core>,
    /// Key management and the scheduler.
    pub lifecycle: Arc<Lifecycle>,
    /// The agent's own uid: in lab mode, peers running as it are admitted.
    pub(crate) uid: u32,
    /// The connected clients and the owners of session objects.
    pub(crate) clients: Clients,
    pub(crate) instance: u64,
    pub(crate) started: Instant,
    pub(crate) socket: String,
    /// Backends that could not be opened at start, for
    /// [`Agent::retry_backends`].
    pub(crate) reopen: std::sync::Mutex<Option<crate::reopen::Pending>>,
}

impl std::ops::Deref for Agent {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

impl Agent {
    /// The parts every stage shares.
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// An agent serving `tokens` (slot ids are their positions).
    pub fn new(
        tokens: Vec<VirtualToken>,
        socket: String,
        keys: ManagedKeys,
        audit: Arc<Auditor>,
    ) -> Agent {
        let mut instance = [0u8; 8];
        if getrandom::getrandom(&mut instance).is_err() {
            // Still distinct per start in practice: nanoseconds since epoch.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            instance = (t.as_nanos() as u64).to_le_bytes();
        }
        let core = Arc::new(Core {
            tokens,
            policy: arc_swap::ArcSwap::from_pointee(Policy::lab()),
            keys,
            audit,
            use_targets: crate::uses::targets::UseTargets::default(),
            gates: Default::default(),
            sign_decisions: Default::default(),
            reloader: std::sync::OnceLock::new(),
            store: std::sync::OnceLock::new(),
        });
        Agent {
            lifecycle: Arc::new(Lifecycle::new(core.clone())),
            core,
            uid: nix::unistd::getuid().as_raw(),
            clients: Clients::default(),
            instance: u64::from_le_bytes(instance),
            started: Instant::now(),
            socket,
            reopen: std::sync::Mutex::new(None),
        }
    }

    /// The same agent under `policy`.
    pub fn with_policy(self, policy: Policy) -> Agent {
        self.policy.store(Arc::new(policy));
        self
    }

    /// The application `peer` is to the policy in force: a listed
    /// application's name, or [`LAB_APPLICATION`] for a local peer running
    /// as root or as the agent's user that lab mode admits without one.
    /// `None`: an unknown peer, which gets no token.
    pub fn application_of(&self, peer: &Peer) -> Option<String> {
        match self
            .policy()
            .admit(peer.uid, peer.gid, peer.exe.as_deref(), self.uid)?
        {
            // The path /proc shows can be another file in another mount
            // namespace: the file itself must be the one the policy names.
            keyward_policy::Peer::Application(app) => match &app.exe {
                Some(exe) if !peer.runs(exe) => {
                    log::warn!(
                        "{peer}: runs another file than {} (device and inode differ): not application {:?}",
                        exe.display(),
                        app.name
                    );
                    None
                }
                _ => Some(app.name.clone()),
            },
            _ => Some(LAB_APPLICATION.to_owned()),
        }
    }

    /// Builds the agent from `config`: loads each library once, finds and
    /// logs in to each backend token. A backend that cannot be opened is
    /// logged and its slot shows no token; the agent still starts.
    pub fn from_config(config: &Config) -> std::io::Result<Agent> {
        let state = StateDir::open(&config.agent.state_dir)?;
        let mut libs: HashMap<std::path::PathBuf, std::result::Result<_, String>> = HashMap::new();
        let mut tokens = Vec::new();
        let mut pending = crate::reopen::Pending::default();
        for (index, t) in config.tokens.iter().enumerate() {
            let lib = libs
                .entry(t.library.clone())
                .or_insert_with(|| crate::backend::ffi::Library::load(&t.library))
                .clone();
            if let Ok(lib) = &lib {
                pending.library(t.library.clone(), lib);
            }
            let backend = lib.and_then(|lib| {
                let pin = t
                    .backend_pin
                    .read()
                    .map_err(|e| format!("backend_pin: {e}"))?;
                crate::backend::ffi::Token::open(lib, &t.selector(), pin)
                    .map(|tok| Arc::new(tok) as Arc<dyn crate::backend::Backend>)
            });
            match &backend {
                Ok(_) => log::info!("token {:?}: backend {} ready", t.label, t.library.display()),
                Err(e) => {
                    log::error!(
                        "token {:?}: backend unavailable: {e}; tried again from {} s on, at most every {} s",
                        t.label,
                        crate::reopen::FIRST.as_secs(),
                        crate::reopen::LONGEST.as_secs()
                    );
                    pending.token(index, t.clone());
                }
            }
            let token_state = state.token(&t.label);
            token_state.remove_stale_temporaries();
            tokens.push(VirtualToken::new(t.clone(), token_state, backend));
        }
        let opened = crate::store::open(
            config.agent.store,
            config.postgres.as_ref(),
            &config.agent.state_dir,
        )
        .map_err(std::io::Error::other)?;
        let keys = ManagedKeys::open(opened.inventory.clone())
            .map_err(|e| std::io::Error::other(format!("{}: {e}", opened.summary)))?;
        if let Some((_, lease)) = &opened.shared {
            keys.set_lease(lease.clone());
        }
        log::info!("store: {}", opened.summary);
        let agent = Agent::new(
            tokens,
            config.agent.socket.display().to_string(),
            keys,
            Auditor::with_config(opened.trail, &config.audit),
        );
        let _ = agent.core.store.set(opened.summary);
        agent.core.gates.set_wait(std::time::Duration::from_millis(
            config.agent.change_wait_ms,
        ));
        *agent.reopen.lock().unwrap_or_else(|p| p.into_inner()) = Some(pending);
        if let Some((store, lease)) = opened.shared {
            crate::store::listen::spawn(store, Arc::downgrade(&agent.lifecycle), lease)
                .map_err(std::io::Error::other)?;
        }
        Ok(agent)
    }

    /// Starts trying again, in a thread of their own, the backends that
    /// could not be opened at start (see `reopen`); once, after start-up.
    pub fn retry_backends(self: &Arc<Self>) -> std::io::Result<()> {
        let pending = self.reopen.lock().unwrap_or_else(|p| p.into_inner()).take();
        match pending {
            Some(p) => crate::reopen::spawn(p, Arc::downgrade(&self.lifecycle)),
            None => Ok(()),
        }
    }

    /// The random instance id of this start.
    pub fn instance(&self) -> u64 {
        self.instance
    }

    /// What `keyward status` shows.
    pub fn status(&self) -> Status {
        let tokens = self
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut s = TokenStatus {
                    slot: i as u64,
                    label: t.label(),
                    user_pin_initialized: t.state.has_pin(Role::User),
                    allow_init_token: t.config.allow_init_token,
                    backend_library: t.config.library.display().to_string(),
                    backend_library_description: String::new(),
                    backend_library_version: Default::default(),
                    backend_present: false,
                    backend_label: String::new(),
                    backend_manufacturer: String::new(),
                    backend_model: String::new(),
                    backend_serial: String::new(),
                    backend_error: None,
                };
                match t.backend_status() {
                    Err(e) => s.backend_error = Some(e),
                    Ok(b) => {
                        if let Ok(li) = b.library_info() {
                            s.backend_library_description = li.description;
                            s.backend_library_version = li.version;
                        }
                        match b.token_info() {
                            Ok(bi) => {
                                s.backend_present = true;
                                s.backend_label = bi.label;
                                s.backend_manufacturer = bi.manufacturer;
                                s.backend_model = bi.model;
                                s.backend_serial = bi.serial;
                            }
                            Err(e) => s.backend_error = Some(format!("C_GetTokenInfo failed: {e}")),
                        }
                    }
                }
                s
            })
            .collect();
        Status {
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            app_protocol: APP_VERSIONS,
            admin_protocol: ADMIN_VERSIONS,
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            socket: self.socket.clone(),
            tokens,
            connections: 0,
            socket_events: Vec::new(),
            pending_requests: self.lifecycle.pending_requests(),
            policy: self.lifecycle.policy_summary(),
            keys_by_state: self.keys_by_state(),
            audit: self.audit_health(),
            scheduler_last_run: Some(
                self.lifecycle
                    .scheduler_ran
                    .load(std::sync::atomic::Ordering::Relaxed),
            )
            .filter(|&t| t > 0),
            scheduler_next_run: {
                let last = self
                    .lifecycle
                    .scheduler_ran
                    .load(std::sync::atomic::Ordering::Relaxed);
                (last > 0).then_some(last + crate::lifecycle::scheduler::EVERY.as_secs() as i64)
            },
            store: self.store().health(),
        }
    }

    /// Managed keys by state, in lifecycle order, states with none left out.
    fn keys_by_state(&self) -> Vec<(keyward_policy::KeyState, u64)> {
        let mut counts = std::collections::BTreeMap::new();
        for k in self.keys.all() {
            *counts.entry(k.record.state).or_insert(0u64) += 1;
        }
        counts.into_iter().collect()
    }

    /// The audit trail's health: records, the newest checkpoint, what it
    /// does not seal yet, failures.
    fn audit_health(&self) -> keyward_protocol::admin::AuditHealth {
        let log = self.audit.log();
        let records = log.head().map(|(seq, _)| seq).unwrap_or(0);
        let last = log.last_checkpoint().ok().flatten();
        let stats = self.audit.stats();
        keyward_protocol::admin::AuditHealth {
            records,
            last_checkpoint_seq: last.as_ref().map(|c| c.seq),
            last_checkpoint_at: last.as_ref().map(|c| c.created_at),
            unsealed: records.saturating_sub(last.map_or(0, |c| c.seq)),
            write_failures: stats.failures,
            failing: stats.failing,
        }
    }
}

/// A strict policy with one application, `app` (uid 1000), and one class,
/// `signing` (EC P-256, rotated every 90 days, `app` may sign and verify):
/// what the lifecycle, trail and report tests and the admin fuzz target run
/// under.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) const STRICT_SIGNING: &str = r#"
[settings]
mode = "strict"

[[application]]
name = "app"
uid = 1000

[[class]]
name = "signing"
purpose = "signing"
algorithms = ["ec:p256"]
protect_period = "365d"
process_period = "730d"
rotation_interval = "90d"
grants = [ { application = "app", operations = ["sign", "verify"] } ]
"#;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    use std::sync::Arc;

    use crate::backend::mock::Mock;
    use crate::backend::Backend;

    use crate::config::TokenConfig;

    use crate::listener::identity::Peer;
    use keyward_policy::Policy;

    use crate::audit::Auditor;
    use crate::keys::ManagedKeys;

    use crate::state::StateDir;

    use crate::config::SecretRef;

    use crate::tokens::VirtualToken;

    pub(crate) use super::STRICT_SIGNING;

    /// An agent on one mock token `kw` under the policy text `policy`, with
    /// its inventory and trail in a temporary directory.
    pub(crate) fn mock_agent(policy: &str) -> (tempfile::TempDir, Agent) {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let config = TokenConfig {
            label: "kw".into(),
            library: "/nonexistent.so".into(),
            backend_token_label: Some("b".into()),
            backend_serial: None,
            backend_pin: SecretRef::Env("UNUSED".into()),
            backend_so_pin: None,
            allow_init_token: false,
        };
        let mock = Arc::new(Mock::default()) as Arc<dyn Backend>;
        let token = VirtualToken::new(config, state.token("kw"), Ok(mock));
        let inventory = Arc::new(
            keyward_inventory::SqliteInventory::open(dir.path().join("inventory.sqlite")).unwrap(),
        );
        let keys = ManagedKeys::open(inventory.clone()).unwrap();
        let policy = Policy::from_str(policy, "test").unwrap();
        let audit = Auditor::start(inventory);
        let agent = Agent::new(vec![token], "/sock".into(), keys, audit).with_policy(policy);
        (dir, agent)
    }

    /// An administrator (root, pid 1) on the admin socket.
    pub(crate) fn admin_peer() -> Peer {
        Peer {
            key: crate::listener::identity::ClientKey {
                pid: 1,
                start_time: 0,
            },
            uid: 0,
            gid: 0,
            exe: None,
            exe_id: None,
            foreign_mounts: false,
        }
    }
}
