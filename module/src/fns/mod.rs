//! The PKCS#11 calls, grouped by chapter of the specification. Each is a
//! private `fn(...) -> Result<()>` over the `ffi` wrappers; the entry-point
//! macro in `lib.rs` turns it into C.

pub(crate) mod crypto;
pub(crate) mod general;
pub(crate) mod keys;
pub(crate) mod object;
pub(crate) mod random;
pub(crate) mod session;
pub(crate) mod slot_token;

use keyward_protocol::{Request, Response, SessionHandle};
use pkcs11_sys::CK_SESSION_HANDLE;

use crate::client::Module;
use crate::error::Result;
use crate::state::{lock, Session};

/// Sends a request bound to `session`'s agent run.
pub(crate) fn session_call(m: &Module, session: &Session, req: &Request) -> Result<Response> {
    m.call(Some(session.instance), req).map(|(resp, _)| resp)
}

/// The agent's handle and run for a session, for calls that keep no state.
pub(crate) fn agent_session(m: &Module, h: CK_SESSION_HANDLE) -> Result<Session> {
    let s = m.sessions.get(h)?;
    let s = lock(&s);
    Ok(Session::new(s.agent_handle, s.instance, s.slot, s.flags))
}

/// Sends a request for a session that needs no local state, built from
/// the agent's session handle.
pub(crate) fn stateless_call(
    m: &Module,
    h: CK_SESSION_HANDLE,
    build: impl FnOnce(SessionHandle) -> Request,
) -> Result<Response> {
    let s = agent_session(m, h)?;
    session_call(m, &s, &build(s.agent_handle))
}

/// Sends a request that creates one object and writes its handle to
/// `out` (checked first, after the caller has read its other arguments).
pub(crate) fn new_object_call(
    m: &Module,
    h: CK_SESSION_HANDLE,
    out: crate::ffi::Out<pkcs11_sys::CK_OBJECT_HANDLE>,
    build: impl FnOnce(SessionHandle) -> Request,
) -> Result<()> {
    out.check()?;
    let resp = stateless_call(m, h, build)?;
    out.write(
        crate::client::expect_answer!(resp, Response::Handle(o) => o)?
            as pkcs11_sys::CK_OBJECT_HANDLE,
    )
}
