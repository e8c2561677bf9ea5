//! A hostile local peer, for the listener's attack tests. It speaks raw
//! frames (never the module), optionally as another user: `--uid U` drops
//! to uid and gid `U` before it touches any socket.
//!
//! - `flood SOCKET N MODE`: opens `N` connections and holds them until
//!   standard input closes (or 120 s). `MODE` is what each sends: `silent`
//!   (nothing), `hello` (a `Hello`, its answer read), `huge` (a header
//!   announcing the largest payload, nothing after), `hello-huge` (a
//!   `Hello`, then such a header). Prints `opened: K` (connections
//!   established), `answered: K` (`Hello`s answered with a `Hello`),
//!   `refused: K` (answered with an error), then `held: K` once all are
//!   open, and on exit `closed: K` (connections the agent closed).
//! - `connect-loop SOCKET N`: connects, says `Hello` and closes, `N` times;
//!   prints `done: N`.
//! - `fork-send SOCKET`: connects and says `Hello`; then a forked child
//!   sends `GetSlotList` on the inherited connection. Prints `child: answered`
//!   or `child: closed`; then the parent sends one too and prints
//!   `parent: answered` or `parent: closed`.
//! - `squat PATH`: listens on `PATH` (mode 0666), prints `listening: PATH`,
//!   accepts connections and prints `received: N` (bytes read from each)
//!   when a connection closes or 2 s after the last byte; stops when
//!   standard input closes.
//! - `admin SOCKET`: says the admin hello and sends a `Status` request;
//!   prints `admin: answered` (a status came back), `admin: refused` (the
//!   agent answered with an error text) or `admin: closed`.

use std::io::{BufRead, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use keyward_protocol::admin::{AdminRequest, AdminResponse, HelloError};
use keyward_protocol::frame::{encode, read_message, MAGIC};
use keyward_protocol::{Request, Response, APP_VERSIONS, FRAME_VERSION, MAX_FRAME_LEN};

const LIMIT: Duration = Duration::from_secs(120);

fn say(name: &str, value: impl std::fmt::Display) {
    println!("{name}: {value}");
    let _ = std::io::stdout().flush();
}

fn frame(msg: &Request) -> Vec<u8> {
    let mut buf = Vec::new();
    encode(msg, &mut buf).expect("encode");
    buf
}

fn hello() -> Vec<u8> {
    frame(&Request::Hello {
        versions: APP_VERSIONS,
    })
}

fn huge_header() -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend(FRAME_VERSION.to_le_bytes());
    h.extend((MAX_FRAME_LEN as u32).to_le_bytes());
    h
}

/// Sends `Hello` and reads the answer: `Some(true)` a `Hello`, `Some(false)`
/// an error, `None` closed.
fn say_hello(s: &mut UnixStream) -> Option<bool> {
    s.write_all(&hello()).ok()?;
    let mut buf = Vec::new();
    match read_message::<_, Response>(s, &mut buf) {
        Ok(Response::Hello(_)) => Some(true),
        Ok(_) => Some(false),
        Err(_) => None,
    }
}

fn wait_for_stdin_close() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        while std::io::stdin().lock().read_line(&mut line).unwrap_or(0) > 0 {
            line.clear();
        }
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(LIMIT);
}

fn flood(socket: &str, n: usize, mode: &str) {
    let mut conns = Vec::new();
    let (mut answered, mut refused) = (0, 0);
    for _ in 0..n {
        let Ok(mut s) = UnixStream::connect(socket) else {
            continue;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        match mode {
            "silent" => {}
            "hello" | "hello-huge" => match say_hello(&mut s) {
                Some(true) => answered += 1,
                Some(false) => refused += 1,
                None => {}
            },
            "huge" => {
                let _ = s.write_all(&huge_header());
            }
            other => panic!("unknown flood mode {other}"),
        }
        if mode == "hello-huge" {
            let _ = s.write_all(&huge_header());
        }
        conns.push(s);
    }
    say("opened", conns.len());
    say("answered", answered);
    say("refused", refused);
    say("held", conns.len());
    wait_for_stdin_close();
    // Each connection gets until the deadline to be closed by the agent.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut closed = 0;
    for mut s in conns {
        let mut b = [0u8; 64];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
                break;
            }
            match s.read(&mut b) {
                Ok(0) => {
                    closed += 1;
                    break;
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    closed += 1;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
    say("closed", closed);
}

fn connect_loop(socket: &str, n: usize) {
    for _ in 0..n {
        if let Ok(mut s) = UnixStream::connect(socket) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = say_hello(&mut s);
        }
    }
    say("done", n);
}

fn fork_send(socket: &str) {
    let mut s = UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    assert_eq!(
        say_hello(&mut s),
        Some(true),
        "the agent must admit this probe"
    );
    let ask = |s: &mut UnixStream| -> &'static str {
        if s.write_all(&frame(&Request::GetSlotList {
            token_present: false,
        }))
        .is_err()
        {
            return "closed";
        }
        let mut buf = Vec::new();
        match read_message::<_, Response>(s, &mut buf) {
            Ok(_) => "answered",
            Err(_) => "closed",
        }
    };
    // SAFETY: the probe is single-threaded here; the child only writes to
    // and reads from a socket, prints and exits.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        nix::unistd::ForkResult::Child => {
            let r = ask(&mut s);
            say("child", r);
            std::process::exit(0);
        }
        nix::unistd::ForkResult::Parent { child } => {
            let _ = nix::sys::wait::waitpid(child, None);
            let r = ask(&mut s);
            say("parent", r);
        }
    }
}

fn squat(path: &str) {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).expect("bind the squatting socket");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    say("listening", path);
    l.set_nonblocking(true).expect("nonblocking");
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        wait_for_stdin_close();
        let _ = tx.send(());
    });
    let start = Instant::now();
    while rx.try_recv().is_err() && start.elapsed() < LIMIT {
        match l.accept() {
            Ok((mut s, _)) => {
                s.set_read_timeout(Some(Duration::from_secs(2)))
                    .expect("timeout");
                let mut total = 0usize;
                let mut b = [0u8; 4096];
                while let Ok(n) = s.read(&mut b) {
                    if n == 0 {
                        break;
                    }
                    total += n;
                }
                say("received", total);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn admin(socket: &str) {
    let Ok(mut s) = UnixStream::connect(socket) else {
        say("admin", "closed");
        return;
    };
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = Vec::new();
    match keyward_protocol::admin::hello(&mut s, &mut buf) {
        Ok(_) => {}
        Err(HelloError::Agent(_)) => return say("admin", "refused"),
        Err(_) => return say("admin", "closed"),
    }
    encode(&AdminRequest::Status, &mut buf).expect("encode");
    if s.write_all(&buf).is_err() {
        say("admin", "closed");
        return;
    }
    match read_message::<_, AdminResponse>(&mut s, &mut buf) {
        Ok(AdminResponse::Status(_)) => say("admin", "answered"),
        Ok(_) => say("admin", "refused"),
        Err(_) => say("admin", "closed"),
    }
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--uid") {
        let uid: u32 = args[i + 1].parse().expect("--uid takes a number");
        args.drain(i..i + 2);
        nix::unistd::setgroups(&[]).expect("setgroups");
        nix::unistd::setgid(nix::unistd::Gid::from_raw(uid)).expect("setgid");
        nix::unistd::setuid(nix::unistd::Uid::from_raw(uid)).expect("setuid");
    }
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a[..] {
        ["flood", socket, n, mode] => flood(socket, n.parse().expect("N"), mode),
        ["connect-loop", socket, n] => connect_loop(socket, n.parse().expect("N")),
        ["fork-send", socket] => fork_send(socket),
        ["squat", path] => squat(path),
        ["admin", socket] => admin(socket),
        _ => panic!("usage: see the file's documentation"),
    }
}
