//! The backend: the vendor PKCS#11 library behind each virtual token.
//!
//! [`Backend`] is the typed surface the rest of the agent uses (protocol
//! mechanisms and attributes, [`BackendSession`] and [`BackendObject`]
//! handles, the backend's `CK_RV` as
//! [`Error::Backend`](crate::error::Error::Backend)), so that policy code can
//! be tested against a mock. [`ffi`] implements it over a real library and
//! holds every `unsafe` block of the crate; [`cdata`] builds the C
//! structures (attribute arrays, mechanism parameters) that [`ffi`] passes.

pub mod cdata;
#[allow(unsafe_code)] // The one place the agent calls C: see the module doc.
pub mod ffi;
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod mock;

use keyward_protocol::{AttrResult, Attribute, Mechanism, MechanismInfo, Op, Version};

use crate::error::Result;

/// Declares a backend handle newtype. Its field is private to this module
/// and its children: only a backend ([`ffi`], or the test mock) makes one,
/// from what the library returned, so the rest of the agent can pass a
/// handle back to the backend but cannot make one up from a number, nor
/// give a session where an object is wanted.
macro_rules! backend_handle {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(u64);

        impl $name {
            /// The library's number for it (for a mechanism parameter that
            /// carries a handle, and for logs).
            pub const fn get(self) -> u64 {
                self.0
            }

            /// A handle for the agent's unit tests, which check the tables
            /// that hold handles without a backend.
            #[cfg(test)]
            pub(crate) const fn for_test(raw: u64) -> Self {
                Self(raw)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

backend_handle! {
    /// A backend session handle (the library's `CK_SESSION_HANDLE`). Never
    /// shown to a client: a client holds a `keyward_protocol::SessionHandle`,
    /// its own type, which does not compile where a backend handle is wanted;
    /// the client tables (`crate::clients`) map one to the other.
    ///
    /// A handle the backend gave goes back to it:
    ///
    /// ```
    /// # fn f(b: &dyn keyward_agent::backend::Backend) -> keyward_agent::error::Result<()> {
    /// let session = b.open_session(false)?;
    /// for object in b.find_objects(session, &[])? {
    ///     println!("backend object {object} on backend session {session}");
    /// }
    /// b.close_session(session)
    /// # }
    /// ```
    ///
    /// A session is not an object:
    ///
    /// ```compile_fail
    /// # fn f(b: &dyn keyward_agent::backend::Backend) {
    /// let session = b.anchor_session();
    /// // error[E0308]: expected `BackendObject`, found `BackendSession`
    /// let _ = b.destroy_object(session, session);
    /// # }
    /// ```
    ///
    /// and a number is not a handle:
    ///
    /// ```compile_fail
    /// # fn f(b: &dyn keyward_agent::backend::Backend) {
    /// // error[E0308]: expected `BackendSession`, found integer
    /// let _ = b.close_session(1);
    /// # }
    /// ```
    ///
    /// ```compile_fail
    /// // error[E0603]: the field is private: only a backend makes handles
    /// let _ = keyward_agent::backend::BackendObject(1);
    /// ```
    BackendSession
}

backend_handle! {
    /// A backend object handle (the library's `CK_OBJECT_HANDLE`) on its
    /// backend token. Never shown to a client, which holds a
    /// `keyward_protocol::ObjectHandle` instead (mapped by `crate::clients`).
    BackendObject
}

/// Backend objects for a log line: their numbers, comma-separated.
pub(crate) fn numbers(objects: &[BackendObject]) -> String {
    let mut out = String::new();
    for (i, o) in objects.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&o.0.to_string());
    }
    out
}

/// `CK_INFO` of a backend library.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LibraryInfo {
    /// `manufacturerID`, unpadded.
    pub manufacturer: String,
    /// `libraryDescription`, unpadded.
    pub description: String,
    /// `libraryVersion`.
    pub version: Version,
    /// `cryptokiVersion`.
    pub cryptoki_version: Version,
}

/// What the agent uses of a backend token's `CK_TOKEN_INFO`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendTokenInfo {
    /// `label`, unpadded.
    pub label: String,
    /// `manufacturerID`, unpadded.
    pub manufacturer: String,
    /// `model`, unpadded.
    pub model: String,
    /// `serialNumber`, unpadded.
    pub serial: String,
    /// `flags`.
    pub flags: u64,
    /// `hardwareVersion`.
    pub hardware_version: Version,
    /// `firmwareVersion`.
    pub firmware_version: Version,
    /// `utcTime` (empty when the token has no clock).
    pub utc_time: String,
}

/// The calls the agent makes on one backend token. Every method is one
/// backend call unless its documentation says otherwise; errors are the
/// backend's `CK_RV`.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// `C_GetInfo` of the library.
    fn library_info(&self) -> Result<LibraryInfo>;
    /// `C_GetTokenInfo` of the backend token.
    fn token_info(&self) -> Result<BackendTokenInfo>;
    /// `C_GetMechanismList`.
    fn mechanism_list(&self) -> Result<Vec<u64>>;
    /// `C_GetMechanismInfo`.
    fn mechanism_info(&self, mechanism: u64) -> Result<MechanismInfo>;
    /// `C_OpenSession` (always serial; read-write when `rw`).
    fn open_session(&self, rw: bool) -> Result<BackendSession>;
    /// `C_CloseSession`.
    fn close_session(&self, session: BackendSession) -> Result<()>;
    /// The session opened at start and logged in with the backend PIN; it
    /// keeps the library logged in and serves token-wide searches.
    fn anchor_session(&self) -> BackendSession;
    /// `C_Login(CKU_CONTEXT_SPECIFIC)` with the backend PIN.
    fn login_context_specific(&self, session: BackendSession) -> Result<()>;
    /// `C_CreateObject`.
    fn create_object(
        &self,
        session: BackendSession,
        template: &[Attribute],
    ) -> Result<BackendObject>;
    /// `C_CopyObject`.
    fn copy_object(
        &self,
        session: BackendSession,
        object: BackendObject,
        template: &[Attribute],
    ) -> Result<BackendObject>;
    /// `C_DestroyObject`.
    fn destroy_object(&self, session: BackendSession, object: BackendObject) -> Result<()>;
    /// `C_GetObjectSize`.
    fn object_size(&self, session: BackendSession, object: BackendObject) -> Result<u64>;
    /// `C_GetAttributeValue`, one result per type (usually two calls: one
    /// for the lengths, one for the values).
    fn get_attributes(
        &self,
        session: BackendSession,
        object: BackendObject,
        types: &[u64],
    ) -> Result<Vec<AttrResult>>;
    /// `C_SetAttributeValue`.
    fn set_attributes(
        &self,
        session: BackendSession,
        object: BackendObject,
        template: &[Attribute],
    ) -> Result<()>;
    /// `C_FindObjectsInit`, `C_FindObjects` until done, `C_FindObjectsFinal`.
    fn find_objects(
        &self,
        session: BackendSession,
        template: &[Attribute],
    ) -> Result<Vec<BackendObject>>;
    /// `C_EncryptInit`, `C_SignInit`, ... (`key` is `None` for digests).
    fn op_init(
        &self,
        session: BackendSession,
        op: Op,
        mechanism: &Mechanism,
        key: Option<BackendObject>,
    ) -> Result<()>;
    /// Single-part `C_Encrypt`, `C_Decrypt`, `C_Digest`, `C_Sign`,
    /// `C_SignRecover`, `C_VerifyRecover`.
    fn single(&self, session: BackendSession, op: Op, data: &[u8]) -> Result<Vec<u8>>;
    /// `C_Verify`.
    fn verify(&self, session: BackendSession, data: &[u8], signature: &[u8]) -> Result<()>;
    /// `C_*Update` (output empty for digest, sign and verify).
    fn update(&self, session: BackendSession, op: Op, data: &[u8]) -> Result<Vec<u8>>;
    /// `C_DigestKey`.
    fn digest_key(&self, session: BackendSession, key: BackendObject) -> Result<()>;
    /// `C_EncryptFinal`, `C_DecryptFinal`, `C_DigestFinal`, `C_SignFinal`.
    fn final_(&self, session: BackendSession, op: Op) -> Result<Vec<u8>>;
    /// `C_VerifyFinal`.
    fn verify_final(&self, session: BackendSession, signature: &[u8]) -> Result<()>;
    /// `C_GenerateKey`.
    fn generate_key(
        &self,
        session: BackendSession,
        mechanism: &Mechanism,
        template: &[Attribute],
    ) -> Result<BackendObject>;
    /// `C_GenerateKeyPair`: (public, private).
    fn generate_key_pair(
        &self,
        session: BackendSession,
        mechanism: &Mechanism,
        public_template: &[Attribute],
        private_template: &[Attribute],
    ) -> Result<(BackendObject, BackendObject)>;
    /// `C_WrapKey`.
    fn wrap_key(
        &self,
        session: BackendSession,
        mechanism: &Mechanism,
        wrapping_key: BackendObject,
        key: BackendObject,
    ) -> Result<Vec<u8>>;
    /// `C_UnwrapKey`.
    fn unwrap_key(
        &self,
        session: BackendSession,
        mechanism: &Mechanism,
        unwrapping_key: BackendObject,
        wrapped: &[u8],
        template: &[Attribute],
    ) -> Result<BackendObject>;
    /// `C_DeriveKey`.
    fn derive_key(
        &self,
        session: BackendSession,
        mechanism: &Mechanism,
        base_key: BackendObject,
        template: &[Attribute],
    ) -> Result<BackendObject>;
    /// `C_SeedRandom`.
    fn seed_random(&self, session: BackendSession, seed: &[u8]) -> Result<()>;
    /// `C_GenerateRandom`.
    fn generate_random(&self, session: BackendSession, len: usize) -> Result<Vec<u8>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_show_as_their_number() {
        let (s, o) = (BackendSession(3), BackendObject(7));
        assert_eq!(
            (s.to_string(), o.to_string()),
            ("3".to_owned(), "7".to_owned())
        );
        assert_eq!((s.get(), o.get()), (3, 7));
        assert_eq!(numbers(&[o, BackendObject(9)]), "7, 9");
        assert_eq!(numbers(&[]), "");
    }
}
