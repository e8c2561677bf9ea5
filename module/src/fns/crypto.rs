//! Encryption, decryption, digests, signatures (PKCS#11 5.8 - 5.13).
//!
//! Each `C_*Init` is its own `OperationInit` round trip, so its errors are
//! its own. The module tracks which operations are active and keeps the
//! output of a call whose caller asked for the length first: the agent
//! always computes the whole output, the module answers the length, and the
//! follow-up call with the same input gets the kept output without a round
//! trip. A single-part call repeated with other input re-initialises the
//! agent's operation (`init: Some(..)`), which the first call had ended.
//!
//! As the specification says, a single-part call or a `C_*Final` ends the
//! operation unless it answers `CKR_BUFFER_TOO_SMALL` (or only a length);
//! an update that fails ends it too. Argument errors found before anything
//! is sent leave the operation as it was.

use keyward_protocol::message::OpInit;
use keyward_protocol::{Op, Request, Response};
use pkcs11_sys::*;

use crate::client::{expect_answer, Module};
use crate::error::{Error, Result};
use crate::ffi::{Delivery, InBytes, InMechanism, OutBuf};
use crate::fns::session_call;
use crate::state::{lock, Pending, Session};

/// `C_EncryptInit`, `C_DecryptInit`, `C_DigestInit`, `C_SignInit`,
/// `C_VerifyInit`, `C_SignRecoverInit`, `C_VerifyRecoverInit`.
pub(crate) fn init(
    m: &Module,
    h: CK_SESSION_HANDLE,
    op: Op,
    mechanism: InMechanism,
    key: Option<CK_OBJECT_HANDLE>,
) -> Result<()> {
    let s = m.sessions.get(h)?;
    let mut s = lock(&s);
    let mechanism = mechanism.read()?;
    s.check_idle(op)?;
    let init = OpInit { mechanism, key };
    let req = Request::OperationInit {
        session: s.agent_handle,
        op,
        init: init.clone(),
    };
    expect_answer!(session_call(m, &s, &req)?, Response::Unit => ())?;
    s.start(op, init);
    Ok(())
}

/// Hands `output` to the caller: written → the operation (single-part or
/// final) ends; length only or too small → kept in `pending`.
fn deliver_and_keep(
    s: &mut Session,
    op: Op,
    out: &OutBuf,
    input: Option<&[u8]>,
    output: Vec<u8>,
    ends: bool,
) -> Result<()> {
    let delivered = out.deliver(&output);
    match delivered {
        Ok(Delivery::Written) => {
            if ends {
                s.end(op);
            } else {
                s.op(op)?.pending = None;
            }
        }
        Ok(Delivery::LengthOnly) | Err(Error::BufferTooSmall) => {
            s.op(op)?.pending = Some(Pending {
                input: input.map(<[u8]>::to_vec),
                output,
            });
        }
        Err(_) => {}
    }
    delivered.map(|_| ())
}

/// Sends `req`; on any failure ends the operation (`ends_on_error`).
fn send_data(m: &Module, s: &mut Session, op: Op, req: &Request) -> Result<Vec<u8>> {
    let result =
        session_call(m, s, req).and_then(|resp| expect_answer!(resp, Response::Data(d) => d));
    if result.is_err() {
        s.end(op);
    }
    result
}

/// The kept output for this input, if the caller is collecting it.
fn pending_for(s: &mut Session, op: Op, input: Option<&[u8]>) -> Result<Option<Vec<u8>>> {
    let operation = s.op(op)?;
    Ok(match &operation.pending {
        Some(p) if p.input.as_deref() == input => Some(p.output.clone()),
        _ => None,
    })
}

/// `C_Encrypt`, `C_Decrypt`, `C_Digest`, `C_Sign`, `C_SignRecover`,
/// `C_VerifyRecover`.
pub(crate) fn single(
    m: &Module,
    h: CK_SESSION_HANDLE,
    op: Op,
    input: InBytes,
    out: OutBuf,
) -> Result<()> {
    out.check()?;
    let data = input.as_slice()?;
    let s = m.sessions.get(h)?;
    let mut s = lock(&s);
    if let Some(output) = pending_for(&mut s, op, Some(data))? {
        return deliver_and_keep(&mut s, op, &out, Some(data), output, true);
    }
    // Kept output for other input: the agent already finished this
    // operation, so it must start it again.
    let operation = s.op(op)?;
    let init = operation.pending.take().map(|_| operation.init.clone());
    let req = Request::Single {
        session: s.agent_handle,
        op,
        init,
        data: data.to_vec(),
    };
    let output = send_data(m, &mut s, op, &req)?;
    deliver_and_keep(&mut s, op, &out, Some(data), output, true)
}

/// `C_EncryptUpdate`, `C_DecryptUpdate`.
pub(crate) fn update_with_output(
    m: &Module,
    h: CK_SESSION_HANDLE,
    op: Op,
    input: InBytes,
    out: OutBuf,
) -> Result<()> {
    out.check()?;
    let data = input.as_slice()?;
    let s = m.sessions.get(h)?;
    let mut s = lock(&s);
    if let Some(output) = pending_for(&mut s, op, Some(data))? {
        return deliver_and_keep(&mut s, op, &out, Some(data), output, false);
    }
    if s.op(op)?.pending.is_some() {
        // The agent consumed a part whose output the caller has not taken;
        // another part now would lose it.
        return Err(Error::ArgumentsBad);
    }
    let req = Request::Update {
        session: s.agent_handle,
        op,
        init: None,
        data: data.to_vec(),
    };
    let output = send_data(m, &mut s, op, &req)?;
    deliver_and_keep(&mut s, op, &out, Some(data), output, false)
}

/// `C_DigestUpdate`, `C_SignUpdate`, `C_VerifyUpdate`.
pub(crate) fn update(m: &Module, h: CK_SESSION_HANDLE, op: Op, input: InBytes) -> Result<()> {
    let data = input.as_slice()?;
    let s = m.sessions.get(h)?;
    let mut s = lock(&s);
    s.op(op)?;
    let req = Request::Update {
        session: s.agent_handle,
        op,
        init: None,
        data: data.to_vec(),
    };
    let result = session_call(m, &s, &req).and_then(|resp| match resp {
        Response::Unit => Ok(()),
        Response::Data(d) if d.is_empty() => Ok(()),
        _ => expect_answer!(resp, Response::Unit => ()),
    });
    if result.is_err() {
        s.end(op);
    }
    result
}

/// `C_EncryptFinal`, `C_DecryptFinal`, `C_DigestFinal`, `C_SignFinal`.
pub(crate) fn final_with_output(
    m: &Module,
    h: CK_SESSION_HANDLE,
    op: Op,
    out: OutBuf,
) -> Result<()> {
    out.check()?;
    let s = m.sessions.get(h)?;
    let mut s = lock(&s);
    if let Some(output) = pending_for(&mut s, op, None)? {
        return deliver_and_keep(&mut s, op, &out, None, output, true);
    }
    if s.op(op)?.pending.is_some() {
        // An update's output is still waiting to be collected.
        return Err(Error::ArgumentsBad);
    }
    let req = Request::Final {
        session: s.agent_handle,
        op,
    };
    let output = send_data(m, &mut s, op, &req)?;
    deliver_and_keep(&mut s, op, &out, None, output, true)
}

/// Sends a request that answers `Unit` and always ends the operation.
fn send_and_end(m: &Module, s: &mut Session, op: Op, req: &Request) -> Result<()> {
    let result =
        session_call(m, s, req).and_then(|resp| expect_answer!(resp, Response::Unit => ()));
    s.end(op);
    result
}

/// `C_Verify`: `CKR_SIGNATURE_INVALID` and friends come from the agent.
pub(crate) fn verify(
    m: &Module,
    h: CK_SESSION_HANDLE,
    data: InBytes,
    signature: InBytes,
) -> Result<()> {
    let data = data.to_vec()?;
    let signature = signature.to_vec()?;
    let s = m.sessions.get(h)?;
    let mut s = lock(&s);
    s.op(Op::Verify)?;
    let req = Request::Verify {
        session: s.agent_handle,
        init: None,
        data,
        signature,
    };
    send_and_end(m, &mut s, Op::Verify, &req)
}

/// `C_VerifyFinal`.
pub(crate) fn verify_final(m: &Module, h: CK_SESSION_HANDLE, signature: InBytes) -> Result<()> {
    let signature = signature.to_vec()?;
    let s = m.sessions.get(h)?;
    let mut s = lock(&s);
    s.op(Op::Verify)?;
    let req = Request::VerifyFinal {
        session: s.agent_handle,
        signature,
    };
    send_and_end(m, &mut s, Op::Verify, &req)
}

/// `C_DigestKey`: a failure ends the digest.
pub(crate) fn digest_key(m: &Module, h: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE) -> Result<()> {
    let s = m.sessions.get(h)?;
    let mut s = lock(&s);
    s.op(Op::Digest)?;
    let req = Request::DigestKey {
        session: s.agent_handle,
        key,
    };
    let result =
        session_call(m, &s, &req).and_then(|resp| expect_answer!(resp, Response::Unit => ()));
    if result.is_err() {
        s.end(Op::Digest);
    }
    result
}
