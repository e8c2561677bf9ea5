//! The listeners: the application socket and the admin socket, one thread
//! per connection, blocking I/O, per-connection reused buffers.
//!
//! A connection that sends a bad frame (bad magic, another version, too
//! large, undecodable) is logged with its peer and closed; nothing else is
//! affected. Shutdown ([`Server::shutdown`]) stops accepting, closes every
//! connection, waits (bounded) for their threads, and removes the sockets.

pub mod admission;
pub mod identity;
pub mod remote;
pub mod sockets;

use std::collections::HashMap;
use std::fs;
use std::io::BufReader;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use keyward_protocol::admin::{AdminRequest, AdminResponse};
use keyward_protocol::frame::{read_message_within, write_message, Bounds, FrameError};
use keyward_protocol::version::{legacy_hello, Mismatch, VersionRange};
use keyward_protocol::{Request, Response, APP_VERSIONS, MAX_FRAME_LEN};

use crate::agent::Agent;
use crate::listener::admission::{Admission, Limits, Refusals, Ticket, REFUSAL_EVERY};
use crate::listener::identity::{CredStream, Peer};
use crate::metrics::{admin_request_name, Metrics};
use sockets::{Bound, SocketSpec};

/// How long shutdown waits for connection threads to finish their call.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection's read timeout: an idle connection wakes this often (and
/// goes on waiting); a frame that stops arriving for this long is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a peer may take to send one whole frame, from its first byte.
const FRAME_TIME: Duration = Duration::from_secs(30);
/// How long an answer may wait for a peer that does not read it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// What a peer may send before its `Hello` is answered: a `Hello` is a few
/// bytes, so nobody the agent has not admitted makes it allocate more.
const HELLO_BOUNDS: Bounds = Bounds {
    max_len: 1024,
    frame_time: Some(Duration::from_secs(5)),
};
/// Every later frame of an admitted peer.
pub(crate) const FRAME_BOUNDS: Bounds = Bounds {
    max_len: MAX_FRAME_LEN,
    frame_time: Some(FRAME_TIME),
};
/// Refused peers waiting for their refusal to be written, at most; beyond,
/// they are closed at once.
const REFUSAL_QUEUE: usize = 64;
/// Threads that answer refused peers (each answer takes at most
/// [`REFUSAL_READ`]).
const REFUSAL_THREADS: usize = 2;
/// How long a refused peer gets to send its `Hello`.
const REFUSAL_READ: Duration = Duration::from_millis(200);
/// How often the socket files are checked (removed or replaced ones are
/// bound again).
const SOCKET_CHECK: Duration = Duration::from_secs(1);

/// Live connections, so that shutdown can close them.
#[derive(Debug, Default)]
struct Connections {
    open: Mutex<HashMap<u64, OwnedFd>>,
    next: AtomicU64,
    done: Condvar,
}

impl Connections {
    fn add(&self, s: &impl AsFd) -> Option<u64> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let clone = s.as_fd().try_clone_to_owned().ok()?;
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, clone);
        Some(id)
    }

    fn remove(&self, id: u64) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.remove(&id);
        if open.is_empty() {
            self.done.notify_all();
        }
    }

    /// Shuts every connection down and waits until their threads are gone.
    fn close_all(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        for s in open.values() {
            let _ = nix::sys::socket::shutdown(s.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        }
        while !open.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                log::warn!("{} connections still busy at shutdown", open.len());
                return;
            }
            open = self
                .done
                .wait_timeout(open, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// The two listeners and the agent behind them.
#[derive(Debug)]
pub struct Server {
    agent: Arc<Agent>,
    socket: SocketSpec,
    admin_socket: SocketSpec,
    limits: Limits,
    stopping: AtomicBool,
    /// Copies of the listeners, for [`Server::shutdown`] to wake their
    /// accept loops even when the socket files are gone.
    listeners: Mutex<Vec<OwnedFd>>,
    /// The remote (mutual TLS) listener, until [`Server::run`] serves it.
    remote: Mutex<Option<remote::RemoteListener>>,
    /// Accept loops started for rebound sockets, joined at shutdown.
    accept_threads: Mutex<Vec<thread::JoinHandle<()>>>,
    conns: Connections,
    app_admission: Arc<Admission>,
    admin_admission: Arc<Admission>,
    refusals: Refusals,
    /// Where refused peers wait for their refusal (bounded).
    refuse_queue: Mutex<Option<SyncSender<Refused>>>,
    /// Which connection was active last (see [`Activity`]).
    activity: Activity,
    /// Request counters and latencies (served when `[metrics]` is on).
    metrics: Arc<Metrics>,
    /// What happened to the socket files (removed, replaced, bound again),
    /// for `keyward status`.
    socket_events: Mutex<Vec<String>>,
    /// The agent's own uid.
    uid: u32,
}

/// A refused connection on its way to the refusal threads.
struct Refused {
    stream: UnixStream,
    peer: Peer,
    why: &'static str,
    /// On the admin socket: answered in the admin protocol.
    admin: bool,
}

/// How long a connection that just answered polls for its client's next
/// request before it sleeps in `read`. A client that calls in a loop (a
/// server signing handshakes) then finds the agent awake, which saves a
/// wake-up of several microseconds on a virtual machine; an idle client
/// costs at most this much CPU per request.
const POLL_NEXT: Duration = Duration::from_micros(50);

/// Which connection handled a request last, and when: a connection polls
/// only while no other connection has been active for [`QUIET`], so that
/// pollers never take the CPU that other clients' requests need.
#[derive(Debug)]
struct Activity {
    epoch: Instant,
    last_conn: AtomicU64,
    last_at_us: AtomicU64,
}

/// See [`Activity`].
const QUIET: Duration = Duration::from_millis(1);

impl Activity {
    fn new() -> Self {
        Activity {
            epoch: Instant::now(),
            last_conn: AtomicU64::new(0),
            last_at_us: AtomicU64::new(0),
        }
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Connection `conn` starts handling a request at `at`.
    fn note(&self, conn: u64, at: Instant) {
        self.last_conn.store(conn, Ordering::Relaxed);
        let us = at.saturating_duration_since(self.epoch).as_micros() as u64;
        self.last_at_us.store(us, Ordering::Relaxed);
    }

    /// Whether another connection than `conn` was active lately.
    fn others_active(&self, conn: u64) -> bool {
        self.last_conn.load(Ordering::Relaxed) != conn
            && self
                .now_us()
                .saturating_sub(self.last_at_us.load(Ordering::Relaxed))
                < QUIET.as_micros() as u64
    }

    /// Polls `stream` of connection `conn` for up to [`POLL_NEXT`], while
    /// no other connection is active.
    fn poll_next(&self, stream: &UnixStream, conn: u64) {
        use nix::sys::socket::{recv, MsgFlags};
        let start = Instant::now();
        let mut probe = [0u8; 1];
        while start.elapsed() < POLL_NEXT && !self.others_active(conn) {
            match recv(
                stream.as_raw_fd(),
                &mut probe,
                MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
            ) {
                Err(nix::errno::Errno::EAGAIN) => std::hint::spin_loop(),
                _ => return,
            }
        }
    }
}

impl Server {
    /// A server for `agent` on the two sockets (bound by [`Server::run`]'s
    /// caller with [`sockets::bind`], and again by the server when their
    /// files are removed).
    pub fn new(
        agent: Arc<Agent>,
        socket: SocketSpec,
        admin_socket: SocketSpec,
        limits: Limits,
    ) -> Arc<Server> {
        Arc::new(Server {
            agent,
            socket,
            admin_socket,
            app_admission: Admission::new(limits.app),
            admin_admission: Admission::new(limits.admin),
            limits,
            stopping: AtomicBool::new(false),
            listeners: Mutex::new(Vec::new()),
            remote: Mutex::new(None),
            accept_threads: Mutex::new(Vec::new()),
            conns: Connections::default(),
            refusals: Refusals::default(),
            refuse_queue: Mutex::new(None),
            activity: Activity::new(),
            metrics: Arc::new(Metrics::new()),
            socket_events: Mutex::new(Vec::new()),
            uid: nix::unistd::geteuid().as_raw(),
        })
    }

    /// Serves remote clients on `remote` too (`[remote]`), from
    /// [`Server::run`] on.
    pub fn set_remote(&self, remote: remote::RemoteListener) {
        *lock(&self.remote) = Some(remote);
    }

    /// The request counters, for the metrics endpoint.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// What happened to the socket files since the start (removed or
    /// replaced, and bound again), oldest first.
    pub fn socket_events(&self) -> Vec<String> {
        lock(&self.socket_events).clone()
    }

    /// Serves both listeners until [`Server::shutdown`]; then closes every
    /// connection, waits for them (bounded), closes every client's backend
    /// sessions and removes the socket files.
    pub fn run(self: &Arc<Server>, app: Bound, admin: Bound) {
        if self.stopping.load(Ordering::SeqCst) {
            return;
        }
        let refusers = self.start_refusers();
        let watch = {
            let me = self.clone();
            let files = (app.file, admin.file);
            thread::Builder::new()
                .name("socket-watch".into())
                .spawn(move || me.watch_sockets(files))
        };
        let admin_thread = self.spawn_accept(admin.listener, true);
        let app_thread = self.spawn_accept(app.listener, false);
        let remote_thread = self.spawn_remote();
        if self.stopping.load(Ordering::SeqCst) {
            // Asked to stop before the loops ran.
            self.wake_listeners();
        }
        for t in [app_thread, admin_thread, remote_thread]
            .into_iter()
            .flatten()
        {
            let _ = t.join();
        }
        if let Ok(w) = watch {
            let _ = w.join();
        }
        // Accept loops of rebound sockets.
        let more: Vec<_> = lock(&self.accept_threads).drain(..).collect();
        for t in more {
            let _ = t.join();
        }
        lock(&self.refuse_queue).take();
        for t in refusers {
            let _ = t.join();
        }
        for r in self.refusals.drain() {
            self.agent.audit_refused_peer(&r);
        }
        let _ = fs::remove_file(&self.socket.path);
        let _ = fs::remove_file(&self.admin_socket.path);
        self.conns.close_all(DRAIN_TIMEOUT);
        self.agent.close_all();
        log::info!("stopped");
    }

    /// Asks [`Server::run`] to return: sets the flag and wakes every accept
    /// loop, by shutting their listening sockets down (`accept` then fails
    /// at once), and with a connection of our own in case that did not take.
    /// Works when someone removed the socket files too.
    pub fn shutdown(&self) {
        if !self.stopping.swap(true, Ordering::SeqCst) {
            self.wake_listeners();
            let _ = UnixStream::connect(&self.socket.path);
            let _ = UnixStream::connect(&self.admin_socket.path);
        }
    }

    fn wake_listeners(&self) {
        for l in lock(&self.listeners).iter() {
            let _ = nix::sys::socket::shutdown(l.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        }
    }

    /// Starts an accept loop on `listener`, keeping a copy of it for
    /// shutdown.
    fn spawn_accept(
        self: &Arc<Server>,
        listener: UnixListener,
        admin: bool,
    ) -> Option<thread::JoinHandle<()>> {
        match listener.try_clone() {
            Ok(c) => lock(&self.listeners).push(c.into()),
            Err(e) => log::warn!("cannot keep a listener for shutdown: {e}"),
        }
        let me = self.clone();
        let name = if admin { "admin-accept" } else { "accept" };
        match thread::Builder::new()
            .name(name.into())
            .spawn(move || me.accept(listener, admin))
        {
            Ok(t) => Some(t),
            Err(e) => {
                log::error!("cannot start the {name} thread: {e}");
                None
            }
        }
    }

    /// Checks the socket files every [`SOCKET_CHECK`]: one that was removed
    /// or replaced (by someone who could write its directory) is bound
    /// again, with a new accept loop; the old listener is shut down.
    fn watch_sockets(
        self: Arc<Server>,
        mut files: (
            Option<crate::listener::identity::FileId>,
            Option<crate::listener::identity::FileId>,
        ),
    ) {
        while !self.stopping.load(Ordering::SeqCst) {
            thread::sleep(SOCKET_CHECK);
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            for admin in [false, true] {
                let (spec, file) = if admin {
                    (&self.admin_socket, &mut files.1)
                } else {
                    (&self.socket, &mut files.0)
                };
                if sockets::still_bound(&spec.path, *file) {
                    continue;
                }
                let what = if spec.path.exists() {
                    "replaced"
                } else {
                    "removed"
                };
                match sockets::rebind(spec) {
                    Ok(b) => {
                        *file = b.file;
                        let note = format!(
                            "{} was {what}; bound again at unix time {}",
                            spec.path.display(),
                            SystemTime::now()
                                .duration_since(SystemTime::UNIX_EPOCH)
                                .map_or(0, |d| d.as_secs())
                        );
                        log::warn!("{note}");
                        self.agent.audit_agent("rebind", &note);
                        let mut events = lock(&self.socket_events);
                        events.push(note);
                        let excess = events.len().saturating_sub(32);
                        events.drain(..excess);
                        drop(events);
                        if let Some(t) = self.spawn_accept(b.listener, admin) {
                            lock(&self.accept_threads).push(t);
                        }
                    }
                    // Tried again at the next check; logged once until it works.
                    Err(e) if file.is_some() => {
                        log::error!("{}: cannot bind the socket again: {e}", spec.path.display());
                        *file = None;
                    }
                    Err(_) => {}
                }
            }
        }
    }

    fn accept(self: &Arc<Server>, listener: UnixListener, admin: bool) {
        let mut failures = AcceptFailures::default();
        for stream in listener.incoming() {
            if self.stopping.load(Ordering::SeqCst) {
                break;
            }
            let Some(stream) = failures.take(stream, "") else {
                continue;
            };
            let peer = match Peer::of(&stream) {
                Ok(p) => p,
                Err(e) => {
                    log::warn!("cannot identify a peer, closing: {e}");
                    continue;
                }
            };
            if admin {
                self.take_admin(stream, peer);
            } else {
                self.take_app(stream, peer);
            }
        }
    }

    /// An application socket peer: admitted and given a thread, or handed
    /// to the refusal threads. Nothing is read from it here.
    fn take_app(self: &Arc<Server>, stream: UnixStream, peer: Peer) {
        let application = if peer.foreign_mounts && !self.limits.foreign_mounts {
            return self.refuse(
                stream,
                peer,
                "the peer is in another mount namespace",
                false,
            );
        } else {
            self.agent.application_of(&peer)
        };
        let Some(application) = application else {
            let why = no_application(peer.exe.is_some());
            return self.refuse(stream, peer, why, false);
        };
        let ticket = match self.app_admission.enter(peer.uid) {
            Ok(t) => t,
            Err(full) => return self.over_limit(&peer, full),
        };
        self.spawn_conn(stream, peer, ticket, move |me, stream, peer, id| {
            me.serve_app(stream, peer, id, application)
        });
    }

    /// An admin socket peer: root, the agent's own user, or a member of the
    /// admin socket's group.
    fn take_admin(self: &Arc<Server>, stream: UnixStream, peer: Peer) {
        if !self.admin_allowed(&peer) {
            return self.refuse(
                stream,
                peer,
                "not root, the agent's user or in the admin group",
                true,
            );
        }
        let ticket = match self.admin_admission.enter(peer.uid) {
            Ok(t) => t,
            Err(full) => return self.over_limit(&peer, full),
        };
        self.spawn_conn(stream, peer, ticket, |me, stream, peer, _| {
            me.serve_admin(stream, peer)
        });
    }

    fn admin_allowed(&self, peer: &Peer) -> bool {
        if peer.uid == 0 || peer.uid == self.uid {
            return true;
        }
        let group = self
            .limits
            .admin_gid
            .unwrap_or_else(|| nix::unistd::getegid().as_raw());
        peer.gid == group || crate::listener::identity::groups_of(peer.key.pid).contains(&group)
    }

    fn spawn_conn(
        self: &Arc<Server>,
        stream: UnixStream,
        peer: Peer,
        ticket: Ticket,
        serve: impl FnOnce(&Server, UnixStream, &Peer, u64) + Send + 'static,
    ) {
        if let Err(e) = stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(WRITE_TIMEOUT)))
        {
            log::warn!("{peer}: cannot set socket timeouts, closing: {e}");
            return;
        }
        let Some(id) = self.conns.add(&stream) else {
            return;
        };
        let me = self.clone();
        let spawned = thread::Builder::new()
            .name(format!("conn-{}", peer.key.pid))
            .spawn(move || {
                serve(&me, stream, &peer, id);
                me.conns.remove(id);
                drop(ticket);
            });
        if let Err(e) = spawned {
            log::warn!("cannot start a connection thread: {e}");
            self.conns.remove(id);
        }
    }

    /// A peer over its connection cap: closed at once, the refusal merged.
    fn over_limit(&self, peer: &Peer, full: crate::listener::admission::Full) {
        self.metrics.peer_refused();
        if let Some(r) = self.refusals.note(peer, "connection limit") {
            log::warn!(
                "{peer}: refused: {full} ({} refusals since the last report)",
                r.count
            );
            self.agent.audit_refused_peer(&r);
        }
    }

    /// A peer the agent does not serve: its `Hello` gets `CKR_TOKEN_NOT_PRESENT`
    /// from a refusal thread (so the module shows no token), or, when they
    /// are busy, the connection is closed at once.
    fn refuse(&self, stream: UnixStream, peer: Peer, why: &'static str, admin: bool) {
        self.metrics.peer_refused();
        if let Some(r) = self.refusals.note(&peer, why) {
            log::warn!(
                "{peer}: refused: {why} ({} refusals since the last report)",
                r.count
            );
            self.agent.audit_refused_peer(&r);
        }
        let queue = lock(&self.refuse_queue).clone();
        if let Some(q) = queue {
            // Full: the connection is closed at once (dropped with the error).
            let refused = Refused {
                stream,
                peer,
                why,
                admin,
            };
            if let Err(TrySendError::Full(_)) = q.try_send(refused) {
                log::debug!("refusal threads busy: closing a refused connection at once");
            }
        }
    }

    fn start_refusers(self: &Arc<Server>) -> Vec<thread::JoinHandle<()>> {
        let (tx, rx) = sync_channel::<Refused>(REFUSAL_QUEUE);
        *lock(&self.refuse_queue) = Some(tx);
        let rx = Arc::new(Mutex::new(rx));
        (0..REFUSAL_THREADS)
            .filter_map(|i| {
                let (me, rx) = (self.clone(), rx.clone());
                thread::Builder::new()
                    .name(format!("refuse-{i}"))
                    .spawn(move || me.refuser(&rx))
                    .map_err(|e| log::error!("cannot start a refusal thread: {e}"))
                    .ok()
            })
            .collect()
    }

    /// Answers refused peers' `Hello`s, and reports merged refusals that are
    /// due, until the queue closes.
    fn refuser(&self, rx: &Mutex<Receiver<Refused>>) {
        loop {
            let next = lock(rx).recv_timeout(REFUSAL_EVERY / 4);
            match next {
                Ok(r) => answer_refused(r),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            for r in self.refusals.due() {
                log::warn!("{}: refused {} more times: {}", r.peer, r.count, r.why);
                self.agent.audit_refused_peer(&r);
            }
        }
    }

    fn serve_app(&self, stream: UnixStream, peer: &Peer, conn: u64, application: String) {
        let mut reader = BufReader::with_capacity(16 << 10, CredStream::new(&stream, peer.key.pid));
        let mut writer = &stream;
        let (mut rbuf, mut wbuf) = (Vec::new(), Vec::new());
        match read_message_within::<_, Request>(&mut reader, &mut rbuf, HELLO_BOUNDS) {
            _ if self.intruder(peer, reader.get_ref()) => return,
            Ok(Request::Hello { versions }) => {
                let answer = self.agent.hello(versions);
                if write_message(&mut writer, &answer, &mut wbuf).is_err() {
                    return;
                }
                if let Err(m) = APP_VERSIONS.pick(versions) {
                    log::warn!("{peer}: {}; closing", explain_app(&m));
                    return;
                }
            }
            Ok(_) => {
                log::warn!("{peer}: first message was not Hello, closing");
                return;
            }
            // A module from before negotiated versions: answered in its
            // own form with this agent's version, so that it logs the
            // mismatch rather than a decode error.
            Err(FrameError::Decode(_)) if legacy_hello(&rbuf).is_some() => {
                let old = VersionRange::only(legacy_hello(&rbuf).unwrap_or_default());
                let reply = Response::Hello(self.agent.hello_reply(APP_VERSIONS.max));
                let _ = write_message(&mut writer, &reply, &mut wbuf);
                let m = Mismatch {
                    ours: APP_VERSIONS,
                    theirs: old,
                };
                log::warn!("{peer}: {}; closing", explain_app(&m));
                return;
            }
            Err(e) => {
                report(peer, &e);
                return;
            }
        }
        log::debug!("{peer}: connected");
        let _counted = self.metrics.connection();
        let client = self.agent.connect(peer.clone(), application);
        loop {
            if reader.buffer().is_empty() {
                self.activity.poll_next(&stream, conn);
            }
            let req = match read_message_within::<_, Request>(&mut reader, &mut rbuf, FRAME_BOUNDS)
            {
                _ if self.intruder(peer, reader.get_ref()) => break,
                Ok(r) => r,
                Err(FrameError::Idle) => continue,
                Err(e) => {
                    report(peer, &e);
                    break;
                }
            };
            // One clock read here and one after: the latency, and the
            // activity note, from the same instant.
            let started = Instant::now();
            self.activity.note(conn, started);
            let call = req.call();
            let resp = self.agent.handle(&client, req);
            // Counted before the answer leaves, so a client that has its
            // answer finds it counted.
            self.metrics.record(conn, call, &resp, started.elapsed());
            if let Err(e) = write_message(&mut writer, &resp, &mut wbuf) {
                report(peer, &e);
                break;
            }
            // Keep a one-off huge message from pinning memory for the
            // connection's life.
            if rbuf.capacity() > 1 << 20 {
                rbuf = Vec::new();
            }
            if wbuf.capacity() > 1 << 20 {
                wbuf = Vec::new();
            }
        }
        self.agent.disconnect(&client);
    }

    /// Whether bytes from another process than `peer` arrived on its
    /// connection (a forked child, a passed descriptor): logged, and the
    /// connection is served no more.
    fn intruder(&self, peer: &Peer, stream: &CredStream<'_>) -> bool {
        let Some(pid) = stream.intruder() else {
            return false;
        };
        let sender = if pid == 0 {
            "a sender without credentials".to_owned()
        } else {
            format!("pid {pid}")
        };
        log::warn!("{peer}: a message from {sender} on this process's connection; closing it");
        if let Some(r) = self
            .refusals
            .note(peer, "a message from another process on its connection")
        {
            self.agent.audit_refused_peer(&r);
        }
        true
    }

    fn serve_admin(&self, stream: UnixStream, peer: &Peer) {
        let mut reader = BufReader::new(CredStream::new(&stream, peer.key.pid));
        let mut writer = &stream;
        let (mut rbuf, mut wbuf) = (Vec::new(), Vec::new());
        // The hello: the admin-protocol version, agreed once.
        let first = read_message_within::<_, AdminRequest>(&mut reader, &mut rbuf, FRAME_BOUNDS);
        let answer = match first {
            _ if self.intruder(peer, reader.get_ref()) => return,
            Ok(AdminRequest::Hello { versions }) => match admin_hello(versions) {
                (answer, None) => answer,
                (answer, Some(m)) => {
                    let why = m.explain("admin", "this agent", "the keyward command");
                    log::warn!("admin {peer}: {why}; closing");
                    let _ = write_message(&mut writer, &answer, &mut wbuf);
                    return;
                }
            },
            // A keyward from before negotiated versions sends its request
            // at once; it shows an `Err` text.
            Ok(_) | Err(FrameError::Decode(_)) => {
                log::warn!(
                    "admin {peer}: a request without a version hello (an older keyward); closing"
                );
                let text = keyward_protocol::admin::hello_first(env!("CARGO_PKG_VERSION"));
                let _ = write_message(&mut writer, &AdminResponse::Err(text), &mut wbuf);
                return;
            }
            Err(e) => {
                report(peer, &e);
                return;
            }
        };
        if let Err(e) = write_message(&mut writer, &answer, &mut wbuf) {
            report(peer, &e);
            return;
        }
        loop {
            let req = match read_message_within::<_, AdminRequest>(
                &mut reader,
                &mut rbuf,
                FRAME_BOUNDS,
            ) {
                _ if self.intruder(peer, reader.get_ref()) => return,
                Ok(r) => r,
                Err(FrameError::Idle) => continue,
                Err(e) => {
                    report(peer, &e);
                    return;
                }
            };
            log::debug!("admin {peer}: {}: {}", req.name(), req.describe());
            let name = admin_request_name(&req);
            let resp = answer_admin(&self.agent, peer, req, |st| {
                st.socket_events = self.socket_events();
                st.connections = self.app_admission.open() as u64;
            });
            self.metrics.record_admin(name, &resp);
            if let Err(e) = write_message(&mut writer, &resp, &mut wbuf) {
                report(peer, &e);
                return;
            }
        }
    }
}

/// The answer to one request of an administrator the admin socket
/// admitted (after the version hello): the policy's roster refuses it (no
/// roster: everyone the admin socket admits), or the part that owns it
/// answers. `status` adds to a `Status` what only the server knows.
pub(crate) fn answer_admin(
    agent: &Agent,
    peer: &Peer,
    req: AdminRequest,
    status: impl FnOnce(&mut keyward_protocol::admin::Status),
) -> AdminResponse {
    match (agent.refuse_admin(peer, &req), req) {
        (Some(refusal), _) => refusal,
        (None, AdminRequest::Hello { versions }) => admin_hello(versions).0,
        (None, AdminRequest::Status) => {
            let mut st = agent.status();
            status(&mut st);
            AdminResponse::Status(Box::new(st))
        }
        (None, AdminRequest::Key(k)) => agent.lifecycle.key_request(peer, k),
        (None, AdminRequest::Audit(a)) => agent.audit_request(peer, a),
        (None, AdminRequest::Report(r)) => agent.lifecycle.report_request(peer, r),
        (None, AdminRequest::DryRun(k)) => agent.lifecycle.dry_run(peer, k),
    }
}

/// The answer to an admin `Hello`, and the mismatch when there is one.
fn admin_hello(theirs: VersionRange) -> (AdminResponse, Option<Mismatch>) {
    keyward_protocol::admin::answer_hello(theirs, env!("CARGO_PKG_VERSION"))
}

/// Why a peer no application matches is refused: when its executable
/// could not be read, the log says why an `exe` entry cannot match it.
fn no_application(exe_known: bool) -> &'static str {
    if exe_known {
        "no application of the policy matches this peer"
    } else {
        "no application of the policy matches this peer (its executable is unreadable: \
         reading another user's /proc/PID/exe needs CAP_SYS_PTRACE, so `exe` entries \
         cannot match it)"
    }
}

/// An application-protocol mismatch, for the log.
fn explain_app(m: &Mismatch) -> String {
    m.explain("application", "this agent", "the module")
}

/// Reads a refused peer's first frame (bounded in size and time) and, when
/// it is a `Hello`, answers `CKR_TOKEN_NOT_PRESENT`; on the admin socket,
/// any first frame gets an error text that says why.
fn answer_refused(r: Refused) {
    let Refused {
        stream,
        peer,
        why,
        admin,
    } = r;
    if stream.set_read_timeout(Some(REFUSAL_READ)).is_err()
        || stream.set_write_timeout(Some(REFUSAL_READ)).is_err()
    {
        return;
    }
    let mut buf = Vec::new();
    let bounds = Bounds {
        frame_time: Some(REFUSAL_READ),
        ..HELLO_BOUNDS
    };
    if admin {
        match read_message_within::<_, AdminRequest>(&mut &stream, &mut buf, bounds) {
            Ok(_) | Err(FrameError::Decode(_)) => {
                log::debug!("admin {peer}: answering its first request with a refusal ({why})");
                let refusal =
                    AdminResponse::Err(format!("keyward-agent refused this connection: {why}"));
                let _ = write_message(&mut &stream, &refusal, &mut buf);
            }
            Err(_) => {}
        }
        return;
    }
    if let Ok(Request::Hello { .. }) = read_message_within(&mut &stream, &mut buf, bounds) {
        log::debug!("{peer}: answering its Hello with no token ({why})");
        let refusal = Response::Err(cryptoki_sys::CKR_TOKEN_NOT_PRESENT);
        let _ = write_message(&mut &stream, &refusal, &mut buf);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Logs why a connection ends: quietly for a normal close, as a warning
/// for a bad frame.
fn report(peer: &Peer, e: &FrameError) {
    match e {
        FrameError::Closed => {}
        FrameError::Io(io) => log::debug!("{peer}: {io}"),
        _ => log::warn!("{peer}: {e}; closing the connection"),
    }
}

/// A streak of failed accepts (out of descriptors, say): logged once when
/// it starts and once when it ends, with its length; each failure waits a
/// moment so that the loop does not spin.
#[derive(Debug, Default)]
pub(crate) struct AcceptFailures {
    failing: u64,
}

impl AcceptFailures {
    /// The accepted stream, or `None` after a failure (counted). `which`
    /// names the listener in the log (`"remote "`, or empty).
    pub(crate) fn take<S>(&mut self, accepted: std::io::Result<S>, which: &str) -> Option<S> {
        match accepted {
            Ok(s) => {
                if self.failing > 0 {
                    log::warn!("{which}accept works again after {} failures", self.failing);
                    self.failing = 0;
                }
                Some(s)
            }
            Err(e) => {
                if self.failing == 0 {
                    log::error!("{which}accept failed: {e}; serving the open connections only");
                }
                self.failing += 1;
                thread::sleep(Duration::from_millis(50));
                None
            }
        }
    }
}
#[cfg(test)]
mod tests {
    use super::no_application;

    #[test]
    fn a_refusal_says_when_the_executable_was_unreadable() {
        assert_eq!(
            no_application(true),
            "no application of the policy matches this peer"
        );
        let unreadable = no_application(false);
        assert!(unreadable.starts_with("no application of the policy matches this peer"));
        assert!(unreadable.contains("CAP_SYS_PTRACE"), "{unreadable}");
    }
}
