//! A backend in memory for the agent's unit tests: sessions, and objects
//! with `CKA_TOKEN` / `CKA_PRIVATE` (and `CKA_CLASS` / `CKA_ID` when made
//! with them, by which a search filters); cryptographic calls echo or
//! succeed.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use cryptoki_sys as ck;
use keyward_protocol::{AttrResult, AttrValue, Attribute, Mechanism, MechanismInfo, Op, Value};

use crate::backend::{Backend, BackendObject, BackendSession, BackendTokenInfo, LibraryInfo};
use crate::error::{Error, Result};
use crate::template::template_bool;

/// The mock's anchor session, always live.
const ANCHOR: BackendSession = BackendSession(0);

#[derive(Debug, Clone)]
struct MockObject {
    private: bool,
    token: bool,
    session: BackendSession,
    /// `CKA_CLASS`, when the object was made with one (or is a key).
    class: Option<u64>,
    /// `CKA_ID`, when the object was made with one.
    id: Option<Vec<u8>>,
}

impl MockObject {
    /// Whether the object matches what `t` says of `CKA_CLASS` and
    /// `CKA_ID` (an object without one matches no search by it).
    fn matches(&self, t: &[Attribute]) -> bool {
        t.iter().all(|a| match a.attr_type {
            ck::CKA_CLASS => a.as_ulong().is_some_and(|c| self.class == Some(c)),
            ck::CKA_ID => match &a.value {
                AttrValue::Leaf(Value::Bytes(b)) => self.id.as_ref() == Some(b),
                _ => false,
            },
            _ => true,
        })
    }
}

#[derive(Debug, Default)]
pub(crate) struct MockState {
    next: u64,
    pub(crate) sessions: HashSet<BackendSession>,
    objects: HashMap<BackendObject, MockObject>,
    pub(crate) context_logins: u32,
}

/// A backend in memory: sessions, objects with ck::CKA_TOKEN / ck::CKA_PRIVATE.
#[derive(Debug, Default)]
pub(crate) struct Mock {
    st: Mutex<MockState>,
}

impl Mock {
    pub(crate) fn st(&self) -> MutexGuard<'_, MockState> {
        self.st.lock().unwrap()
    }
    fn add(
        &self,
        session: BackendSession,
        template: &[Attribute],
        private: bool,
        class: Option<u64>,
    ) -> BackendObject {
        let mut st = self.st();
        st.next += 1;
        let h = BackendObject(st.next);
        let obj = MockObject {
            private: template_bool(template, ck::CKA_PRIVATE).unwrap_or(private),
            token: template_bool(template, ck::CKA_TOKEN).unwrap_or(false),
            session,
            class: template
                .iter()
                .find(|a| a.attr_type == ck::CKA_CLASS)
                .and_then(Attribute::as_ulong)
                .or(class),
            id: template.iter().find_map(|a| match &a.value {
                AttrValue::Leaf(Value::Bytes(b)) if a.attr_type == ck::CKA_ID => Some(b.clone()),
                _ => None,
            }),
        };
        st.objects.insert(h, obj);
        h
    }
    fn live(&self, s: BackendSession) -> Result<()> {
        if self.st().sessions.contains(&s) || s == ANCHOR {
            Ok(())
        } else {
            Err(Error::Backend(ck::CKR_SESSION_HANDLE_INVALID))
        }
    }
    #[cfg(test)]
    pub(crate) fn object_count(&self) -> usize {
        self.st().objects.len()
    }
    /// Forgets every token object (between two fuzz inputs).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn forget_token_objects(&self) {
        self.st().objects.retain(|_, o| !o.token);
    }
}

impl Backend for Mock {
    fn library_info(&self) -> Result<LibraryInfo> {
        Ok(LibraryInfo::default())
    }
    fn token_info(&self) -> Result<BackendTokenInfo> {
        Ok(BackendTokenInfo {
            serial: "1234".into(),
            flags: ck::CKF_RNG,
            ..Default::default()
        })
    }
    fn mechanism_list(&self) -> Result<Vec<u64>> {
        Ok(vec![ck::CKM_ECDSA])
    }
    fn mechanism_info(&self, _: u64) -> Result<MechanismInfo> {
        Ok(MechanismInfo::default())
    }
    fn open_session(&self, _: bool) -> Result<BackendSession> {
        let mut st = self.st();
        st.next += 1;
        let h = BackendSession(st.next);
        st.sessions.insert(h);
        Ok(h)
    }
    fn close_session(&self, s: BackendSession) -> Result<()> {
        let mut st = self.st();
        st.sessions.remove(&s);
        st.objects.retain(|_, o| o.token || o.session != s);
        Ok(())
    }
    fn anchor_session(&self) -> BackendSession {
        ANCHOR
    }
    fn login_context_specific(&self, s: BackendSession) -> Result<()> {
        self.live(s)?;
        self.st().context_logins += 1;
        Ok(())
    }
    fn create_object(&self, s: BackendSession, t: &[Attribute]) -> Result<BackendObject> {
        self.live(s)?;
        Ok(self.add(s, t, false, None))
    }
    fn copy_object(
        &self,
        s: BackendSession,
        _: BackendObject,
        t: &[Attribute],
    ) -> Result<BackendObject> {
        self.live(s)?;
        Ok(self.add(s, t, false, None))
    }
    fn destroy_object(&self, s: BackendSession, o: BackendObject) -> Result<()> {
        self.live(s)?;
        self.st()
            .objects
            .remove(&o)
            .map(|_| ())
            .ok_or(Error::Backend(ck::CKR_OBJECT_HANDLE_INVALID))
    }
    fn object_size(&self, _: BackendSession, _: BackendObject) -> Result<u64> {
        Ok(1)
    }
    fn get_attributes(
        &self,
        _: BackendSession,
        o: BackendObject,
        types: &[u64],
    ) -> Result<Vec<AttrResult>> {
        let obj = self
            .st()
            .objects
            .get(&o)
            .cloned()
            .ok_or(Error::Backend(ck::CKR_OBJECT_HANDLE_INVALID))?;
        Ok(types
            .iter()
            .map(|&t| match t {
                ck::CKA_TOKEN => AttrResult::Value(AttrValue::Leaf(Value::Bool(obj.token))),
                ck::CKA_PRIVATE => AttrResult::Value(AttrValue::Leaf(Value::Bool(obj.private))),
                ck::CKA_CLASS => obj.class.map_or(AttrResult::Invalid, |c| {
                    AttrResult::Value(AttrValue::Leaf(Value::Ulong(c)))
                }),
                ck::CKA_ID => obj.id.clone().map_or(AttrResult::Invalid, |b| {
                    AttrResult::Value(AttrValue::Leaf(Value::Bytes(b)))
                }),
                _ => AttrResult::Invalid,
            })
            .collect())
    }
    fn set_attributes(&self, _: BackendSession, _: BackendObject, _: &[Attribute]) -> Result<()> {
        Ok(())
    }
    fn find_objects(&self, s: BackendSession, t: &[Attribute]) -> Result<Vec<BackendObject>> {
        self.live(s)?;
        let private = template_bool(t, ck::CKA_PRIVATE);
        let mut v: Vec<BackendObject> = self
            .st()
            .objects
            .iter()
            .filter(|(_, o)| private.is_none_or(|p| p == o.private) && o.matches(t))
            .map(|(&h, _)| h)
            .collect();
        v.sort_unstable();
        Ok(v)
    }
    fn op_init(
        &self,
        s: BackendSession,
        _: Op,
        _: &Mechanism,
        _: Option<BackendObject>,
    ) -> Result<()> {
        self.live(s)
    }
    fn single(&self, s: BackendSession, _: Op, data: &[u8]) -> Result<Vec<u8>> {
        self.live(s)?;
        Ok(data.to_vec())
    }
    fn verify(&self, s: BackendSession, _: &[u8], _: &[u8]) -> Result<()> {
        self.live(s)
    }
    fn update(&self, s: BackendSession, _: Op, _: &[u8]) -> Result<Vec<u8>> {
        self.live(s)?;
        Ok(Vec::new())
    }
    fn digest_key(&self, s: BackendSession, _: BackendObject) -> Result<()> {
        self.live(s)
    }
    fn final_(&self, s: BackendSession, _: Op) -> Result<Vec<u8>> {
        self.live(s)?;
        Ok(Vec::new())
    }
    fn verify_final(&self, s: BackendSession, _: &[u8]) -> Result<()> {
        self.live(s)
    }
    fn generate_key(
        &self,
        s: BackendSession,
        _: &Mechanism,
        t: &[Attribute],
    ) -> Result<BackendObject> {
        self.live(s)?;
        Ok(self.add(s, t, true, Some(ck::CKO_SECRET_KEY)))
    }
    fn generate_key_pair(
        &self,
        s: BackendSession,
        _: &Mechanism,
        pubt: &[Attribute],
        privt: &[Attribute],
    ) -> Result<(BackendObject, BackendObject)> {
        self.live(s)?;
        Ok((
            self.add(s, pubt, false, Some(ck::CKO_PUBLIC_KEY)),
            self.add(s, privt, true, Some(ck::CKO_PRIVATE_KEY)),
        ))
    }
    fn wrap_key(
        &self,
        s: BackendSession,
        _: &Mechanism,
        _: BackendObject,
        _: BackendObject,
    ) -> Result<Vec<u8>> {
        self.live(s)?;
        Ok(vec![1])
    }
    fn unwrap_key(
        &self,
        s: BackendSession,
        _: &Mechanism,
        _: BackendObject,
        _: &[u8],
        t: &[Attribute],
    ) -> Result<BackendObject> {
        self.live(s)?;
        Ok(self.add(s, t, true, Some(ck::CKO_SECRET_KEY)))
    }
    fn derive_key(
        &self,
        s: BackendSession,
        _: &Mechanism,
        _: BackendObject,
        t: &[Attribute],
    ) -> Result<BackendObject> {
        self.live(s)?;
        Ok(self.add(s, t, true, Some(ck::CKO_SECRET_KEY)))
    }
    fn seed_random(&self, s: BackendSession, _: &[u8]) -> Result<()> {
        self.live(s)
    }
    fn generate_random(&self, s: BackendSession, len: usize) -> Result<Vec<u8>> {
        self.live(s)?;
        Ok(vec![0; len])
    }
}
