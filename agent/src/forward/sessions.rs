//! Sessions and login: opening and closing sessions, the virtual login
//! state, and the PINs the agent keeps (checked, set, locked, unlocked).

use cryptoki_sys as ck;
use keyward_protocol::{ObjectHandle, Response, SessionHandle, SessionInfo, SlotId};

use crate::clients::{Client, Login, Session};
use crate::error::{Error, Result};

use crate::forward::user_type_name;
use crate::state::{pin_len_ok, PinCheck, PinRef, Role};
use crate::template::result_bool;
use crate::tokens::VirtualToken;
use keyward_protocol::Secret;

use crate::agent::Agent;
use crate::clients::Closed;
use crate::listener::identity::Peer;
use std::sync::Arc;

impl Agent {
    /// Registers a connection of `peer`, identified as `application`
    /// ([`Agent::application_of`]); all connections of one process share
    /// one client (the first connection's identity).
    pub fn connect(&self, peer: Peer, application: String) -> Arc<Client> {
        self.clients.connect(peer, application, self.tokens.len())
    }

    /// Unregisters a connection; the last one of a process closes all of
    /// that client's backend sessions (destroying its session objects) and
    /// forgets its handles.
    pub fn disconnect(&self, client: &Arc<Client>) {
        if !self.clients.disconnect(client) {
            return;
        }
        let closed = client.lock().remove_sessions(None);
        let n = closed.sessions.len();
        self.close_backend(client, closed);
        log::debug!("client {} gone; closed {n} sessions", client.peer);
    }

    /// How many client processes are connected.
    pub fn client_count(&self) -> usize {
        self.clients.count()
    }

    /// Closes every client's sessions (at shutdown).
    pub fn close_all(&self) {
        for c in self.clients.drain() {
            let closed = c.lock().remove_sessions(None);
            self.close_backend(&c, closed);
        }
    }

    /// Closes the backend sessions behind `closed` and forgets their
    /// session objects (the backend destroys them with their sessions).
    pub(crate) fn close_backend(&self, client: &Client, closed: Closed) {
        if closed.sessions.is_empty() {
            return;
        }
        let handles: Vec<SessionHandle> = closed.sessions.iter().map(|(h, _)| *h).collect();
        let gone = self.clients.disown_sessions(client.peer.key, &handles);
        if !gone.is_empty() {
            self.forget_use_targets(|k| gone.contains(k));
        }
        for (_, s) in closed.sessions {
            if let Err(e) = s.backend.close_session(s.backend_session) {
                log::debug!("closing backend session {}: {e}", s.backend_session);
            }
            let mut counts = self.tokens[s.slot].counts();
            counts.sessions = counts.sessions.saturating_sub(1);
            if s.rw {
                counts.rw_sessions = counts.rw_sessions.saturating_sub(1);
            }
        }
    }

    /// `Request::InitPin`.
    pub(crate) fn init_pin(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        pin: Secret,
    ) -> Result<Response> {
        let r = self.set_user_pin(client, session, &pin);
        self.record_pin_event(client, "C_InitPIN", &r);
        r
    }

    /// `Request::SetPin`.
    pub(crate) fn set_pin(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        old_pin: Secret,
        new_pin: Secret,
    ) -> Result<Response> {
        let r = self.change_pin(client, session, &old_pin, &new_pin);
        self.record_pin_event(client, "C_SetPIN", &r);
        r
    }

    /// `Request::CloseSession`.
    pub(crate) fn close_session(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
    ) -> Result<Response> {
        let closed = client.lock().remove_session(session)?;
        self.close_backend(client, closed);
        Ok(Response::Unit)
    }

    /// `Request::CloseAllSessions`.
    pub(crate) fn close_all_sessions(
        &self,
        client: &Arc<Client>,
        slot: SlotId,
    ) -> Result<Response> {
        let (i, _) = self.token(slot)?;
        let closed = client.lock().remove_sessions(Some(i));
        self.close_backend(client, closed);
        Ok(Response::Unit)
    }

    /// `Request::GetSessionInfo`.
    pub(crate) fn get_session_info(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
    ) -> Result<Response> {
        let st = client.lock();
        let s = st.session(session)?;
        let state = match (st.login(s.slot), s.rw) {
            (Login::Public, false) => ck::CKS_RO_PUBLIC_SESSION,
            (Login::Public, true) => ck::CKS_RW_PUBLIC_SESSION,
            (Login::User, false) => ck::CKS_RO_USER_FUNCTIONS,
            (Login::User, true) => ck::CKS_RW_USER_FUNCTIONS,
            (Login::So, _) => ck::CKS_RW_SO_FUNCTIONS,
        };
        Ok(Response::SessionInfo(SessionInfo {
            slot_id: s.slot as u64,
            state,
            flags: ck::CKF_SERIAL_SESSION | if s.rw { ck::CKF_RW_SESSION } else { 0 },
            device_error: 0,
        }))
    }

    /// `Request::Login`.
    pub(crate) fn login(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        user_type: u64,
        pin: Option<Secret>,
    ) -> Result<Response> {
        let r = self.log_in(
            client,
            session,
            user_type,
            pin.as_ref().map(|p| p.as_slice()),
        );
        let operation = format!("C_Login({})", user_type_name(user_type));
        self.record_pin_event(client, &operation, &r);
        r
    }

    pub(crate) fn open_session(
        &self,
        client: &Client,
        slot: SlotId,
        flags: u64,
    ) -> Result<Response> {
        let (i, t) = self.token(slot)?;
        let backend = t.backend()?.clone();
        if flags & ck::CKF_SERIAL_SESSION == 0 {
            return Err(Error::ParallelNotSupported);
        }
        let rw = flags & ck::CKF_RW_SESSION != 0;
        if !rw && client.lock().login(i) == Login::So {
            return Err(Error::ReadWriteSoExists);
        }
        {
            let mut c = t.counts();
            if c.initializing {
                return Err(Error::TokenNotPresent);
            }
            c.sessions += 1;
            c.rw_sessions += u64::from(rw);
        }
        let backend_session = match backend.open_session(rw) {
            Ok(b) => b,
            Err(e) => {
                let mut c = t.counts();
                c.sessions -= 1;
                c.rw_sessions -= u64::from(rw);
                return Err(e);
            }
        };
        let h = client.lock().add_session(Session {
            active: Default::default(),
            slot: i,
            rw,
            backend_session,
            backend,
        });
        Ok(Response::session(h))
    }

    pub(crate) fn log_in(
        &self,
        client: &Client,
        session: SessionHandle,
        user_type: u64,
        pin: Option<&[u8]>,
    ) -> Result<Response> {
        let (s, login) = self.session(client, session)?;
        let t = &self.tokens[s.slot];
        let pin = pin.ok_or(Error::ArgumentsBad)?;
        let (role, new) = match user_type {
            ck::CKU_SO => {
                match login {
                    Login::So => return Err(Error::AlreadyLoggedIn),
                    Login::User => return Err(Error::AnotherAlreadyLoggedIn),
                    Login::Public => {}
                }
                if client.lock().has_ro_session(s.slot) {
                    return Err(Error::ReadOnlyExists);
                }
                (Role::So, Login::So)
            }
            ck::CKU_USER => {
                match login {
                    Login::User => return Err(Error::AlreadyLoggedIn),
                    Login::So => return Err(Error::AnotherAlreadyLoggedIn),
                    Login::Public => {}
                }
                (Role::User, Login::User)
            }
            ck::CKU_CONTEXT_SPECIFIC => {
                if login != Login::User {
                    return Err(Error::NotLoggedIn);
                }
                match self.verify_pin(client, t, Role::User, pin)? {
                    Some(true) => {}
                    Some(false) => return Err(Error::PinIncorrect),
                    None => return Err(Error::UserPinNotInitialized),
                }
                s.backend.login_context_specific(s.backend_session)?;
                return Ok(Response::Unit);
            }
            _ => return Err(Error::UserTypeInvalid),
        };
        match self.verify_pin(client, t, role, pin)? {
            Some(true) => {}
            Some(false) => {
                log::info!(
                    "client {}: wrong {role:?} PIN for token {:?}",
                    client.peer,
                    t.config.label
                );
                return Err(Error::PinIncorrect);
            }
            None if role == Role::User => return Err(Error::UserPinNotInitialized),
            None => return Err(Error::PinIncorrect),
        }
        let mut st = client.lock();
        // The PIN check ran without the lock: re-check the state.
        match st.login(s.slot) {
            Login::Public => {}
            l if l == new => return Err(Error::AlreadyLoggedIn),
            _ => return Err(Error::AnotherAlreadyLoggedIn),
        }
        st.session(session)?;
        st.set_login(s.slot, new);
        Ok(Response::Unit)
    }

    pub(crate) fn logout(&self, client: &Client, session: SessionHandle) -> Result<Response> {
        let (s, objects) = {
            let mut st = client.lock();
            let s = st.session(session)?;
            let was = st.login(s.slot);
            if was == Login::Public {
                return Err(Error::NotLoggedIn);
            }
            st.set_login(s.slot, Login::Public);
            let objects = if was == Login::User {
                st.objects_on(s.slot)
            } else {
                Vec::new()
            };
            (s, objects)
        };
        // Private objects the user could see are no longer the client's to
        // use: drop the handles (one ck::CKA_PRIVATE query per held handle).
        let private: Vec<ObjectHandle> = objects
            .into_iter()
            .filter(|(_, o)| {
                let r = s
                    .backend
                    .get_attributes(s.backend_session, o.backend, &[ck::CKA_PRIVATE])
                    .unwrap_or_default();
                result_bool(r.first()) != Some(false)
            })
            .map(|(h, _)| h)
            .collect();
        let mut st = client.lock();
        for h in private {
            st.unmap_object(h);
        }
        Ok(Response::Unit)
    }

    /// Which PIN `role` of `client` is on token `t`: the SO PIN; in
    /// strict mode, the user PIN of the client's application (its own, else
    /// the token's, with a count of its own); in lab mode, the token's user
    /// PIN (a plain token).
    pub(crate) fn pin_ref<'c>(&self, client: &'c Client, role: Role) -> PinRef<'c> {
        match role {
            Role::So => PinRef::from(Role::So),
            Role::User if self.policy().mode() == keyward_policy::Mode::Strict => {
                PinRef::app(&client.application)
            }
            Role::User => PinRef::from(Role::User),
        }
    }

    /// Checks a PIN. Every attempt is counted (durably, before the PIN is
    /// compared) towards the policy's lockout, the SO PIN's as well as the
    /// user PIN's: once `pin_max_attempts` wrong PINs are counted, every
    /// check of that PIN answers `CKR_PIN_LOCKED` (even a right PIN) until
    /// an administrator runs `keyward pin unlock`. An attempt that cannot
    /// be counted is not checked: `CKR_DEVICE_ERROR`.
    pub(crate) fn verify_pin(
        &self,
        client: &Client,
        t: &VirtualToken,
        role: Role,
        pin: &[u8],
    ) -> Result<Option<bool>> {
        let which = self.pin_ref(client, role);
        let checked = t
            .state
            .check_pin(which, pin, |n| self.policy().check_pin_failures(n).is_err());
        match checked {
            Err(e) => {
                log::error!(
                    "token {:?}: {which}: the attempt cannot be counted, so no PIN is checked: {e}",
                    t.config.label
                );
                Err(Error::StateStore)
            }
            Ok(PinCheck::NotSet) => Ok(None),
            Ok(PinCheck::Locked(n)) => {
                let refusal = keyward_policy::Refusal::PinLocked { failures: n };
                log::warn!("token {:?}: {which} refused: {refusal}", t.config.label);
                Err(Error::Refused(refusal.ckr()))
            }
            Ok(PinCheck::Wrong(n)) => {
                log::warn!("token {:?}: wrong {which} ({n} in a row)", t.config.label);
                Ok(Some(false))
            }
            Ok(PinCheck::Right) => Ok(Some(true)),
        }
    }

    pub(crate) fn set_user_pin(
        &self,
        client: &Client,
        session: SessionHandle,
        pin: &[u8],
    ) -> Result<Response> {
        let (s, login) = self.session(client, session)?;
        if login != Login::So {
            return Err(Error::NotLoggedIn);
        }
        self.refuse_so_pin_management(client, "C_InitPIN")?;
        if !pin_len_ok(pin) {
            return Err(Error::PinLenRange);
        }
        let t = &self.tokens[s.slot];
        t.state.set_pin(Role::User, pin).map_err(|e| {
            log::error!("token {:?}: cannot store the user PIN: {e}", t.config.label);
            Error::StateStore
        })?;
        log::info!(
            "token {:?}: user PIN set by SO ({})",
            t.config.label,
            client.peer
        );
        Ok(Response::Unit)
    }

    /// `C_SetPIN`: the logged-in role changes its own PIN. In strict mode a
    /// user changes its application's own PIN (never another's, never the
    /// token's), and the SO PIN is the administrator's to change.
    pub(crate) fn change_pin(
        &self,
        client: &Client,
        session: SessionHandle,
        old: &[u8],
        new: &[u8],
    ) -> Result<Response> {
        let (s, login) = self.session(client, session)?;
        if !s.rw {
            return Err(Error::SessionReadOnly);
        }
        let t = &self.tokens[s.slot];
        let role = if login == Login::So {
            self.refuse_so_pin_management(client, "C_SetPIN")?;
            Role::So
        } else {
            Role::User
        };
        if !pin_len_ok(new) {
            return Err(Error::PinLenRange);
        }
        match self.verify_pin(client, t, role, old)? {
            Some(true) => {}
            Some(false) => return Err(Error::PinIncorrect),
            None if role == Role::User => return Err(Error::UserPinNotInitialized),
            None => return Err(Error::PinIncorrect),
        }
        let which = self.pin_ref(client, role);
        t.state.set_pin(which, new).map_err(|e| {
            log::error!("token {:?}: cannot store the {which}: {e}", t.config.label);
            Error::StateStore
        })?;
        log::info!(
            "token {:?}: {which} changed ({})",
            t.config.label,
            client.peer
        );
        Ok(Response::Unit)
    }
}

impl crate::shared::Core {
    /// `keyward pin unlock TOKEN [--role R] [--app A]`: resets the token's
    /// wrong-PIN counts: every one (user, SO, each application's), or the
    /// SO's, or every user count, or one application's. Says what it did.
    pub fn unlock_pin(
        &self,
        token: &str,
        role: Option<Role>,
        app: Option<&str>,
    ) -> std::result::Result<String, String> {
        let t = self
            .token_labelled(token)
            .ok_or_else(|| format!("no token labelled {token:?}"))?;
        let failed = |e: std::io::Error| format!("token {token:?}: {e}");
        let done = match (role, app) {
            (Some(Role::So), Some(_)) => {
                return Err("an application has no SO PIN of its own: leave out --app".into())
            }
            (Some(Role::So), None) => {
                t.state.reset_failures(Role::So).map_err(failed)?;
                format!("token {token:?}: SO PIN unlocked")
            }
            (_, Some(app)) => {
                if self.policy().application(app).is_none() {
                    return Err(format!("the policy names no application {app:?}"));
                }
                t.state.reset_failures(PinRef::app(app)).map_err(failed)?;
                format!("token {token:?}: user PIN of application {app:?} unlocked")
            }
            (Some(Role::User), None) => {
                t.state.reset_failures(Role::User).map_err(failed)?;
                for a in &self.policy().applications {
                    t.state
                        .reset_failures(PinRef::app(&a.name))
                        .map_err(failed)?;
                }
                format!("token {token:?}: user PINs unlocked")
            }
            (None, None) => {
                t.state.reset_all_failures().map_err(failed)?;
                format!("token {token:?}: user and SO PINs unlocked")
            }
        };
        log::info!("{done}");
        Ok(done)
    }
}
