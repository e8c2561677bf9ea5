//! Random number generation (PKCS#11 5.15).

use keyward_protocol::{Request, Response};
use pkcs11_sys::CK_SESSION_HANDLE;

use crate::client::{expect_answer, Module};
use crate::error::Result;
use crate::ffi::{InBytes, OutBytes};
use crate::fns::stateless_call;

/// `C_SeedRandom`.
pub(crate) fn seed_random(m: &Module, h: CK_SESSION_HANDLE, seed: InBytes) -> Result<()> {
    let seed = seed.to_vec()?;
    let resp = stateless_call(m, h, |session| Request::SeedRandom { session, seed })?;
    expect_answer!(resp, Response::Unit => ())
}

/// `C_GenerateRandom`: the agent returns exactly the requested bytes.
pub(crate) fn generate_random(m: &Module, h: CK_SESSION_HANDLE, out: OutBytes) -> Result<()> {
    let len = out.len()? as u64;
    let resp = stateless_call(m, h, |session| Request::GenerateRandom { session, len })?;
    let data = expect_answer!(resp, Response::Data(d) => d)?;
    out.fill(&data)
}
