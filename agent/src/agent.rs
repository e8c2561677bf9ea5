//! The agent: its parts, built from the configuration. A request flows
//! through the stages the crate's layout shows (see `lib.rs`); this file
//! holds what they share.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use keyward_protocol::admin::{Status, TokenStatus};
use keyward_protocol::PROTOCOL_VERSION;

use crate::backend::BackendObject;
use crate::clients::{Client, Slot, UseTarget};
use crate::config::Config;
use crate::listener::identity::{ClientKey, Peer};
use keyward_policy::Policy;

use crate::audit::{self, Auditor};
use crate::clients::registry::Owner;
use crate::keys::ManagedKeys;
use crate::state::{Role, StateDir};

/// The application name of a peer the lab policy admits without listing it.
pub const LAB_APPLICATION: &str = "lab";
pub use crate::tokens::VirtualToken;

/// The agent: tokens, clients, and the session-object registry.
#[derive(Debug)]
pub struct Agent {
    pub(crate) tokens: Vec<VirtualToken>,
    /// The policy in force; a reload swaps it whole.
    pub(crate) policy: arc_swap::ArcSwap<Policy>,
    pub(crate) keys: ManagedKeys,
    pub(crate) audit: Arc<Auditor>,
    pub(crate) audit_key: Mutex<Option<audit::AuditKey>>,
    /// The agent's own uid: in lab mode, peers running as it are admitted.
    pub(crate) uid: u32,
    pub(crate) clients: Mutex<HashMap<ClientKey, (Arc<Client>, usize)>>,
    pub(crate) session_objects: Mutex<HashMap<(Slot, BackendObject), Owner>>,
    /// What use records name each key object (see [`Agent::use_target`]).
    pub(crate) use_targets: Mutex<HashMap<(Slot, BackendObject), Arc<UseTarget>>>,
    /// Held (read) by every cryptographic request while it checks its key
    /// and runs; a lifecycle change that takes rights away takes it (write)
    /// once after the change, so it returns only when no request that
    /// passed the old check is still running, and its record follows all
    /// their use records in the trail.
    pub(crate) in_flight: std::sync::RwLock<()>,
    pub(crate) instance: u64,
    pub(crate) started: Instant,
    pub(crate) socket: String,
}

impl Agent {
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
        Agent {
            tokens,
            policy: arc_swap::ArcSwap::from_pointee(Policy::lab()),
            keys,
            audit,
            audit_key: Mutex::new(None),
            uid: nix::unistd::getuid().as_raw(),
            clients: Mutex::new(HashMap::new()),
            session_objects: Mutex::new(HashMap::new()),
            use_targets: Mutex::new(HashMap::new()),
            in_flight: std::sync::RwLock::new(()),
            instance: u64::from_le_bytes(instance),
            started: Instant::now(),
            socket,
        }
    }

    /// The same agent under `policy`.
    pub fn with_policy(self, policy: Policy) -> Agent {
        self.policy.store(Arc::new(policy));
        self
    }

    /// Puts `policy` in force for every request from now on. Clients keep
    /// the application they were identified as when they connected.
    pub fn set_policy(&self, policy: Policy) {
        self.policy.store(Arc::new(policy));
    }

    /// The policy in force.
    pub fn policy(&self) -> arc_swap::Guard<Arc<Policy>> {
        self.policy.load()
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
        for t in &config.tokens {
            let lib = libs
                .entry(t.library.clone())
                .or_insert_with(|| crate::backend::ffi::Library::load(&t.library))
                .clone();
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
                Err(e) => log::error!("token {:?}: backend unavailable: {e}", t.label),
            }
            let token_state = state.token(&t.label);
            token_state.remove_stale_temporaries();
            tokens.push(VirtualToken::new(t.clone(), token_state, backend));
        }
        let store = config.agent.state_dir.join("inventory.sqlite");
        let inventory = Arc::new(
            keyward_inventory::SqliteInventory::open(&store)
                .map_err(|e| std::io::Error::other(e.to_string()))?,
        );
        let keys = ManagedKeys::open(inventory.clone())
            .map_err(|e| std::io::Error::other(format!("{}: {e}", store.display())))?;
        Ok(Agent::new(
            tokens,
            config.agent.socket.display().to_string(),
            keys,
            Auditor::with_config(inventory, &config.audit),
        ))
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
                match &t.backend {
                    Err(e) => s.backend_error = Some(e.clone()),
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
            protocol_version: PROTOCOL_VERSION,
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            socket: self.socket.clone(),
            tokens,
            connections: 0,
            socket_events: Vec::new(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, MutexGuard};

    use cryptoki_sys as ck;

    use keyward_protocol::message::OpInit;
    use keyward_protocol::{
        AttrResult, AttrValue, Attribute, Mechanism, Op, Request, Response, Value,
    };

    use crate::backend::{Backend, BackendObject};
    use crate::clients::Client;
    use crate::config::TokenConfig;
    use crate::error::{Error, Result};
    use crate::listener::identity::Peer;
    use keyward_policy::Policy;

    use crate::audit::Auditor;
    use crate::keys::ManagedKeys;

    use crate::state::{Role, StateDir};

    use crate::backend::{BackendSession, BackendTokenInfo, LibraryInfo};
    use crate::clients::tests::peer;
    use crate::config::SecretRef;
    use crate::forward::MAX_RANDOM;
    use crate::lock;
    use crate::template::template_bool;
    use crate::tokens::{virtual_serial, VirtualToken};
    use keyward_protocol::MechanismInfo;
    use std::collections::HashSet;

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

    #[derive(Debug, Clone, Copy)]
    struct MockObject {
        private: bool,
        token: bool,
        session: BackendSession,
    }

    #[derive(Debug, Default)]
    struct MockState {
        next: u64,
        sessions: HashSet<BackendSession>,
        objects: HashMap<BackendObject, MockObject>,
        context_logins: u32,
    }

    /// A backend in memory: sessions, objects with ck::CKA_TOKEN / ck::CKA_PRIVATE.
    #[derive(Debug, Default)]
    pub(crate) struct Mock {
        st: Mutex<MockState>,
    }

    impl Mock {
        fn st(&self) -> MutexGuard<'_, MockState> {
            self.st.lock().unwrap()
        }
        fn add(&self, session: BackendSession, template: &[Attribute], private: bool) -> u64 {
            let mut st = self.st();
            st.next += 1;
            let h = st.next;
            let obj = MockObject {
                private: template_bool(template, ck::CKA_PRIVATE).unwrap_or(private),
                token: template_bool(template, ck::CKA_TOKEN).unwrap_or(false),
                session,
            };
            st.objects.insert(h, obj);
            h
        }
        fn live(&self, s: BackendSession) -> Result<()> {
            if self.st().sessions.contains(&s) || s == 0 {
                Ok(())
            } else {
                Err(Error::Backend(ck::CKR_SESSION_HANDLE_INVALID))
            }
        }
        fn object_count(&self) -> usize {
            self.st().objects.len()
        }
    }

    impl Backend for Mock {
        fn library_info(&self) -> Result<LibraryInfo> {
            Ok(LibraryInfo::default())
        }
        fn token_info(&self) -> Result<BackendTokenInfo> {
            Ok(BackendTokenInfo {
                serial: "1234".into(),
                flags: ck::CKF_RNG,
                ..Default::default()
            })
        }
        fn mechanism_list(&self) -> Result<Vec<u64>> {
            Ok(vec![ck::CKM_ECDSA])
        }
        fn mechanism_info(&self, _: u64) -> Result<MechanismInfo> {
            Ok(MechanismInfo::default())
        }
        fn open_session(&self, _: bool) -> Result<BackendSession> {
            let mut st = self.st();
            st.next += 1;
            let h = st.next;
            st.sessions.insert(h);
            Ok(h)
        }
        fn close_session(&self, s: BackendSession) -> Result<()> {
            let mut st = self.st();
            st.sessions.remove(&s);
            st.objects.retain(|_, o| o.token || o.session != s);
            Ok(())
        }
        fn anchor_session(&self) -> BackendSession {
            0
        }
        fn login_context_specific(&self, s: BackendSession) -> Result<()> {
            self.live(s)?;
            self.st().context_logins += 1;
            Ok(())
        }
        fn create_object(&self, s: BackendSession, t: &[Attribute]) -> Result<BackendObject> {
            self.live(s)?;
            Ok(self.add(s, t, false))
        }
        fn copy_object(&self, s: BackendSession, _: BackendObject, t: &[Attribute]) -> Result<u64> {
            self.live(s)?;
            Ok(self.add(s, t, false))
        }
        fn destroy_object(&self, s: BackendSession, o: BackendObject) -> Result<()> {
            self.live(s)?;
            self.st()
                .objects
                .remove(&o)
                .map(|_| ())
                .ok_or(Error::Backend(ck::CKR_OBJECT_HANDLE_INVALID))
        }
        fn object_size(&self, _: BackendSession, _: BackendObject) -> Result<u64> {
            Ok(1)
        }
        fn get_attributes(
            &self,
            _: BackendSession,
            o: BackendObject,
            types: &[u64],
        ) -> Result<Vec<AttrResult>> {
            let obj = *self
                .st()
                .objects
                .get(&o)
                .ok_or(Error::Backend(ck::CKR_OBJECT_HANDLE_INVALID))?;
            Ok(types
                .iter()
                .map(|&t| match t {
                    ck::CKA_TOKEN => AttrResult::Value(AttrValue::Leaf(Value::Bool(obj.token))),
                    ck::CKA_PRIVATE => AttrResult::Value(AttrValue::Leaf(Value::Bool(obj.private))),
                    _ => AttrResult::Invalid,
                })
                .collect())
        }
        fn set_attributes(
            &self,
            _: BackendSession,
            _: BackendObject,
            _: &[Attribute],
        ) -> Result<()> {
            Ok(())
        }
        fn find_objects(&self, s: BackendSession, t: &[Attribute]) -> Result<Vec<BackendObject>> {
            self.live(s)?;
            let private = template_bool(t, ck::CKA_PRIVATE);
            let mut v: Vec<u64> = self
                .st()
                .objects
                .iter()
                .filter(|(_, o)| private.is_none_or(|p| p == o.private))
                .map(|(&h, _)| h)
                .collect();
            v.sort_unstable();
            Ok(v)
        }
        fn op_init(&self, s: BackendSession, _: Op, _: &Mechanism, _: Option<u64>) -> Result<()> {
            self.live(s)
        }
        fn single(&self, s: BackendSession, _: Op, data: &[u8]) -> Result<Vec<u8>> {
            self.live(s)?;
            Ok(data.to_vec())
        }
        fn verify(&self, s: BackendSession, _: &[u8], _: &[u8]) -> Result<()> {
            self.live(s)
        }
        fn update(&self, s: BackendSession, _: Op, _: &[u8]) -> Result<Vec<u8>> {
            self.live(s)?;
            Ok(Vec::new())
        }
        fn digest_key(&self, s: BackendSession, _: BackendObject) -> Result<()> {
            self.live(s)
        }
        fn final_(&self, s: BackendSession, _: Op) -> Result<Vec<u8>> {
            self.live(s)?;
            Ok(Vec::new())
        }
        fn verify_final(&self, s: BackendSession, _: &[u8]) -> Result<()> {
            self.live(s)
        }
        fn generate_key(&self, s: BackendSession, _: &Mechanism, t: &[Attribute]) -> Result<u64> {
            self.live(s)?;
            Ok(self.add(s, t, true))
        }
        fn generate_key_pair(
            &self,
            s: BackendSession,
            _: &Mechanism,
            pubt: &[Attribute],
            privt: &[Attribute],
        ) -> Result<(u64, u64)> {
            self.live(s)?;
            Ok((self.add(s, pubt, false), self.add(s, privt, true)))
        }
        fn wrap_key(&self, s: BackendSession, _: &Mechanism, _: u64, _: u64) -> Result<Vec<u8>> {
            self.live(s)?;
            Ok(vec![1])
        }
        fn unwrap_key(
            &self,
            s: BackendSession,
            _: &Mechanism,
            _: u64,
            _: &[u8],
            t: &[Attribute],
        ) -> Result<u64> {
            self.live(s)?;
            Ok(self.add(s, t, true))
        }
        fn derive_key(
            &self,
            s: BackendSession,
            _: &Mechanism,
            _: u64,
            t: &[Attribute],
        ) -> Result<u64> {
            self.live(s)?;
            Ok(self.add(s, t, true))
        }
        fn seed_random(&self, s: BackendSession, _: &[u8]) -> Result<()> {
            self.live(s)
        }
        fn generate_random(&self, s: BackendSession, len: usize) -> Result<Vec<u8>> {
            self.live(s)?;
            Ok(vec![0; len])
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        agent: Agent,
        mock: Arc<Mock>,
    }

    fn fixture(allow_init_token: bool) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let mock = Arc::new(Mock::default());
        let config = TokenConfig {
            label: "kw".into(),
            library: "/nonexistent.so".into(),
            backend_token_label: Some("b".into()),
            backend_serial: None,
            backend_pin: SecretRef::Env("UNUSED".into()),
            allow_init_token,
        };
        let ts = state.token("kw");
        ts.set_pin(Role::User, b"1111").unwrap();
        ts.set_pin(Role::So, b"2222").unwrap();
        let token = VirtualToken::new(config, ts, Ok(mock.clone() as Arc<dyn Backend>));
        let inventory =
            keyward_inventory::SqliteInventory::open(dir.path().join("inventory.sqlite")).unwrap();
        let inventory = Arc::new(inventory);
        let keys = ManagedKeys::open(inventory.clone()).unwrap();
        Fixture {
            _dir: dir,
            agent: Agent::new(vec![token], "/sock".into(), keys, Auditor::start(inventory)),
            mock,
        }
    }

    const RW: u64 = ck::CKF_SERIAL_SESSION | ck::CKF_RW_SESSION;

    fn call(a: &Agent, c: &Arc<Client>, r: Request) -> Response {
        a.handle(c, r)
    }

    fn open(a: &Agent, c: &Arc<Client>, flags: u64) -> u64 {
        match call(a, c, Request::OpenSession { slot: 0, flags }) {
            Response::Handle(h) => h,
            other => panic!("{other:?}"),
        }
    }

    fn login(a: &Agent, c: &Arc<Client>, s: u64, user_type: u64, pin: &[u8]) -> Response {
        call(
            a,
            c,
            Request::Login {
                session: s,
                user_type,
                pin: Some(zeroize::Zeroizing::new(pin.to_vec())),
            },
        )
    }

    fn err(rv: ck::CK_RV) -> Response {
        Response::Err(rv)
    }

    fn state(a: &Agent, c: &Arc<Client>, s: u64) -> ck::CK_ULONG {
        match call(a, c, Request::GetSessionInfo { session: s }) {
            Response::SessionInfo(i) => i.state as ck::CK_ULONG,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn login_state_machine() {
        let f = fixture(false);
        let (a, c) = (&f.agent, f.agent.connect(peer(1), LAB_APPLICATION.into()));
        let s = open(a, &c, RW);
        assert_eq!(state(a, &c, s), ck::CKS_RW_PUBLIC_SESSION);
        assert_eq!(
            login(a, &c, s, ck::CKU_USER, b"9999"),
            err(ck::CKR_PIN_INCORRECT)
        );
        assert_eq!(login(a, &c, s, 7, b"1111"), err(ck::CKR_USER_TYPE_INVALID));
        assert_eq!(
            login(a, &c, s, ck::CKU_CONTEXT_SPECIFIC, b"1111"),
            err(ck::CKR_USER_NOT_LOGGED_IN)
        );
        assert_eq!(login(a, &c, s, ck::CKU_USER, b"1111"), Response::Unit);
        assert_eq!(state(a, &c, s), ck::CKS_RW_USER_FUNCTIONS);
        // Shared by all the client's sessions on the token.
        let ro = open(a, &c, ck::CKF_SERIAL_SESSION);
        assert_eq!(state(a, &c, ro), ck::CKS_RO_USER_FUNCTIONS);
        assert_eq!(
            login(a, &c, ro, ck::CKU_USER, b"1111"),
            err(ck::CKR_USER_ALREADY_LOGGED_IN)
        );
        assert_eq!(
            login(a, &c, s, ck::CKU_SO, b"2222"),
            err(ck::CKR_USER_ANOTHER_ALREADY_LOGGED_IN)
        );
        assert_eq!(
            login(a, &c, s, ck::CKU_CONTEXT_SPECIFIC, b"1111"),
            Response::Unit
        );
        assert_eq!(f.mock.st().context_logins, 1);
        // Another process is not logged in.
        let other = a.connect(peer(2), LAB_APPLICATION.into());
        let os = open(a, &other, RW);
        assert_eq!(state(a, &other, os), ck::CKS_RW_PUBLIC_SESSION);

        assert_eq!(call(a, &c, Request::Logout { session: s }), Response::Unit);
        assert_eq!(
            call(a, &c, Request::Logout { session: s }),
            err(ck::CKR_USER_NOT_LOGGED_IN)
        );
        // SO login with a read-only session open is refused.
        assert_eq!(
            login(a, &c, s, ck::CKU_SO, b"2222"),
            err(ck::CKR_SESSION_READ_ONLY_EXISTS)
        );
        call(a, &c, Request::CloseSession { session: ro });
        assert_eq!(login(a, &c, s, ck::CKU_SO, b"2222"), Response::Unit);
        assert_eq!(state(a, &c, s), ck::CKS_RW_SO_FUNCTIONS);
        assert_eq!(
            call(
                a,
                &c,
                Request::OpenSession {
                    slot: 0,
                    flags: ck::CKF_SERIAL_SESSION
                }
            ),
            err(ck::CKR_SESSION_READ_WRITE_SO_EXISTS)
        );
        // Closing the last session logs out.
        call(a, &c, Request::CloseSession { session: s });
        let s = open(a, &c, RW);
        assert_eq!(state(a, &c, s), ck::CKS_RW_PUBLIC_SESSION);
    }

    #[test]
    fn pins_are_managed_virtually() {
        let f = fixture(false);
        let (a, c) = (&f.agent, f.agent.connect(peer(1), LAB_APPLICATION.into()));
        let s = open(a, &c, RW);
        let pin = |p: &[u8]| zeroize::Zeroizing::new(p.to_vec());
        assert_eq!(
            call(
                a,
                &c,
                Request::InitPin {
                    session: s,
                    pin: pin(b"3333")
                }
            ),
            err(ck::CKR_USER_NOT_LOGGED_IN)
        );
        // The user changes the user PIN.
        assert_eq!(
            call(
                a,
                &c,
                Request::SetPin {
                    session: s,
                    old_pin: pin(b"0000"),
                    new_pin: pin(b"4444")
                }
            ),
            err(ck::CKR_PIN_INCORRECT)
        );
        assert_eq!(
            call(
                a,
                &c,
                Request::SetPin {
                    session: s,
                    old_pin: pin(b"1111"),
                    new_pin: pin(b"44")
                }
            ),
            err(ck::CKR_PIN_LEN_RANGE)
        );
        assert_eq!(
            call(
                a,
                &c,
                Request::SetPin {
                    session: s,
                    old_pin: pin(b"1111"),
                    new_pin: pin(b"4444")
                }
            ),
            Response::Unit
        );
        assert_eq!(
            login(a, &c, s, ck::CKU_USER, b"1111"),
            err(ck::CKR_PIN_INCORRECT)
        );
        // The SO resets it.
        assert_eq!(login(a, &c, s, ck::CKU_SO, b"2222"), Response::Unit);
        assert_eq!(
            call(
                a,
                &c,
                Request::InitPin {
                    session: s,
                    pin: pin(b"5555")
                }
            ),
            Response::Unit
        );
        call(a, &c, Request::Logout { session: s });
        assert_eq!(login(a, &c, s, ck::CKU_USER, b"5555"), Response::Unit);
        // Without a user PIN.
        f.agent.tokens[0].state.clear_pin(Role::User).unwrap();
        call(a, &c, Request::Logout { session: s });
        assert_eq!(
            login(a, &c, s, ck::CKU_USER, b"5555"),
            err(ck::CKR_USER_PIN_NOT_INITIALIZED)
        );
    }

    fn find(a: &Agent, c: &Arc<Client>, s: u64, template: Vec<Attribute>) -> Vec<u64> {
        match call(
            a,
            c,
            Request::FindObjects {
                session: s,
                template,
            },
        ) {
            Response::List(v) => v,
            other => panic!("{other:?}"),
        }
    }

    fn create(a: &Agent, c: &Arc<Client>, s: u64, template: Vec<Attribute>) -> Response {
        call(
            a,
            c,
            Request::CreateObject {
                session: s,
                template,
            },
        )
    }

    #[test]
    fn private_objects_are_hidden_from_public_sessions() {
        let f = fixture(false);
        let (a, c) = (&f.agent, f.agent.connect(peer(1), LAB_APPLICATION.into()));
        let s = open(a, &c, RW);
        let token = |private| {
            vec![
                Attribute::bool(ck::CKA_TOKEN, true),
                Attribute::bool(ck::CKA_PRIVATE, private),
            ]
        };
        assert_eq!(
            create(a, &c, s, token(true)),
            err(ck::CKR_USER_NOT_LOGGED_IN)
        );
        // Generated keys are private by default here: created, found
        // private, destroyed again.
        let r = call(
            a,
            &c,
            Request::GenerateKey {
                session: s,
                mechanism: Mechanism::plain(ck::CKM_AES_KEY_GEN),
                template: vec![],
            },
        );
        assert_eq!(r, err(ck::CKR_USER_NOT_LOGGED_IN));
        assert_eq!(f.mock.object_count(), 0);
        let Response::Handle(public) = create(a, &c, s, token(false)) else {
            panic!()
        };

        login(a, &c, s, ck::CKU_USER, b"1111");
        let Response::Handle(private) = create(a, &c, s, token(true)) else {
            panic!()
        };
        let mut all = find(a, &c, s, vec![]);
        all.sort_unstable();
        assert_eq!(all, vec![public, private]);

        call(a, &c, Request::Logout { session: s });
        assert_eq!(find(a, &c, s, vec![]), vec![public]);
        assert!(find(a, &c, s, vec![Attribute::bool(ck::CKA_PRIVATE, true)]).is_empty());
        // The handle to the private object went with the logout.
        assert_eq!(
            call(
                a,
                &c,
                Request::GetObjectSize {
                    session: s,
                    object: private
                }
            ),
            err(ck::CKR_OBJECT_HANDLE_INVALID)
        );
    }

    #[test]
    fn session_objects_belong_to_their_client() {
        let f = fixture(false);
        let a = &f.agent;
        let c1 = a.connect(peer(1), LAB_APPLICATION.into());
        let c2 = a.connect(peer(2), LAB_APPLICATION.into());
        let s1 = open(a, &c1, RW);
        let s2 = open(a, &c2, RW);
        let Response::Handle(mine) = create(a, &c1, s1, vec![]) else {
            panic!()
        };
        let Response::Handle(shared) =
            create(a, &c1, s1, vec![Attribute::bool(ck::CKA_TOKEN, true)])
        else {
            panic!()
        };
        assert_eq!(find(a, &c1, s1, vec![]).len(), 2);
        let seen = find(a, &c2, s2, vec![]);
        assert_eq!(seen.len(), 1, "the other client sees only the token object");
        // Handles are per client: c2's number for the token object is its own,
        // and c1's handles mean nothing to c2 beyond what c2 mapped itself.
        assert_eq!(
            call(
                a,
                &c2,
                Request::DestroyObject {
                    session: s2,
                    object: mine + 10
                }
            ),
            err(ck::CKR_OBJECT_HANDLE_INVALID)
        );
        let s1b = open(a, &c1, RW);
        assert_eq!(s1b, 2);
        assert_eq!(
            call(
                a,
                &c2,
                Request::GetObjectSize {
                    session: s1b,
                    object: shared
                }
            ),
            err(ck::CKR_SESSION_HANDLE_INVALID)
        );
        // Key handles unknown to the client get the key-specific codes.
        let m = Mechanism::plain(ck::CKM_AES_KEY_WRAP);
        assert_eq!(
            call(
                a,
                &c2,
                Request::WrapKey {
                    session: s2,
                    mechanism: m.clone(),
                    wrapping_key: 99,
                    key: seen[0]
                }
            ),
            err(ck::CKR_WRAPPING_KEY_HANDLE_INVALID)
        );
        assert_eq!(
            call(
                a,
                &c2,
                Request::WrapKey {
                    session: s2,
                    mechanism: m.clone(),
                    wrapping_key: seen[0],
                    key: 99
                }
            ),
            err(ck::CKR_KEY_HANDLE_INVALID)
        );
        assert_eq!(
            call(
                a,
                &c2,
                Request::UnwrapKey {
                    session: s2,
                    mechanism: m.clone(),
                    unwrapping_key: 99,
                    wrapped_key: vec![],
                    template: vec![]
                }
            ),
            err(ck::CKR_UNWRAPPING_KEY_HANDLE_INVALID)
        );
        assert_eq!(
            call(
                a,
                &c2,
                Request::OperationInit {
                    session: s2,
                    op: Op::Sign,
                    init: OpInit {
                        mechanism: m,
                        key: Some(99)
                    }
                }
            ),
            err(ck::CKR_KEY_HANDLE_INVALID)
        );
        // When c1 goes, its session objects go; the registry forgets them.
        a.disconnect(&c1);
        assert_eq!(f.mock.object_count(), 1);
        assert!(lock(&a.session_objects).is_empty());
        assert_eq!(a.tokens[0].counts().sessions, 1);
    }

    #[test]
    fn connections_of_one_process_share_a_client() {
        let f = fixture(false);
        let a = &f.agent;
        let c1 = a.connect(peer(1), LAB_APPLICATION.into());
        let c1b = a.connect(peer(1), LAB_APPLICATION.into());
        assert!(Arc::ptr_eq(&c1, &c1b));
        let s = open(a, &c1, RW);
        assert!(matches!(
            call(a, &c1b, Request::GetSessionInfo { session: s }),
            Response::SessionInfo(_)
        ));
        a.disconnect(&c1);
        assert!(matches!(
            call(a, &c1b, Request::GetSessionInfo { session: s }),
            Response::SessionInfo(_)
        ));
        a.disconnect(&c1b);
        // A new connection of the same pid and start time after the last one
        // closed starts afresh.
        let again = a.connect(peer(1), LAB_APPLICATION.into());
        assert_eq!(
            call(a, &again, Request::GetSessionInfo { session: s }),
            err(ck::CKR_SESSION_HANDLE_INVALID)
        );
        assert!(f.mock.st().sessions.is_empty());
    }

    #[test]
    fn init_token_rules() {
        let f = fixture(false);
        let c = f.agent.connect(peer(1), LAB_APPLICATION.into());
        let req = |pin: &[u8]| Request::InitToken {
            slot: 0,
            so_pin: zeroize::Zeroizing::new(pin.to_vec()),
            label: b"fresh".to_vec(),
        };
        assert_eq!(
            call(&f.agent, &c, req(b"2222")),
            err(ck::CKR_ACTION_PROHIBITED)
        );

        let f = fixture(true);
        let (a, c) = (&f.agent, f.agent.connect(peer(1), LAB_APPLICATION.into()));
        let s = open(a, &c, RW);
        create(a, &c, s, vec![Attribute::bool(ck::CKA_TOKEN, true)]);
        assert_eq!(call(a, &c, req(b"2222")), err(ck::CKR_SESSION_EXISTS));
        call(a, &c, Request::CloseSession { session: s });
        assert_eq!(call(a, &c, req(b"9999")), err(ck::CKR_PIN_INCORRECT));
        assert_eq!(call(a, &c, req(b"7777")), err(ck::CKR_PIN_INCORRECT));
        assert_eq!(call(a, &c, req(b"2222")), Response::Unit);
        assert_eq!(f.mock.object_count(), 0);
        let t = &a.tokens[0];
        assert!(!t.state.has_pin(Role::User));
        assert_eq!(t.label(), "fresh");
        let Response::TokenInfo(info) = call(a, &c, Request::GetTokenInfo { slot: 0 }) else {
            panic!()
        };
        assert_eq!(info.label, "fresh");
        assert_eq!(info.flags & ck::CKF_USER_PIN_INITIALIZED, 0);
        assert_eq!(
            call(a, &c, Request::GetTokenInfo { slot: 5 }),
            err(ck::CKR_SLOT_ID_INVALID)
        );
    }

    #[test]
    fn token_info_and_limits() {
        let f = fixture(false);
        let (a, c) = (&f.agent, f.agent.connect(peer(1), LAB_APPLICATION.into()));
        let s = open(a, &c, RW);
        let Response::TokenInfo(info) = call(a, &c, Request::GetTokenInfo { slot: 0 }) else {
            panic!()
        };
        assert_eq!(info.label, "kw");
        assert_eq!(info.serial_number, virtual_serial("kw", "1234"));
        assert_eq!(info.serial_number.len(), 16);
        assert_eq!((info.session_count, info.rw_session_count), (1, 1));
        let want = ck::CKF_LOGIN_REQUIRED
            | ck::CKF_TOKEN_INITIALIZED
            | ck::CKF_USER_PIN_INITIALIZED
            | ck::CKF_RNG;
        assert_eq!(info.flags, want);
        assert_eq!(
            call(
                a,
                &c,
                Request::GenerateRandom {
                    session: s,
                    len: MAX_RANDOM + 1
                }
            ),
            err(ck::CKR_ARGUMENTS_BAD)
        );
        assert_eq!(
            call(a, &c, Request::OpenSession { slot: 0, flags: 0 }),
            err(ck::CKR_SESSION_PARALLEL_NOT_SUPPORTED)
        );
        assert_eq!(
            call(
                a,
                &c,
                Request::GetSlotList {
                    token_present: true
                }
            ),
            Response::List(vec![0])
        );
    }
}
