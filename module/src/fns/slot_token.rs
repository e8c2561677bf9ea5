//! Slot and token management (PKCS#11 5.5).
//!
//! When the agent cannot be reached the slots stay visible (the last list
//! the module saw, or slot 0) without a token, so applications see "token
//! removed" rather than "no such module"; token calls answer
//! `CKR_TOKEN_NOT_PRESENT`.

use std::time::Duration;

use keyward_protocol::{Request, Response, SlotId, SlotInfo, TokenInfo};
use pkcs11_sys::*;

use crate::client::{expect_answer, Module};
use crate::error::{Error, Result};
use crate::ffi::{pad, InBytes, Out, OutList, Reserved};
use crate::fns::stateless_call;
use crate::state::lock;

/// How often a blocking `C_WaitForSlotEvent` looks at the agent.
const EVENT_POLL: Duration = Duration::from_millis(200);

fn version(v: keyward_protocol::Version) -> CK_VERSION {
    CK_VERSION {
        major: v.major,
        minor: v.minor,
    }
}

/// The slots to show while the agent is unreachable.
fn fallback_slots(m: &Module) -> Vec<u64> {
    lock(&m.last_slots).clone().unwrap_or_else(|| vec![0])
}

/// Asks the agent for its slots, remembering the full list.
fn fetch_slots(m: &Module, token_present: bool) -> Result<Vec<u64>> {
    let (resp, _) = m.call(None, &Request::GetSlotList { token_present })?;
    let slots = expect_answer!(resp, Response::List(l) => l)?;
    if !token_present {
        *lock(&m.last_slots) = Some(slots.clone());
    }
    Ok(slots)
}

/// `C_GetSlotList`.
pub(crate) fn get_slot_list(
    m: &Module,
    token_present: bool,
    out: OutList<CK_SLOT_ID>,
) -> Result<()> {
    out.check()?;
    let slots = match fetch_slots(m, token_present) {
        Ok(slots) => slots,
        Err(e) if e.is_transport() && token_present => Vec::new(),
        Err(e) if e.is_transport() => fallback_slots(m),
        Err(e) => return Err(e),
    };
    let slots: Vec<CK_SLOT_ID> = slots.into_iter().map(|s| s as CK_SLOT_ID).collect();
    out.deliver(&slots)
}

fn slot_info(info: &SlotInfo) -> CK_SLOT_INFO {
    CK_SLOT_INFO {
        slotDescription: pad(&info.description),
        manufacturerID: pad(&info.manufacturer),
        flags: info.flags as CK_FLAGS,
        hardwareVersion: version(info.hardware_version),
        firmwareVersion: version(info.firmware_version),
    }
}

/// `C_GetSlotInfo`.
pub(crate) fn get_slot_info(m: &Module, slot: CK_SLOT_ID, out: Out<CK_SLOT_INFO>) -> Result<()> {
    out.check()?;
    match m.call(None, &Request::GetSlotInfo { slot: SlotId(slot) }) {
        Ok((resp, _)) => out.write(slot_info(
            &expect_answer!(resp, Response::SlotInfo(i) => i)?,
        )),
        Err(e) if e.is_transport() => {
            if !fallback_slots(m).contains(&{ slot }) {
                return Err(Error::SlotIdInvalid);
            }
            out.write(slot_info(&SlotInfo {
                description: absent_description(m.refused()).into(),
                manufacturer: "keyward".into(),
                flags: CKF_REMOVABLE_DEVICE,
                ..SlotInfo::default()
            }))
        }
        Err(e) => Err(e),
    }
}

/// The slot description while there is no token: why there is none. A
/// process the agent's policy does not admit is told so, rather than that
/// the agent is away.
pub(crate) fn absent_description(refused: bool) -> &'static str {
    if refused {
        REFUSED_DESCRIPTION
    } else {
        "keyward (agent unreachable)"
    }
}

/// The slot description of a process the agent refused.
pub(crate) const REFUSED_DESCRIPTION: &str = "keyward: refused by the agent's policy";

fn token_info(t: &TokenInfo) -> CK_TOKEN_INFO {
    CK_TOKEN_INFO {
        label: pad(&t.label),
        manufacturerID: pad(&t.manufacturer),
        model: pad(&t.model),
        serialNumber: pad(&t.serial_number),
        flags: t.flags as CK_FLAGS,
        ulMaxSessionCount: t.max_session_count as CK_ULONG,
        ulSessionCount: t.session_count as CK_ULONG,
        ulMaxRwSessionCount: t.max_rw_session_count as CK_ULONG,
        ulRwSessionCount: t.rw_session_count as CK_ULONG,
        ulMaxPinLen: t.max_pin_len as CK_ULONG,
        ulMinPinLen: t.min_pin_len as CK_ULONG,
        ulTotalPublicMemory: t.total_public_memory as CK_ULONG,
        ulFreePublicMemory: t.free_public_memory as CK_ULONG,
        ulTotalPrivateMemory: t.total_private_memory as CK_ULONG,
        ulFreePrivateMemory: t.free_private_memory as CK_ULONG,
        hardwareVersion: version(t.hardware_version),
        firmwareVersion: version(t.firmware_version),
        utcTime: pad(&t.utc_time),
    }
}

/// `C_GetTokenInfo`.
pub(crate) fn get_token_info(m: &Module, slot: CK_SLOT_ID, out: Out<CK_TOKEN_INFO>) -> Result<()> {
    out.check()?;
    let (resp, _) = m
        .call(None, &Request::GetTokenInfo { slot: SlotId(slot) })
        .map_err(Error::in_slot_call)?;
    out.write(token_info(
        &expect_answer!(resp, Response::TokenInfo(t) => t)?,
    ))
}

/// `C_GetMechanismList`.
pub(crate) fn get_mechanism_list(
    m: &Module,
    slot: CK_SLOT_ID,
    out: OutList<CK_MECHANISM_TYPE>,
) -> Result<()> {
    out.check()?;
    let (resp, _) = m
        .call(None, &Request::GetMechanismList { slot: SlotId(slot) })
        .map_err(Error::in_slot_call)?;
    let list: Vec<CK_MECHANISM_TYPE> = expect_answer!(resp, Response::List(l) => l)?
        .into_iter()
        .map(|t| t as CK_MECHANISM_TYPE)
        .collect();
    out.deliver(&list)
}

/// `C_GetMechanismInfo`.
pub(crate) fn get_mechanism_info(
    m: &Module,
    slot: CK_SLOT_ID,
    mechanism: CK_MECHANISM_TYPE,
    out: Out<CK_MECHANISM_INFO>,
) -> Result<()> {
    out.check()?;
    let req = Request::GetMechanismInfo {
        slot: SlotId(slot),
        mechanism,
    };
    let (resp, _) = m.call(None, &req).map_err(Error::in_slot_call)?;
    let info = expect_answer!(resp, Response::MechanismInfo(i) => i)?;
    out.write(CK_MECHANISM_INFO {
        ulMinKeySize: info.min_key_size as CK_ULONG,
        ulMaxKeySize: info.max_key_size as CK_ULONG,
        flags: info.flags as CK_FLAGS,
    })
}

/// `C_InitToken`: `label` is the caller's 32-byte blank-padded label.
pub(crate) fn init_token(m: &Module, slot: CK_SLOT_ID, pin: InBytes, label: InBytes) -> Result<()> {
    let label = label.to_vec()?;
    let so_pin = pin.secret()?;
    m.inits.clear();
    let req = Request::InitToken {
        slot: SlotId(slot),
        so_pin,
        label,
    };
    let (resp, _) = m.call(None, &req).map_err(Error::in_slot_call)?;
    expect_answer!(resp, Response::Unit => ())
}

/// `C_InitPIN`.
pub(crate) fn init_pin(m: &Module, h: CK_SESSION_HANDLE, pin: InBytes) -> Result<()> {
    let pin = pin.secret()?;
    let resp = stateless_call(m, h, |session| Request::InitPin { session, pin })?;
    expect_answer!(resp, Response::Unit => ())
}

/// `C_SetPIN`.
pub(crate) fn set_pin(m: &Module, h: CK_SESSION_HANDLE, old: InBytes, new: InBytes) -> Result<()> {
    let old_pin = old.secret()?;
    let new_pin = new.secret()?;
    let resp = stateless_call(m, h, |session| Request::SetPin {
        session,
        old_pin,
        new_pin,
    })?;
    expect_answer!(resp, Response::Unit => ())
}

/// Whether the agent answers now (refreshing the remembered slot list).
fn probe(m: &Module) -> bool {
    match fetch_slots(m, false) {
        Ok(_) => true,
        Err(e) => !e.is_transport(),
    }
}

/// `C_WaitForSlotEvent`. The only slot events keyward has are the agent
/// going away and coming back (the token appears removed, then inserted).
/// With `CKF_DONT_BLOCK`: the slot if reachability changed since the last
/// call, else `CKR_NO_EVENT`. Blocking: polls until a change or
/// `C_Finalize`.
pub(crate) fn wait_for_slot_event(
    m: &Module,
    flags: CK_FLAGS,
    out: Out<CK_SLOT_ID>,
    reserved: Reserved,
) -> Result<()> {
    reserved.check()?;
    out.check()?;
    loop {
        if m.is_finalized() {
            return Err(Error::NotInitialized);
        }
        let before = m.last_reachable();
        let now = probe(m);
        let changed = {
            let mut baseline = lock(&m.event_baseline);
            let previous = baseline.or(before).unwrap_or(now);
            *baseline = Some(now);
            previous != now
        };
        if changed {
            let slot = fallback_slots(m).first().copied().unwrap_or(0);
            return out.write(slot as CK_SLOT_ID);
        }
        if flags & CKF_DONT_BLOCK != 0 {
            return Err(Error::NoEvent);
        }
        std::thread::sleep(EVENT_POLL);
        if m.is_finalized() {
            return Err(Error::NotInitialized);
        }
    }
}
