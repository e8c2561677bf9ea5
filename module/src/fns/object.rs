//! Object management (PKCS#11 5.7). A search runs on the agent at once in
//! `C_FindObjectsInit`; `C_FindObjects` hands the results out locally.

use keyward_protocol::{ObjectHandle, Request, Response};
use pkcs11_sys::*;

use crate::client::{expect_answer, Module};
use crate::error::{Error, Result};
use crate::ffi::{InTemplate, Out, OutArray, OutTemplate};
use crate::fns::{new_object_call, session_call, stateless_call};
use crate::state::{lock, Search};

/// `C_CreateObject`.
pub(crate) fn create_object(
    m: &Module,
    h: CK_SESSION_HANDLE,
    template: InTemplate,
    out: Out<CK_OBJECT_HANDLE>,
) -> Result<()> {
    let template = template.read()?;
    new_object_call(m, h, out, |session| Request::CreateObject {
        session,
        template,
    })
}

/// `C_CopyObject`.
pub(crate) fn copy_object(
    m: &Module,
    h: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    template: InTemplate,
    out: Out<CK_OBJECT_HANDLE>,
) -> Result<()> {
    // No attribute to change: a NULL template with a count of 0 (what NSS's
    // PK11_CopyKey passes when it serves TLS with a token key) is an empty
    // template, like an empty array. SoftHSM2 refuses NULL itself; the agent
    // passes the backend a valid pointer for an empty template. NULL with a
    // count above 0 stays CKR_ARGUMENTS_BAD (`read`).
    let template = template.read()?;
    new_object_call(m, h, out, |session| Request::CopyObject {
        session,
        object: ObjectHandle(object),
        template,
    })
}

/// `C_DestroyObject`.
pub(crate) fn destroy_object(
    m: &Module,
    h: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
) -> Result<()> {
    m.inits.clear();
    let resp = stateless_call(m, h, |session| Request::DestroyObject {
        session,
        object: ObjectHandle(object),
    })?;
    expect_answer!(resp, Response::Unit => ())
}

/// `C_GetObjectSize`.
pub(crate) fn get_object_size(
    m: &Module,
    h: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    out: Out<CK_ULONG>,
) -> Result<()> {
    out.check()?;
    let resp = stateless_call(m, h, |session| Request::GetObjectSize {
        session,
        object: ObjectHandle(object),
    })?;
    out.write(expect_answer!(resp, Response::Ulong(n) => n)? as CK_ULONG)
}

/// `C_GetAttributeValue`: the agent returns every value in full; the
/// caller's buffer sizes are applied here.
pub(crate) fn get_attribute_value(
    m: &Module,
    h: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    mut template: OutTemplate,
) -> Result<()> {
    let types = template.types()?;
    let resp = stateless_call(m, h, |session| Request::GetAttributeValue {
        session,
        object: ObjectHandle(object),
        types,
    })?;
    template.write(&expect_answer!(resp, Response::Attributes(a) => a)?)
}

/// `C_SetAttributeValue`.
pub(crate) fn set_attribute_value(
    m: &Module,
    h: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    template: InTemplate,
) -> Result<()> {
    let template = template.read()?;
    m.inits.clear();
    let resp = stateless_call(m, h, |session| Request::SetAttributeValue {
        session,
        object: ObjectHandle(object),
        template,
    })?;
    expect_answer!(resp, Response::Unit => ())
}

/// `C_FindObjectsInit`: one round trip for the whole search.
pub(crate) fn find_objects_init(
    m: &Module,
    h: CK_SESSION_HANDLE,
    template: InTemplate,
) -> Result<()> {
    let template = template.read()?;
    let s = m.sessions.get(h)?;
    let mut s = lock(&s);
    if s.search.is_some() {
        return Err(Error::OperationActive);
    }
    let req = Request::FindObjects {
        session: s.agent_handle,
        template,
    };
    let handles = expect_answer!(session_call(m, &s, &req)?, Response::List(l) => l)?;
    s.search = Some(Search { handles, next: 0 });
    Ok(())
}

/// `C_FindObjects`, answered locally.
pub(crate) fn find_objects(
    m: &Module,
    h: CK_SESSION_HANDLE,
    out: OutArray<CK_OBJECT_HANDLE>,
    count: Out<CK_ULONG>,
) -> Result<()> {
    out.check()?;
    count.check()?;
    let s = m.sessions.get(h)?;
    let mut s = lock(&s);
    let search = s.search.as_mut().ok_or(Error::OperationNotInitialized)?;
    let rest: Vec<CK_OBJECT_HANDLE> = search.handles[search.next..]
        .iter()
        .map(|&o| o as CK_OBJECT_HANDLE)
        .collect();
    let n = out.fill_from(&rest)?;
    search.next += n;
    count.write(n as CK_ULONG)
}

/// `C_FindObjectsFinal`, answered locally.
pub(crate) fn find_objects_final(m: &Module, h: CK_SESSION_HANDLE) -> Result<()> {
    let s = m.sessions.get(h)?;
    let mut s = lock(&s);
    s.search
        .take()
        .map(|_| ())
        .ok_or(Error::OperationNotInitialized)
}
