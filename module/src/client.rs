//! The module's global state and its connections to the agent.
//!
//! - One [`Module`] per `C_Initialize`, behind a short-held global lock:
//!   a call clones the `Arc` out and never holds the lock across a round
//!   trip, so a `fork()` while another thread is mid-call cannot leave the
//!   child stuck on it.
//! - Fork: the pid recorded at `C_Initialize` is compared on every call. In
//!   a child, `C_Initialize` abandons the parent's state: the inherited
//!   sockets are closed (never `shutdown()`, the parent still uses them) and
//!   nothing is sent on them.
//! - A pool of Unix-socket connections: a call takes one (or opens one,
//!   which starts with `Hello`), does one request / response with the
//!   buffer stored in the connection, and puts it back. Every wait is
//!   bounded by `KEYWARD_TIMEOUT_MS`.
//! - A remote agent (`KEYWARD_AGENT=tls://host:port`): TCP with mutual
//!   TLS ([`crate::remote`]), one connection per process, calls in turn
//!   (the agent knows a remote client by its connection).
//! - Agent restart: `HelloReply::instance` names the agent run. A new
//!   connection that sees another run than the module knew drops the session
//!   table and the pooled connections of the old run.

use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyward_protocol::frame::{self, FrameError};
use keyward_protocol::{Request, Response, APP_VERSIONS, DEFAULT_SOCKET};

use crate::error::{Error, Result};
use crate::state::{lock, InitCache, Sessions};

/// Default bound on one wait for the agent.
const DEFAULT_TIMEOUT_MS: u64 = 60_000;

/// Default poll before a lone call sleeps: most answers (everything but
/// slow key operations) come within it.
const DEFAULT_SPIN_US: u64 = 80;

/// Where and how long to talk to the agent, read from the environment at
/// `C_Initialize`.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// `KEYWARD_SOCKET`, else [`DEFAULT_SOCKET`].
    pub(crate) socket: PathBuf,
    /// `KEYWARD_TIMEOUT_MS`, else one minute.
    pub(crate) timeout: Duration,
    /// `KEYWARD_SPIN_US`: how long a lone call polls for its answer before
    /// it sleeps (0: never; default 80 µs, and never on one core).
    pub(crate) spin: Duration,
    /// The users the agent may run as: `KEYWARD_AGENT_UID` (user names or
    /// numbers, comma-separated), else root, this process's own user and
    /// the system user `keyward` if it exists. Nothing, not even `Hello`, is sent to a socket served by another.
    pub(crate) agent_uids: Vec<u32>,
    /// `KEYWARD_AGENT=tls://host:port`: a remote agent over mutual TLS,
    /// instead of the socket.
    pub(crate) remote: Option<Arc<crate::remote::Remote>>,
}

impl Config {
    fn from_env() -> Self {
        Config::from_env_after(None)
    }

    /// The configuration of a process forked from one configured with
    /// `parent`: a setting its environment does not give is the parent's.
    /// A server that clears its workers' environment after loading the
    /// module (nginx keeps only `TZ`) still reaches the agent its master
    /// was configured for.
    fn from_env_after(parent: Option<&Config>) -> Self {
        let mut c = Config::read_env();
        if let Some(p) = parent {
            if std::env::var_os("KEYWARD_SOCKET").is_none_or(|s| s.is_empty()) {
                c.socket = p.socket.clone();
            }
            if std::env::var_os("KEYWARD_TIMEOUT_MS").is_none() {
                c.timeout = p.timeout;
            }
            if std::env::var_os("KEYWARD_SPIN_US").is_none() {
                c.spin = p.spin;
            }
            if std::env::var_os("KEYWARD_AGENT_UID").is_none() {
                c.agent_uids = p.agent_uids.clone();
            }
            if std::env::var_os("KEYWARD_AGENT").is_none() {
                c.remote = p.remote.clone();
            }
        }
        c
    }

    fn read_env() -> Self {
        let socket = std::env::var_os("KEYWARD_SOCKET")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
        let timeout_ms = std::env::var("KEYWARD_TIMEOUT_MS")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&ms| ms > 0)
            .unwrap_or(DEFAULT_TIMEOUT_MS);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let spin_us = std::env::var("KEYWARD_SPIN_US")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(if cores > 1 { DEFAULT_SPIN_US } else { 0 })
            .min(1_000);
        Config {
            socket,
            timeout: Duration::from_millis(timeout_ms),
            spin: Duration::from_micros(spin_us),
            agent_uids: agent_uids(std::env::var("KEYWARD_AGENT_UID").ok().as_deref()),
            remote: crate::remote::Remote::from_env().map(Arc::new),
        }
    }
}

/// The system user an installed agent runs as (the install step creates
/// it; only root can).
const SYSTEM_AGENT_USER: &str = "keyward";

/// The trusted agent users from `KEYWARD_AGENT_UID`'s value (names or
/// numbers, comma-separated); unset or empty: root, our own user and the
/// system user `keyward` when it exists. A name that does not resolve
/// trusts nobody by it (and is logged).
fn agent_uids(var: Option<&str>) -> Vec<u32> {
    agent_uids_with(var, |name| {
        nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw())
    })
}

/// [`agent_uids`] with the user look-up given.
fn agent_uids_with(var: Option<&str>, user: impl Fn(&str) -> Option<u32>) -> Vec<u32> {
    let own = nix::unistd::geteuid().as_raw();
    let Some(v) = var.map(str::trim).filter(|v| !v.is_empty()) else {
        let mut uids = vec![0, own];
        if let Some(system) = user(SYSTEM_AGENT_USER).filter(|u| !uids.contains(u)) {
            uids.push(system);
        }
        return uids;
    };
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .filter_map(|s| match s.parse::<u32>() {
            Ok(uid) => Some(uid),
            Err(_) => match user(s) {
                Some(uid) => Some(uid),
                None => {
                    log::error!("KEYWARD_AGENT_UID: no user named {s:?}");
                    None
                }
            },
        })
        .collect()
}

/// One connection to the agent with its reusable frame buffer. Reads go
/// through a buffer so that an answer usually costs one `read`, not two
/// (header, then payload).
#[derive(Debug)]
struct Conn {
    stream: Link,
    buf: Vec<u8>,
    /// The agent run this connection talks to.
    instance: u64,
}

/// A connection's transport: the Unix socket, or TLS to a remote agent.
#[derive(Debug)]
enum Link {
    Unix(BufReader<UnixStream>),
    Tls(Box<BufReader<crate::remote::TlsStream>>),
}

impl Conn {
    /// One request and its answer; `spin`: poll that long for the answer
    /// before sleeping in `read` (the Unix socket only).
    fn round_trip(
        &mut self,
        req: &Request,
        spin: Duration,
    ) -> std::result::Result<Response, FrameError> {
        frame::encode(req, &mut self.buf)?;
        self.send_encoded(spin)
    }

    /// Sends the request [`frame::encode`] left in the buffer and reads
    /// the answer.
    fn send_encoded(&mut self, spin: Duration) -> std::result::Result<Response, FrameError> {
        match &mut self.stream {
            Link::Unix(stream) => {
                stream.get_mut().write_all(&self.buf)?;
                if !spin.is_zero() && stream.buffer().is_empty() {
                    wait_briefly(stream.get_ref(), spin);
                }
                frame::read_message(stream, &mut self.buf)
            }
            Link::Tls(stream) => {
                stream.get_mut().write_all(&self.buf)?;
                frame::read_message(stream.as_mut(), &mut self.buf)
            }
        }
    }
}

/// Polls the socket for up to `spin` before the blocking read. A thread
/// that never slept need not be woken, which on a virtual machine costs
/// several microseconds per round trip. Only a call that is alone in its
/// process polls (see [`Module::call`]): with more, the pollers would take
/// the agent's CPU.
fn wait_briefly(stream: &UnixStream, spin: Duration) {
    use nix::sys::socket::{recv, MsgFlags};
    use std::os::fd::AsRawFd;
    let start = std::time::Instant::now();
    let mut probe = [0u8; 1];
    while start.elapsed() < spin {
        match recv(
            stream.as_raw_fd(),
            &mut probe,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
        ) {
            Err(nix::errno::Errno::EAGAIN) => std::hint::spin_loop(),
            // Data, end of stream or an error: the read will tell.
            _ => return,
        }
    }
}

/// True when the failure means the peer is gone (as opposed to a timeout or
/// a malformed frame): the other pooled connections are dead too.
fn peer_gone(e: &FrameError) -> bool {
    use std::io::ErrorKind::*;
    match e {
        FrameError::Closed => true,
        FrameError::Io(io) => matches!(
            io.kind(),
            UnexpectedEof | ConnectionReset | BrokenPipe | ConnectionAborted | NotConnected
        ),
        _ => false,
    }
}

/// [`Module::last_reachable`]'s states.
const UNTRIED: u8 = 0;
const UNREACHABLE: u8 = 1;
const REACHABLE: u8 = 2;
/// The agent answered, but refused this process (its `Hello` got an error:
/// the policy admits no application of this peer). Counts as unreachable.
const REFUSED: u8 = 3;

/// What the module knows while it is initialised.
#[derive(Debug)]
pub(crate) struct Module {
    pid: u32,
    config: Config,
    pool: Mutex<Vec<Conn>>,
    /// The agent run the module's sessions belong to.
    instance: Mutex<Option<u64>>,
    /// The local session table.
    pub(crate) sessions: Sessions,
    /// `C_*Init` shapes the agent accepted, whose init may be deferred.
    pub(crate) inits: InitCache,
    /// The last slot list the agent answered.
    pub(crate) last_slots: Mutex<Option<Vec<u64>>>,
    /// Whether the agent answered the last time the module tried:
    /// [`UNTRIED`], [`UNREACHABLE`], [`REACHABLE`] or [`REFUSED`] (an
    /// atomic: every call notes it).
    reachable: AtomicU8,
    /// Reachability as `C_WaitForSlotEvent` last reported it.
    pub(crate) event_baseline: Mutex<Option<bool>>,
    /// Set by `C_Finalize`, so that a blocked `C_WaitForSlotEvent` returns.
    finalized: AtomicBool,
    /// Calls waiting for the agent right now.
    in_flight: AtomicUsize,
    /// Whether a version problem with the agent was logged as an error
    /// already (later ones are logged at debug level).
    version_logged: AtomicBool,
    /// With a remote agent: held for a whole call, so that the process has
    /// one connection (the agent's client state is per connection).
    remote_turn: Mutex<()>,
}

impl Module {
    /// A fresh module for this process.
    pub(crate) fn new(config: Config) -> Self {
        Module {
            pid: std::process::id(),
            config,
            pool: Mutex::new(Vec::new()),
            instance: Mutex::new(None),
            sessions: Sessions::default(),
            inits: InitCache::default(),
            last_slots: Mutex::new(None),
            reachable: AtomicU8::new(UNTRIED),
            event_baseline: Mutex::new(None),
            finalized: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            version_logged: AtomicBool::new(false),
            remote_turn: Mutex::new(()),
        }
    }

    /// True once `C_Finalize` ran (or the process forked away from it).
    pub(crate) fn is_finalized(&self) -> bool {
        self.finalized.load(Ordering::Acquire) || self.pid != std::process::id()
    }

    /// Whether the agent answered at the last attempt (`None`: never tried).
    pub(crate) fn last_reachable(&self) -> Option<bool> {
        match self.reachable.load(Ordering::Acquire) {
            UNTRIED => None,
            r => Some(r == REACHABLE),
        }
    }

    /// Whether the agent's last answer was a refusal of this process.
    pub(crate) fn refused(&self) -> bool {
        self.reachable.load(Ordering::Acquire) == REFUSED
    }

    fn note_reachable(&self, yes: bool) {
        let r = if yes { REACHABLE } else { UNREACHABLE };
        self.reachable.store(r, Ordering::Release);
    }

    /// Sends `req` and returns the answer and the agent run that gave it.
    ///
    /// `instance` binds the call to the agent run a session belongs to: a
    /// connection to another run refuses it with
    /// `CKR_SESSION_HANDLE_INVALID` before anything is sent. `Response::Err`
    /// becomes `Error::Agent`.
    pub(crate) fn call(&self, instance: Option<u64>, req: &Request) -> Result<(Response, u64)> {
        let _turn = self
            .config
            .remote
            .is_some()
            .then(|| lock(&self.remote_turn));
        let pooled = lock(&self.pool).pop();
        let first = match pooled {
            Some(conn) => self.exchange(conn, instance, req),
            None => return self.call_fresh(instance, req),
        };
        match first {
            // A pooled connection whose agent went away: the others are
            // dead too. Retry once on a fresh connection, which either
            // reaches a (restarted) agent or fails fast.
            Err(e) if peer_gone(&e) => {
                log::debug!("pooled connection lost ({e}); reconnecting");
                lock(&self.pool).clear();
                self.call_fresh(instance, req)
            }
            Err(e) => Err(self.transport_error(e)),
            Ok(result) => result,
        }
    }

    fn call_fresh(&self, instance: Option<u64>, req: &Request) -> Result<(Response, u64)> {
        let conn = self.connect()?;
        self.exchange(conn, instance, req)
            .unwrap_or_else(|e| Err(self.transport_error(e)))
    }

    /// `Ok(Err(SessionHandleInvalid))`: refused locally (wrong agent run);
    /// `Err(_)`: the transport failed and the connection was dropped.
    fn exchange(
        &self,
        mut conn: Conn,
        instance: Option<u64>,
        req: &Request,
    ) -> std::result::Result<Result<(Response, u64)>, FrameError> {
        if instance.is_some_and(|i| i != conn.instance) {
            self.give_back(conn);
            return Ok(Err(Error::SessionHandleInvalid));
        }
        // A request larger than a frame can carry is the caller's input
        // (a buffer, a template, a PIN of up to 64 MiB plus the request
        // around it): refused before anything is sent, the connection and
        // with it the process's sessions kept.
        if let Err(e) = frame::encode(req, &mut conn.buf) {
            log::debug!("request refused, nothing sent: {e}");
            self.give_back(conn);
            return Ok(Err(Error::ArgumentsBad));
        }
        let alone = self.in_flight.fetch_add(1, Ordering::AcqRel) == 0;
        let spin = if alone {
            self.config.spin
        } else {
            Duration::ZERO
        };
        let resp = conn.send_encoded(spin);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        let resp = resp?;
        let run = conn.instance;
        self.give_back(conn);
        self.note_reachable(true);
        Ok(match resp {
            Response::Err(rv) => Err(Error::Agent(rv as pkcs11_sys::CK_RV)),
            other => Ok((other, run)),
        })
    }

    fn transport_error(&self, e: FrameError) -> Error {
        log::warn!("agent connection failed during the call: {e}");
        if peer_gone(&e) {
            lock(&self.pool).clear();
        }
        Error::Transport
    }

    fn give_back(&self, conn: Conn) {
        if Some(conn.instance) == *lock(&self.instance) {
            lock(&self.pool).push(conn);
        }
    }

    /// Opens a connection and says hello.
    fn connect(&self) -> Result<Conn> {
        let stream = match &self.config.remote {
            Some(remote) => match remote.connect(self.config.timeout) {
                Ok(s) => Link::Tls(Box::new(BufReader::new(s))),
                Err(e) => {
                    log::warn!("agent at {remote} unreachable: {e}");
                    self.note_reachable(false);
                    return Err(Error::AgentUnreachable);
                }
            },
            None => Link::Unix(BufReader::new(self.connect_socket()?)),
        };
        self.hello(Conn {
            stream,
            buf: Vec::new(),
            instance: 0,
        })
    }

    /// Where the agent is, for the log.
    fn agent_at(&self) -> String {
        match &self.config.remote {
            Some(remote) => remote.to_string(),
            None => self.config.socket.display().to_string(),
        }
    }

    /// Connects to the agent's socket and checks who serves it.
    fn connect_socket(&self) -> Result<UnixStream> {
        let unreachable = |what: &str, e: &dyn std::fmt::Display| {
            log::debug!(
                "agent at {} unreachable ({what}): {e}",
                self.config.socket.display()
            );
            self.note_reachable(false);
            Error::AgentUnreachable
        };
        let stream =
            UnixStream::connect(&self.config.socket).map_err(|e| unreachable("connect", &e))?;
        // Whoever listens on the path gets our PINs: it must be the agent.
        let agent_uid =
            nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
                .map(|c| c.uid())
                .map_err(|e| unreachable("peer credentials", &e))?;
        if !self.config.agent_uids.contains(&agent_uid) {
            log::error!(
                "{} is served by uid {agent_uid}, not by a trusted agent user ({:?}; set KEYWARD_AGENT_UID): nothing sent",
                self.config.socket.display(),
                self.config.agent_uids
            );
            return Err(unreachable("peer credentials", &"untrusted agent user"));
        }
        let timeout = Some(self.config.timeout);
        stream
            .set_read_timeout(timeout)
            .and_then(|()| stream.set_write_timeout(timeout))
            .map_err(|e| unreachable("socket options", &e))?;
        Ok(stream)
    }

    /// Says hello on a fresh connection.
    fn hello(&self, mut conn: Conn) -> Result<Conn> {
        let unreachable = |what: &str, e: &dyn std::fmt::Display| {
            log::debug!("agent at {} unreachable ({what}): {e}", self.agent_at());
            self.note_reachable(false);
            Error::AgentUnreachable
        };
        let hello = Request::Hello {
            versions: APP_VERSIONS,
        };
        let problem = match conn.round_trip(&hello, Duration::ZERO) {
            Ok(Response::Hello(reply)) if APP_VERSIONS.contains(reply.version) => {
                conn.instance = reply.instance;
                self.adopt_instance(reply.instance);
                return Ok(conn);
            }
            Ok(Response::Hello(reply)) => format!(
                "keyward-agent {} answered with application protocol {}, which this module \
                 (speaking {APP_VERSIONS}) did not offer",
                reply.agent_version, reply.version
            ),
            Ok(Response::NoCommonVersion(refusal)) => refusal.mismatch(APP_VERSIONS).explain(
                "application",
                "this module",
                &format!("keyward-agent {}", refusal.agent_version),
            ),
            // The agent answers a peer it does not admit with an error to
            // its `Hello`: no token, and the slot says why.
            Ok(Response::Err(rv)) => {
                log::debug!(
                    "agent at {} refused this process (CK_RV {rv:#x}); see the agent's log",
                    self.agent_at()
                );
                self.reachable.store(REFUSED, Ordering::Release);
                return Err(Error::AgentUnreachable);
            }
            Ok(_) => return Err(unreachable("hello", &"unexpected answer")),
            Err(e) if peer_gone(&e) => format!(
                "the agent closed the connection without answering the hello: an agent older \
                 than application protocol {} does so (it speaks only the combined protocol \
                 {}); if this persists, upgrade keyward-agent",
                APP_VERSIONS.min,
                keyward_protocol::version::LEGACY_VERSION
            ),
            Err(e) if self.config.remote.is_some() => {
                // A refused handshake (TLS 1.3: the agent's verdict on our
                // certificate) shows here.
                log::warn!("agent at {}: {e}", self.agent_at());
                return Err(unreachable("hello", &e));
            }
            Err(e) => return Err(unreachable("hello", &e)),
        };
        let at = self.agent_at();
        if self.version_logged.swap(true, Ordering::AcqRel) {
            log::debug!("agent at {at}: {problem}");
        } else {
            log::error!("agent at {at}: {problem}; the slot shows no token");
        }
        Err(unreachable("hello", &"no common protocol version"))
    }

    /// Records the agent run; a different one than before means the agent
    /// restarted and every session and pooled connection is gone.
    fn adopt_instance(&self, instance: u64) {
        let mut known = lock(&self.instance);
        match *known {
            Some(old) if old == instance => return,
            Some(_) => log::warn!("agent restarted: the sessions of its previous run are gone"),
            None => {}
        }
        *known = Some(instance);
        drop(known);
        self.sessions.clear();
        lock(&self.pool).retain(|c| c.instance == instance);
    }

    /// The agent run the module currently knows.
    #[cfg(test)]
    pub(crate) fn known_instance(&self) -> Option<u64> {
        *lock(&self.instance)
    }

    /// `C_Finalize`: forget the sessions and close every idle connection.
    fn shut_down(&self) {
        self.finalized.store(true, Ordering::Release);
        self.sessions.clear();
        lock(&self.pool).clear();
    }

    /// In a forked child: close the inherited sockets without using them.
    /// A lock some parent thread held at fork time stays held for ever in
    /// the child, so only what can be taken right now is closed; the rest is
    /// left alone rather than risk a deadlock.
    fn abandon(&self) {
        self.finalized.store(true, Ordering::Release);
        if let Ok(mut pool) = self.pool.try_lock() {
            // Dropping a UnixStream only closes this process's descriptor.
            pool.clear();
        }
    }
}

/// The module of this process, if initialised.
static STATE: Mutex<Option<Arc<Module>>> = Mutex::new(None);

/// The initialised module, or `CKR_CRYPTOKI_NOT_INITIALIZED` (also in a
/// forked child that has not called `C_Initialize`).
pub(crate) fn current() -> Result<Arc<Module>> {
    let m = lock(&STATE).clone().ok_or(Error::NotInitialized)?;
    if m.pid != std::process::id() {
        return Err(Error::NotInitialized);
    }
    Ok(m)
}

/// `C_Initialize` after its arguments were checked.
pub(crate) fn initialize() -> Result<()> {
    let mut state = lock(&STATE);
    let mut config = None;
    if let Some(old) = state.take() {
        if old.pid == std::process::id() {
            *state = Some(old);
            return Err(Error::AlreadyInitialized);
        }
        log::debug!("initialising in a forked child: abandoning the parent's connections");
        config = Some(Config::from_env_after(Some(&old.config)));
        old.abandon();
    }
    let config = config.unwrap_or_else(Config::from_env);
    *state = Some(Arc::new(Module::new(config)));
    Ok(())
}

/// `C_Finalize` after its argument was checked.
pub(crate) fn finalize() -> Result<()> {
    let module = {
        let mut state = lock(&STATE);
        match state.as_ref() {
            Some(m) if m.pid == std::process::id() => state.take(),
            _ => return Err(Error::NotInitialized),
        }
    };
    if let Some(m) = module {
        m.shut_down();
    }
    Ok(())
}

/// Fails with `CKR_DEVICE_ERROR` (and a log line) when the agent answered
/// with a variant that does not fit the call.
macro_rules! expect_answer {
    ($resp:expr, $pat:pat => $out:expr) => {
        match $resp {
            $pat => Ok($out),
            _ => {
                log::error!(
                    "unexpected answer from the agent at {}:{}",
                    file!(),
                    line!()
                );
                Err($crate::error::Error::UnexpectedAnswer)
            }
        }
    };
}
pub(crate) use expect_answer;

#[cfg(test)]
mod agent_user_tests {
    use super::{agent_uids, agent_uids_with};

    #[test]
    fn the_trusted_agent_users_come_from_the_environment() {
        let own = nix::unistd::geteuid().as_raw();
        let nobody = |_: &str| None;
        assert_eq!(agent_uids_with(None, nobody), vec![0, own]);
        assert_eq!(agent_uids_with(Some("  "), nobody), vec![0, own]);
        assert_eq!(agent_uids(Some("4242")), vec![4242]);
        assert_eq!(agent_uids(Some("root, 7")), vec![0, 7]);
        // A name that does not resolve trusts nobody by it.
        assert_eq!(agent_uids(Some("no-such-user-keyward")), Vec::<u32>::new());
    }

    #[test]
    fn an_installed_agents_system_user_is_trusted_by_default_only() {
        let own = nix::unistd::geteuid().as_raw();
        let installed = |name: &str| (name == "keyward").then_some(998);
        assert_eq!(agent_uids_with(None, installed), vec![0, own, 998]);
        // Named explicitly, only what is named.
        assert_eq!(agent_uids_with(Some("4242"), installed), vec![4242]);
        assert_eq!(agent_uids_with(Some("keyward"), installed), vec![998]);
        // The agent's user is this process's own: listed once.
        let same = move |name: &str| (name == "keyward").then_some(own);
        assert_eq!(agent_uids_with(None, same), vec![0, own]);
    }
}
