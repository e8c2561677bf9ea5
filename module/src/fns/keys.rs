//! Key management (PKCS#11 5.14).

use keyward_protocol::{ObjectHandle, Request, Response};
use pkcs11_sys::*;

use crate::client::{expect_answer, Module};
use crate::error::Result;
use crate::ffi::{InBytes, InMechanism, InTemplate, Out, OutBuf};
use crate::fns::{new_object_call, stateless_call};

/// `C_GenerateKey`.
pub(crate) fn generate_key(
    m: &Module,
    h: CK_SESSION_HANDLE,
    mechanism: InMechanism,
    template: InTemplate,
    out: Out<CK_OBJECT_HANDLE>,
) -> Result<()> {
    let mechanism = mechanism.read()?;
    let template = template.read()?;
    new_object_call(m, h, out, |session| Request::GenerateKey {
        session,
        mechanism,
        template,
    })
}

/// `C_GenerateKeyPair`.
pub(crate) fn generate_key_pair(
    m: &Module,
    h: CK_SESSION_HANDLE,
    mechanism: InMechanism,
    public: InTemplate,
    private: InTemplate,
    out_public: Out<CK_OBJECT_HANDLE>,
    out_private: Out<CK_OBJECT_HANDLE>,
) -> Result<()> {
    let mechanism = mechanism.read()?;
    let public_template = public.read()?;
    let private_template = private.read()?;
    out_public.check()?;
    out_private.check()?;
    let resp = stateless_call(m, h, |session| Request::GenerateKeyPair {
        session,
        mechanism,
        public_template,
        private_template,
    })?;
    let (public, private) =
        expect_answer!(resp, Response::KeyPair { public, private } => (public, private))?;
    out_public.write(public.0 as CK_OBJECT_HANDLE)?;
    out_private.write(private.0 as CK_OBJECT_HANDLE)
}

/// `C_WrapKey`: a length query wraps too (the agent returns the whole
/// result); wrapping is stateless, so the second call simply asks again.
pub(crate) fn wrap_key(
    m: &Module,
    h: CK_SESSION_HANDLE,
    mechanism: InMechanism,
    wrapping_key: CK_OBJECT_HANDLE,
    key: CK_OBJECT_HANDLE,
    out: OutBuf,
) -> Result<()> {
    let mechanism = mechanism.read()?;
    out.check()?;
    let resp = stateless_call(m, h, |session| Request::WrapKey {
        session,
        mechanism,
        wrapping_key: ObjectHandle(wrapping_key),
        key: ObjectHandle(key),
    })?;
    out.deliver(&expect_answer!(resp, Response::Data(d) => d)?)
        .map(|_| ())
}

/// `C_UnwrapKey`.
pub(crate) fn unwrap_key(
    m: &Module,
    h: CK_SESSION_HANDLE,
    mechanism: InMechanism,
    unwrapping_key: CK_OBJECT_HANDLE,
    wrapped: InBytes,
    template: InTemplate,
    out: Out<CK_OBJECT_HANDLE>,
) -> Result<()> {
    let mechanism = mechanism.read()?;
    let wrapped_key = wrapped.to_vec()?;
    let template = template.read()?;
    new_object_call(m, h, out, |session| Request::UnwrapKey {
        session,
        mechanism,
        unwrapping_key: ObjectHandle(unwrapping_key),
        wrapped_key,
        template,
    })
}

/// `C_DeriveKey`.
pub(crate) fn derive_key(
    m: &Module,
    h: CK_SESSION_HANDLE,
    mechanism: InMechanism,
    base_key: CK_OBJECT_HANDLE,
    template: InTemplate,
    out: Out<CK_OBJECT_HANDLE>,
) -> Result<()> {
    let mechanism = mechanism.read()?;
    let template = template.read()?;
    new_object_call(m, h, out, |session| Request::DeriveKey {
        session,
        mechanism,
        base_key: ObjectHandle(base_key),
        template,
    })
}
