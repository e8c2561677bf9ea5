//! Session management (PKCS#11 5.6).

use keyward_protocol::{Request, Response, SessionHandle, SlotId};
use pkcs11_sys::*;

use crate::client::{expect_answer, Module};
use crate::error::{Error, Result};
use crate::ffi::{InBytes, Out};
use crate::fns::{agent_session, crypto, session_call, stateless_call};
use crate::state::{lock, Session};

/// `C_OpenSession`. Notification callbacks are accepted and never called.
pub(crate) fn open_session(
    m: &Module,
    slot: CK_SLOT_ID,
    flags: CK_FLAGS,
    out: Out<CK_SESSION_HANDLE>,
) -> Result<()> {
    out.check()?;
    if flags & CKF_SERIAL_SESSION == 0 {
        return Err(Error::SessionParallelNotSupported);
    }
    let req = Request::OpenSession {
        slot: SlotId(slot),
        flags,
    };
    let (resp, instance) = m.call(None, &req).map_err(Error::in_slot_call)?;
    let agent_handle = expect_answer!(resp, Response::Handle(h) => SessionHandle(h))?;
    let handle = m
        .sessions
        .insert(Session::new(agent_handle, instance, slot, flags));
    out.write(handle)
}

/// `C_CloseSession`: the local session is gone whatever the agent says.
pub(crate) fn close_session(m: &Module, h: CK_SESSION_HANDLE) -> Result<()> {
    let s = agent_session(m, h)?;
    m.sessions.remove(h);
    let resp = session_call(
        m,
        &s,
        &Request::CloseSession {
            session: s.agent_handle,
        },
    )?;
    expect_answer!(resp, Response::Unit => ())
}

/// `C_CloseAllSessions`.
pub(crate) fn close_all_sessions(m: &Module, slot: CK_SLOT_ID) -> Result<()> {
    m.inits.clear();
    m.sessions.remove_slot(slot);
    let req = Request::CloseAllSessions { slot: SlotId(slot) };
    let (resp, _) = m.call(None, &req).map_err(Error::in_slot_call)?;
    expect_answer!(resp, Response::Unit => ())
}

/// `C_GetSessionInfo`.
pub(crate) fn get_session_info(
    m: &Module,
    h: CK_SESSION_HANDLE,
    out: Out<CK_SESSION_INFO>,
) -> Result<()> {
    out.check()?;
    let resp = stateless_call(m, h, |session| Request::GetSessionInfo { session })?;
    let info = expect_answer!(resp, Response::SessionInfo(i) => i)?;
    out.write(CK_SESSION_INFO {
        slotID: info.slot_id as CK_SLOT_ID,
        state: info.state as CK_STATE,
        flags: info.flags as CK_FLAGS,
        ulDeviceError: info.device_error as CK_ULONG,
    })
}

/// `C_Login`: a NULL PIN (length 0) travels as `None`.
pub(crate) fn login(
    m: &Module,
    h: CK_SESSION_HANDLE,
    user_type: CK_USER_TYPE,
    pin: InBytes,
) -> Result<()> {
    let pin = pin.optional_secret()?;
    if user_type == CKU_CONTEXT_SPECIFIC {
        // The backend authenticates the operation just initialised: it must
        // have seen that init.
        let s = m.sessions.get(h)?;
        let mut s = lock(&s);
        for op in s.deferred_ops() {
            crypto::flush(m, &mut s, op)?;
        }
    } else {
        m.inits.clear();
    }
    let resp = stateless_call(m, h, |session| Request::Login {
        session,
        user_type,
        pin,
    })?;
    expect_answer!(resp, Response::Unit => ())
}

/// `C_Logout`.
pub(crate) fn logout(m: &Module, h: CK_SESSION_HANDLE) -> Result<()> {
    m.inits.clear();
    let resp = stateless_call(m, h, |session| Request::Logout { session })?;
    expect_answer!(resp, Response::Unit => ())
}
