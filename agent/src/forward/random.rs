//! Random numbers: `C_SeedRandom` and `C_GenerateRandom`.

use std::sync::Arc;

use keyward_protocol::{Response, SessionHandle};

use crate::clients::Client;
use crate::error::{Error, Result};

use crate::agent::Agent;
use crate::forward::MAX_RANDOM;

impl Agent {
    /// `Request::SeedRandom`.
    pub(crate) fn seed_random(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        seed: Vec<u8>,
    ) -> Result<Response> {
        let (s, _) = self.session(client, session)?;
        s.backend.seed_random(s.backend_session, &seed)?;
        Ok(Response::Unit)
    }

    /// `Request::GenerateRandom`.
    pub(crate) fn generate_random(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        len: u64,
    ) -> Result<Response> {
        let (s, _) = self.session(client, session)?;
        if len > MAX_RANDOM {
            return Err(Error::ArgumentsBad);
        }
        Ok(Response::Data(
            s.backend.generate_random(s.backend_session, len as usize)?,
        ))
    }
}
