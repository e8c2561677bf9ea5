//! Encryption, decryption, digests, signatures (PKCS#11 5.8 - 5.13).
//!
//! Round trips: a `C_*Init` whose key and mechanism shape the agent already
//! accepted is deferred and carried by the operation's first request
//! ([`crate::state::InitCache`]); any other `C_*Init` is its own round trip,
//! so its errors are its own. Update input of digests, signatures and
//! verifications (which produce no output) is held back and sent with the
//! final call, up to [`HOLD_LIMIT`] bytes. A single-part call costs one
//! round trip, and so does a whole init / update... / final sequence.
//!
//! The module keeps the output of a call whose caller asked for the length
//! first: the agent always computes the whole output, the module answers
//! the length, and the follow-up call with the same input gets the kept
//! output without a round trip. A single-part call repeated with other input
//! re-initialises the agent's operation (`init: Some(..)`), which the first
//! call had ended.
//!
//! As the specification says, a single-part call or a `C_*Final` ends the
//! operation unless it answers `CKR_BUFFER_TOO_SMALL` (or only a length);
//! an update that fails ends it too. Argument errors found before anything
//! is sent leave the operation as it was.

use keyward_protocol::message::OpInit;
use keyward_protocol::{ObjectHandle, Op, Request, Response};
use pkcs11_sys::*;
use zeroize::Zeroize;

use crate::client::{expect_answer, Module};
use crate::error::{Error, Result};
use crate::ffi::{Delivery, InBytes, InMechanism, OutBuf};
use crate::fns::session_call;
use crate::state::{lock, Pending, Session, HOLD_LIMIT};

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
    let init = OpInit {
        mechanism,
        key: key.map(ObjectHandle),
    };
    if m.inits.knows(s.instance, op, &init) {
        s.start(op, init, true);
        return Ok(());
    }
    let req = Request::OperationInit {
        session: s.agent_handle,
        op,
        init: init.clone(),
    };
    expect_answer!(session_call(m, &s, &req)?, Response::Unit => ())?;
    m.inits.learn(s.instance, op, &init);
    s.start(op, init, false);
    Ok(())
}

/// Hands `output` to the caller: written → the operation (single-part or
/// final) ends; length only or too small → kept in `pending`.
fn deliver_and_keep(
    s: &mut Session,
    op: Op,
    out: &OutBuf,
    input: Option<&[u8]>,
    mut output: Vec<u8>,
    ends: bool,
) -> Result<()> {
    let delivered = out.deliver(&output);
    match delivered {
        Ok(Delivery::LengthOnly) | Err(Error::BufferTooSmall) => {
            s.op(op)?.pending = Some(Pending {
                input: input.map(<[u8]>::to_vec),
                output,
            });
            return delivered.map(|_| ());
        }
        Ok(Delivery::Written) if ends => s.end(op),
        Ok(Delivery::Written) => s.op(op)?.pending = None,
        Err(_) => {}
    }
    // The caller has its copy (or none is due): ours may be plaintext.
    output.zeroize();
    delivered.map(|_| ())
}

/// Sends a request of the active operation `op`. On failure the operation
/// ends, and if the request carried a deferred init (`carried`) its shape
/// is forgotten, so that the next `C_*Init` of it asks the agent at once.
fn send(m: &Module, s: &mut Session, op: Op, carried: bool, req: &Request) -> Result<Response> {
    let result = session_call(m, s, req);
    if result.is_err() {
        let instance = s.instance;
        if carried {
            if let Ok(o) = s.op(op) {
                m.inits.forget(instance, op, &o.init);
            }
        }
        s.end(op);
    }
    result
}

/// [`send`] for requests answered with output bytes.
fn send_data(m: &Module, s: &mut Session, op: Op, carried: bool, req: &Request) -> Result<Vec<u8>> {
    let result =
        send(m, s, op, carried, req).and_then(|resp| expect_answer!(resp, Response::Data(d) => d));
    if result.is_err() {
        s.end(op);
    }
    result
}

/// [`send`] for requests answered with nothing (an empty `Data` counts).
fn send_unit(m: &Module, s: &mut Session, op: Op, carried: bool, req: &Request) -> Result<()> {
    let result = send(m, s, op, carried, req).and_then(|resp| match resp {
        Response::Unit => Ok(()),
        Response::Data(d) if d.is_empty() => Ok(()),
        _ => expect_answer!(resp, Response::Unit => ()),
    });
    if result.is_err() {
        s.end(op);
    }
    result
}

/// Brings the agent up to date with `op`: sends held-back update input
/// (with the deferred init), or the deferred init alone. Needed before a
/// request that cannot carry them (`C_DigestKey`, a context-specific login,
/// a single-part call after updates).
pub(crate) fn flush(m: &Module, s: &mut Session, op: Op) -> Result<()> {
    let operation = s.op(op)?;
    let held = std::mem::take(&mut operation.held);
    let init = operation.take_init();
    let carried = init.is_some();
    let req = match (held.is_empty(), init) {
        (true, None) => return Ok(()),
        (true, Some(init)) => Request::OperationInit {
            session: s.agent_handle,
            op,
            init,
        },
        (false, init) => Request::Update {
            session: s.agent_handle,
            op,
            init,
            data: held,
        },
    };
    send_unit(m, s, op, carried, &req)
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
    if !s.op(op)?.held.is_empty() {
        flush(m, &mut s, op)?;
    }
    // Kept output for other input: the agent already finished this
    // operation, so it must start it again.
    let operation = s.op(op)?;
    let init = match operation.pending.take() {
        Some(_) => Some(operation.init.clone()),
        None => operation.take_init(),
    };
    let carried = init.is_some();
    let req = Request::Single {
        session: s.agent_handle,
        op,
        init,
        data: data.to_vec(),
    };
    let output = send_data(m, &mut s, op, carried, &req)?;
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
    let operation = s.op(op)?;
    if operation.pending.is_some() {
        // The agent consumed a part whose output the caller has not taken;
        // another part now would lose it.
        return Err(Error::ArgumentsBad);
    }
    let init = operation.take_init();
    let carried = init.is_some();
    let req = Request::Update {
        session: s.agent_handle,
        op,
        init,
        data: data.to_vec(),
    };
    let output = send_data(m, &mut s, op, carried, &req)?;
    deliver_and_keep(&mut s, op, &out, Some(data), output, false)
}

/// `C_DigestUpdate`, `C_SignUpdate`, `C_VerifyUpdate`: the input is held
/// back for the final call; past [`HOLD_LIMIT`] it is sent on.
pub(crate) fn update(m: &Module, h: CK_SESSION_HANDLE, op: Op, input: InBytes) -> Result<()> {
    let data = input.as_slice()?;
    let s = m.sessions.get(h)?;
    let mut s = lock(&s);
    let operation = s.op(op)?;
    operation.held.extend_from_slice(data);
    if operation.held.len() >= HOLD_LIMIT {
        flush(m, &mut s, op)?;
    }
    Ok(())
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
    let session = s.agent_handle;
    let operation = s.op(op)?;
    if operation.pending.is_some() {
        // An update's output is still waiting to be collected.
        return Err(Error::ArgumentsBad);
    }
    let init = operation.take_init();
    let carried = init.is_some();
    let req = Request::Final {
        session,
        op,
        init,
        data: std::mem::take(&mut operation.held),
    };
    let output = send_data(m, &mut s, op, carried, &req)?;
    deliver_and_keep(&mut s, op, &out, None, output, true)
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
    if !s.op(Op::Verify)?.held.is_empty() {
        flush(m, &mut s, Op::Verify)?;
    }
    let init = s.op(Op::Verify)?.take_init();
    let carried = init.is_some();
    let req = Request::Verify {
        session: s.agent_handle,
        init,
        data,
        signature,
    };
    let result = send_unit(m, &mut s, Op::Verify, carried, &req);
    s.end(Op::Verify);
    result
}

/// `C_VerifyFinal`.
pub(crate) fn verify_final(m: &Module, h: CK_SESSION_HANDLE, signature: InBytes) -> Result<()> {
    let signature = signature.to_vec()?;
    let s = m.sessions.get(h)?;
    let mut s = lock(&s);
    let session = s.agent_handle;
    let operation = s.op(Op::Verify)?;
    let init = operation.take_init();
    let carried = init.is_some();
    let req = Request::VerifyFinal {
        session,
        init,
        data: std::mem::take(&mut operation.held),
        signature,
    };
    let result = send_unit(m, &mut s, Op::Verify, carried, &req);
    s.end(Op::Verify);
    result
}

/// `C_DigestKey`: held input and a deferred init go first; a failure ends
/// the digest.
pub(crate) fn digest_key(m: &Module, h: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE) -> Result<()> {
    let s = m.sessions.get(h)?;
    let mut s = lock(&s);
    flush(m, &mut s, Op::Digest)?;
    let req = Request::DigestKey {
        session: s.agent_handle,
        key: ObjectHandle(key),
    };
    send_unit(m, &mut s, Op::Digest, false, &req)
}
