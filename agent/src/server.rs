//! The listeners: the application socket and the admin socket, one thread
//! per connection, blocking I/O, per-connection reused buffers.
//!
//! A connection that sends a bad frame (bad magic, another version, too
//! large, undecodable) is logged with its peer and closed; nothing else is
//! affected. Shutdown ([`Server::shutdown`]) stops accepting, closes every
//! connection, waits (bounded) for their threads, and removes the sockets.

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufReader};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use keyward_protocol::admin::{AdminRequest, AdminResponse};
use keyward_protocol::frame::{read_message, write_message, FrameError};
use keyward_protocol::{Request, Response, PROTOCOL_VERSION};

use crate::agent::Agent;
use crate::identity::Peer;
use crate::metrics::{admin_request_name, Call, Metrics};

/// How long shutdown waits for connection threads to finish their call.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds a Unix socket at `path` with file mode `mode`: creates the parent
/// directory, replaces a stale socket file, refuses to replace a socket
/// that still answers (another agent) or a file that is not a socket.
pub fn bind(path: &Path, mode: u32) -> io::Result<UnixListener> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)?;
    }
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{}: another process answers on this socket", path.display()),
                ));
            }
            fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{}: exists and is not a socket", path.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let l = UnixListener::bind(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(l)
}

/// Live connections, so that shutdown can close them.
#[derive(Debug, Default)]
struct Connections {
    open: Mutex<HashMap<u64, UnixStream>>,
    next: AtomicU64,
    done: Condvar,
}

impl Connections {
    fn add(&self, s: &UnixStream) -> Option<u64> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let clone = s.try_clone().ok()?;
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
            let _ = s.shutdown(std::net::Shutdown::Both);
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
    socket: PathBuf,
    admin_socket: PathBuf,
    stopping: AtomicBool,
    /// Copies of the two listeners, for [`Server::shutdown`] to wake their
    /// accept loops even when the socket files are gone.
    listeners: Mutex<Vec<UnixListener>>,
    conns: Connections,
    /// Which connection was active last (see [`Activity`]).
    activity: Activity,
    /// Request counters and latencies (served when `[metrics]` is on).
    metrics: Arc<Metrics>,
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
        use std::os::fd::AsRawFd;
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
    /// A server for `agent` on the two socket paths (bound by [`Server::run`]'s caller).
    pub fn new(agent: Arc<Agent>, socket: PathBuf, admin_socket: PathBuf) -> Arc<Server> {
        Arc::new(Server {
            agent,
            socket,
            admin_socket,
            stopping: AtomicBool::new(false),
            listeners: Mutex::new(Vec::new()),
            conns: Connections::default(),
            activity: Activity::new(),
            metrics: Arc::new(Metrics::new()),
        })
    }

    /// The request counters, for the metrics endpoint.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Serves both listeners until [`Server::shutdown`]; then closes every
    /// connection, waits for them (bounded), closes every client's backend
    /// sessions and removes the socket files.
    pub fn run(self: &Arc<Server>, app: UnixListener, admin: UnixListener) {
        {
            let mut copies = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
            for l in [&app, &admin] {
                match l.try_clone() {
                    Ok(c) => copies.push(c),
                    Err(e) => log::warn!("cannot keep a listener for shutdown: {e}"),
                }
            }
        }
        if self.stopping.load(Ordering::SeqCst) {
            // Asked to stop before the loops ran.
            self.wake_listeners();
        }
        let me = self.clone();
        let admin_thread = thread::Builder::new()
            .name("admin-accept".into())
            .spawn(move || me.accept(admin, true));
        self.accept(app, false);
        if let Ok(t) = admin_thread {
            let _ = t.join();
        }
        let _ = fs::remove_file(&self.socket);
        let _ = fs::remove_file(&self.admin_socket);
        self.conns.close_all(DRAIN_TIMEOUT);
        self.agent.close_all();
        log::info!("stopped");
    }

    /// Asks [`Server::run`] to return: sets the flag and wakes both accept
    /// loops, by shutting their listening sockets down (`accept` then fails
    /// at once), and with a connection of our own in case that did not take.
    /// Works when someone removed the socket files too.
    pub fn shutdown(&self) {
        if !self.stopping.swap(true, Ordering::SeqCst) {
            self.wake_listeners();
            let _ = UnixStream::connect(&self.socket);
            let _ = UnixStream::connect(&self.admin_socket);
        }
    }

    fn wake_listeners(&self) {
        use std::os::fd::AsRawFd;
        for l in self
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = nix::sys::socket::shutdown(l.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        }
    }

    fn accept(self: &Arc<Server>, listener: UnixListener, admin: bool) {
        for stream in listener.incoming() {
            if self.stopping.load(Ordering::SeqCst) {
                break;
            }
            let stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    log::warn!("accept failed: {e}");
                    // Out of descriptors, for instance: do not spin.
                    thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            let peer = match Peer::of(&stream) {
                Ok(p) => p,
                Err(e) => {
                    log::warn!("cannot identify a peer, closing: {e}");
                    continue;
                }
            };
            let Some(id) = self.conns.add(&stream) else {
                continue;
            };
            let me = self.clone();
            let spawned = thread::Builder::new()
                .name(format!("conn-{}", peer.key.pid))
                .spawn(move || {
                    if admin {
                        me.serve_admin(stream, &peer);
                    } else {
                        me.serve_app(stream, &peer, id);
                    }
                    me.conns.remove(id);
                });
            if let Err(e) = spawned {
                log::warn!("cannot start a connection thread: {e}");
                self.conns.remove(id);
            }
        }
    }

    fn serve_app(&self, stream: UnixStream, peer: &Peer, conn: u64) {
        let mut reader = BufReader::with_capacity(16 << 10, &stream);
        let mut writer = &stream;
        let (mut rbuf, mut wbuf) = (Vec::new(), Vec::new());
        // Who the peer is to the policy, decided once for the connection.
        let application = self.agent.application_of(peer);
        match read_message::<_, Request>(&mut reader, &mut rbuf) {
            Ok(Request::Hello { .. }) if application.is_none() => {
                // Unknown peers get no token: the module sees an agent it
                // cannot use, and its slot shows no token.
                log::warn!("{peer}: refused: no application of the policy matches this peer");
                self.agent.audit_unknown_peer(peer);
                self.metrics.peer_refused();
                let refusal = Response::Err(cryptoki_sys::CKR_TOKEN_NOT_PRESENT);
                let _ = write_message(&mut writer, &refusal, &mut wbuf);
                return;
            }
            Ok(Request::Hello { version }) => {
                if write_message(&mut writer, &self.agent.hello(), &mut wbuf).is_err() {
                    return;
                }
                if version != PROTOCOL_VERSION {
                    log::warn!("{peer}: speaks protocol {version}, closing");
                    return;
                }
            }
            Ok(_) => {
                log::warn!("{peer}: first message was not Hello, closing");
                return;
            }
            Err(e) => {
                report(peer, &e);
                return;
            }
        }
        log::debug!("{peer}: connected");
        let _counted = self.metrics.connection();
        let Some(application) = application else {
            return;
        };
        let client = self.agent.connect(peer.clone(), application);
        loop {
            if reader.buffer().is_empty() {
                self.activity.poll_next(&stream, conn);
            }
            let req = match read_message::<_, Request>(&mut reader, &mut rbuf) {
                Ok(r) => r,
                Err(e) => {
                    report(peer, &e);
                    break;
                }
            };
            // One clock read here and one after: the latency, and the
            // activity note, from the same instant.
            let started = Instant::now();
            self.activity.note(conn, started);
            let call = Call::of(&req);
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

    fn serve_admin(&self, stream: UnixStream, peer: &Peer) {
        let mut reader = BufReader::new(&stream);
        let mut writer = &stream;
        let (mut rbuf, mut wbuf) = (Vec::new(), Vec::new());
        loop {
            let req = match read_message::<_, AdminRequest>(&mut reader, &mut rbuf) {
                Ok(r) => r,
                Err(e) => {
                    report(peer, &e);
                    return;
                }
            };
            log::debug!("admin {peer}: {req:?}");
            let name = admin_request_name(&req);
            let resp = match req {
                AdminRequest::Status => AdminResponse::Status(self.agent.status()),
                AdminRequest::Key(k) => self.agent.key_request(peer, k),
                AdminRequest::Audit(a) => self.agent.audit_request(peer, a),
                AdminRequest::Report(r) => self.agent.report_request(peer, r),
            };
            self.metrics.record_admin(name, &resp);
            if let Err(e) = write_message(&mut writer, &resp, &mut wbuf) {
                report(peer, &e);
                return;
            }
        }
    }
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
