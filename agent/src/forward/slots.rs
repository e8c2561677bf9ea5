//! Slot and token management: slot and token information, mechanisms,
//! `C_InitToken`.

use std::sync::Arc;

use cryptoki_sys as ck;
use keyward_protocol::{Response, SlotId, SlotInfo, TokenInfo};

use crate::backend::Backend;
use crate::clients::Client;
use crate::error::{Error, Result};

use crate::audit::{self};
use crate::state::{pin_len_ok, PinRef, Role, MAX_PIN_LEN, MIN_PIN_LEN};
use crate::tokens::VirtualToken;
use keyward_inventory::AuditKind;
use keyward_protocol::Secret;

use crate::agent::Agent;
use crate::tokens::virtual_serial;

impl Agent {
    /// `Request::GetSlotList`.
    pub(crate) fn get_slot_list(
        &self,
        _client: &Arc<Client>,
        token_present: bool,
    ) -> Result<Response> {
        Ok(Response::slots(
            self.tokens
                .iter()
                .enumerate()
                .filter(|(_, t)| !token_present || t.backend().is_ok())
                .map(|(i, _)| SlotId(i as u64)),
        ))
    }

    /// `Request::GetMechanismList`.
    pub(crate) fn get_mechanism_list(
        &self,
        _client: &Arc<Client>,
        slot: SlotId,
    ) -> Result<Response> {
        let (_, t) = self.token(slot)?;
        let mut list = t.backend()?.mechanism_list()?;
        list.retain(|&m| self.policy().mechanism_allowed(m));
        Ok(Response::List(list))
    }

    /// `Request::GetMechanismInfo`.
    pub(crate) fn get_mechanism_info(
        &self,
        _client: &Arc<Client>,
        slot: SlotId,
        mechanism: u64,
    ) -> Result<Response> {
        let (_, t) = self.token(slot)?;
        if !self.policy().mechanism_allowed(mechanism) {
            return Err(Error::Refused(ck::CKR_MECHANISM_INVALID));
        }
        Ok(Response::MechanismInfo(
            t.backend()?.mechanism_info(mechanism)?,
        ))
    }

    /// `Request::InitToken`.
    pub(crate) fn init_token(
        &self,
        client: &Arc<Client>,
        slot: SlotId,
        so_pin: Secret,
        label: Vec<u8>,
    ) -> Result<Response> {
        let r = self.initialize_token(client, slot, &so_pin, &label);
        self.forget_use_targets(|k| k.0 as u64 == slot.0);
        let mut e = audit::for_client(client, AuditKind::Lifecycle, "C_InitToken");
        e.token = self
            .tokens
            .get(slot.0 as usize)
            .map(|t| t.config.label.clone());
        e.result = r.as_ref().err().map_or(0, |e| e.rv());
        if r.is_ok() {
            e.reason = "every object of the token destroyed, PINs reset".into();
        }
        // Durable: the token was just cleared.
        let _ = self.audit.durable(e);
        r
    }

    pub(crate) fn slot_info(&self, slot: SlotId) -> Result<Response> {
        let (_, t) = self.token(slot)?;
        let mut info = SlotInfo {
            description: t.config.label.clone(),
            manufacturer: "keyward".into(),
            // Not CKF_HW_SLOT: the application's slot is the agent's, a
            // software slot in front of the backend (which may itself be
            // hardware). Removable: the token goes when the agent does.
            flags: ck::CKF_REMOVABLE_DEVICE,
            ..SlotInfo::default()
        };
        if let Ok(b) = t.backend() {
            info.flags |= ck::CKF_TOKEN_PRESENT;
            if let Ok(bi) = b.token_info() {
                info.hardware_version = bi.hardware_version;
                info.firmware_version = bi.firmware_version;
            }
        }
        Ok(Response::SlotInfo(info))
    }

    /// The `CKF_*_PIN_COUNT_LOW`, `_FINAL_TRY` and `_LOCKED` flags of
    /// `which` (`[count low, final try, locked]`); an unreadable count is
    /// locked.
    pub(crate) fn pin_flags(&self, t: &VirtualToken, which: PinRef<'_>, flags: [u64; 3]) -> u64 {
        let Ok(failures) = t.state.failures(which) else {
            // No PIN is checked without its count.
            return flags[0] | flags[2];
        };
        if failures == 0 {
            return 0;
        }
        let policy = self.policy();
        let max = policy.settings.pin_max_attempts;
        if policy.check_pin_failures(failures).is_err() {
            flags[0] | flags[2]
        } else if max != 0 && failures.saturating_add(1) == max {
            flags[0] | flags[1]
        } else {
            flags[0]
        }
    }

    pub(crate) fn token_info(&self, client: &Client, slot: SlotId) -> Result<Response> {
        let (_, t) = self.token(slot)?;
        let bi = t.backend()?.token_info()?;
        let mut flags = ck::CKF_LOGIN_REQUIRED | ck::CKF_TOKEN_INITIALIZED;
        let user = self.pin_ref(client, Role::User);
        if t.state.has_pin(user) {
            flags |= ck::CKF_USER_PIN_INITIALIZED;
        }
        flags |= self.pin_flags(
            t,
            user,
            [
                ck::CKF_USER_PIN_COUNT_LOW,
                ck::CKF_USER_PIN_FINAL_TRY,
                ck::CKF_USER_PIN_LOCKED,
            ],
        );
        flags |= self.pin_flags(
            t,
            Role::So.into(),
            [
                ck::CKF_SO_PIN_COUNT_LOW,
                ck::CKF_SO_PIN_FINAL_TRY,
                ck::CKF_SO_PIN_LOCKED,
            ],
        );
        if bi.flags & ck::CKF_RNG != 0 {
            flags |= ck::CKF_RNG;
        }
        if !bi.utc_time.is_empty() {
            flags |= ck::CKF_CLOCK_ON_TOKEN;
        }
        let (sessions, rw_sessions) = {
            let c = t.counts();
            (c.sessions, c.rw_sessions)
        };
        let unavailable = ck::CK_UNAVAILABLE_INFORMATION;
        Ok(Response::TokenInfo(TokenInfo {
            label: t.label(),
            manufacturer: "keyward".into(),
            model: "virtual token".into(),
            serial_number: virtual_serial(&t.config.label, &bi.serial),
            flags,
            max_session_count: ck::CK_EFFECTIVELY_INFINITE,
            session_count: sessions,
            max_rw_session_count: ck::CK_EFFECTIVELY_INFINITE,
            rw_session_count: rw_sessions,
            max_pin_len: MAX_PIN_LEN as u64,
            min_pin_len: MIN_PIN_LEN as u64,
            total_public_memory: unavailable,
            free_public_memory: unavailable,
            total_private_memory: unavailable,
            free_private_memory: unavailable,
            hardware_version: bi.hardware_version,
            firmware_version: bi.firmware_version,
            utc_time: bi.utc_time,
        }))
    }

    pub(crate) fn initialize_token(
        &self,
        client: &Client,
        slot: SlotId,
        so_pin: &[u8],
        label: &[u8],
    ) -> Result<Response> {
        let (i, t) = self.token(slot)?;
        let backend = t.backend()?.clone();
        if !t.config.allow_init_token {
            log::warn!(
                "client {}: C_InitToken on token {:?} refused: allow_init_token is false",
                client.peer,
                t.config.label
            );
            return Err(Error::ActionProhibited);
        }
        // It resets every application's PIN: in strict mode, the
        // administrator's to do, whatever allow_init_token says.
        self.refuse_so_pin_management(client, "C_InitToken")?;
        if !pin_len_ok(so_pin) {
            return Err(Error::PinLenRange);
        }
        {
            let mut c = t.counts();
            if c.sessions > 0 || c.initializing {
                return Err(Error::SessionExists);
            }
            c.initializing = true;
        }
        let result = self.init_token_locked(client, t, &*backend, so_pin, label);
        t.counts().initializing = false;
        if result.is_ok() {
            log::warn!(
                "client {}: C_InitToken cleared token {:?} (slot {i})",
                client.peer,
                t.config.label
            );
        }
        result.map(|()| Response::Unit)
    }

    pub(crate) fn init_token_locked(
        &self,
        client: &Client,
        t: &VirtualToken,
        backend: &dyn Backend,
        so_pin: &[u8],
        label: &[u8],
    ) -> Result<()> {
        if self.verify_pin(client, t, Role::So, so_pin)? == Some(false) {
            return Err(Error::PinIncorrect);
        }
        self.clear_token_objects(t, backend, backend.anchor_session(), "C_InitToken")?;
        let store = |r: std::io::Result<()>| {
            r.map_err(|e| {
                log::error!("token {:?}: state store: {e}", t.config.label);
                Error::StateStore
            })
        };
        store(t.state.clear_user_pins())?;
        store(t.state.set_pin(Role::So, so_pin))?;
        let label = String::from_utf8_lossy(label);
        let label = label.trim_end_matches([' ', '\0']);
        store(t.state.set_label(label))
    }
}

/// What [`Core::clear_token_objects`](crate::shared::Core::clear_token_objects)
/// did: objects removed, and objects the backend refused to remove.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Cleared {
    pub(crate) removed: usize,
    pub(crate) refused: usize,
}

impl crate::shared::Core {
    /// Removes every object of token `t`'s backend but the audit key, on
    /// `session` (for `C_InitToken` and an approved `keyward token init`,
    /// named by `what` in the log). An object gone already counts as
    /// neither removed nor refused; one the backend refuses to remove is
    /// logged and counted, and the others are still removed.
    pub(crate) fn clear_token_objects(
        &self,
        t: &VirtualToken,
        backend: &dyn Backend,
        session: crate::backend::BackendSession,
        what: &str,
    ) -> Result<Cleared> {
        let slot = self
            .tokens
            .iter()
            .position(|x| std::ptr::eq(x, t))
            .unwrap_or(usize::MAX);
        let mut cleared = Cleared::default();
        for h in backend.find_objects(session, &[])? {
            // The audit key is the agent's, not the token's: it survives,
            // so that checkpoints signed before stay verifiable.
            if self.is_audit_key(slot, h) {
                continue;
            }
            match backend.destroy_object(session, h) {
                Ok(()) => cleared.removed += 1,
                Err(Error::Backend(ck::CKR_OBJECT_HANDLE_INVALID)) => {}
                Err(e) => {
                    cleared.refused += 1;
                    log::warn!(
                        "token {:?}: {what} could not destroy backend object {h}: {e}",
                        t.config.label
                    );
                }
            }
        }
        Ok(cleared)
    }
}
