//! The set of application calls, written down once.
//!
//! One table (the `calls!` invocation below) lists every request the
//! module sends: its variant and fields (with their serde attributes, so
//! the wire encoding is the table's), the handler method that serves it,
//! its chapter of the PKCS#11 specification, the field that holds its
//! mechanism (if any), and the PKCS#11 function it serves — one name, or
//! one per [`Op`] for the requests that stand for a family
//! (`OperationInit` is `C_EncryptInit`, `C_SignInit`, ...). From the table
//! come:
//!
//! - [`Request`], the message, with [`Request::call`], [`Request::name`],
//!   [`Request::chapter`] and [`Request::mechanism`];
//! - [`Call`], one fieldless variant per PKCS#11 function, with
//!   [`Call::ALL`], [`Call::name`] (the stable name in logs, metrics and
//!   the audit trail: `C_Sign`), [`Call::from_name`] and [`Call::chapter`];
//! - [`Handler`], one method per request with its fields by value in table
//!   order, and [`dispatch`], which calls the method a request names.
//!
//! A request that serves no PKCS#11 function (a `Hello` after the first, an
//! update or final of a recover operation, a single-part or final request
//! of a verification, which travel as `Verify` and `VerifyFinal`) is
//! [`Call::Other`], named `other`.

use serde::{Deserialize, Serialize};

use crate::attr::Attribute;
use crate::message::{ObjectHandle, Op, OpInit, SessionHandle, SlotId};
use crate::types::Mechanism;
use crate::version::VersionRange;
use crate::Secret;

/// A chapter of the PKCS#11 specification: how the calls are grouped in
/// the module (`module/src/fns/`) and the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Chapter {
    /// General-purpose functions (and keyward's own `Hello`).
    General,
    /// Slot and token management, PIN set-up included.
    SlotToken,
    /// Session management, login included.
    Session,
    /// Object management, search included.
    Object,
    /// Encryption, decryption, digests, signatures and verification.
    Crypto,
    /// Key management: generation, wrapping, unwrapping, derivation.
    Keys,
    /// Random number generation.
    Random,
}

impl Chapter {
    /// Every chapter, in specification order.
    pub const ALL: [Chapter; 7] = [
        Chapter::General,
        Chapter::SlotToken,
        Chapter::Session,
        Chapter::Object,
        Chapter::Crypto,
        Chapter::Keys,
        Chapter::Random,
    ];

    /// The chapter's short name (the module's file for it).
    pub fn name(self) -> &'static str {
        match self {
            Chapter::General => "general",
            Chapter::SlotToken => "slot_token",
            Chapter::Session => "session",
            Chapter::Object => "object",
            Chapter::Crypto => "crypto",
            Chapter::Keys => "keys",
            Chapter::Random => "random",
        }
    }
}

/// A field that names a call's mechanism: a mechanism, a `C_*Init`'s
/// arguments, or a deferred init.
pub trait MechanismField {
    /// The `CKM_*` type, if there is one.
    fn mechanism_type(&self) -> Option<u64>;
}

impl MechanismField for Mechanism {
    fn mechanism_type(&self) -> Option<u64> {
        Some(self.mechanism)
    }
}

impl MechanismField for OpInit {
    fn mechanism_type(&self) -> Option<u64> {
        Some(self.mechanism.mechanism)
    }
}

impl MechanismField for Option<OpInit> {
    fn mechanism_type(&self) -> Option<u64> {
        self.as_ref().map(|i| i.mechanism.mechanism)
    }
}

/// Generates [`Request`], [`Call`], [`Handler`] and [`dispatch`] from the
/// table. Each row:
///
/// ```text
/// /// docs
/// Variant { field: Type, ... } => handler_method, Chapter
///     [, mechanism field]
///     [, call Call = "C_Name"  |  , by op { Op => Call = "C_Name", ... }];
/// ```
macro_rules! calls {
    (
        $(
            $(#[$vattr:meta])*
            $variant:ident {
                $( $(#[$fattr:meta])* $field:ident : $fty:ty ),* $(,)?
            }
            => $handler:ident, $chapter:ident
            $(, mechanism $mech:ident)?
            $(, call $single:ident = $sname:literal)?
            $(, by $sel:ident { $( $opv:ident => $call:ident = $name:literal ),* $(,)? })?
            ;
        )*
    ) => {
        /// A call from the module to the agent: one variant per row of the
        /// call table.
        #[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
        pub enum Request {
            $(
                $(#[$vattr])*
                $variant {
                    $( $(#[$fattr])* $field: $fty, )*
                },
            )*
        }

        /// A PKCS#11 function the agent serves (plus [`Call::Other`]): what
        /// metrics count, logs and the audit trail name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Call {
            $(
                $( #[doc = concat!("`", $sname, "`.")] $single, )?
                $( $( #[doc = concat!("`", $name, "`.")] $call, )* )?
            )*
            /// A request that serves no PKCS#11 function.
            Other,
        }

        impl Call {
            /// Every call, in table order (`Call::X as usize` is its index).
            pub const ALL: &'static [Call] = &[
                $( $( Call::$single, )? $( $( Call::$call, )* )? )*
                Call::Other,
            ];

            /// The PKCS#11 function's name (`C_Sign`), or `other`.
            pub fn name(self) -> &'static str {
                match self {
                    $( $( Call::$single => $sname, )? $( $( Call::$call => $name, )* )? )*
                    Call::Other => "other",
                }
            }

            /// The chapter of the specification the function belongs to.
            pub fn chapter(self) -> Chapter {
                match self {
                    $(
                        $( Call::$single => Chapter::$chapter, )?
                        $( $( Call::$call => Chapter::$chapter, )* )?
                    )*
                    Call::Other => Chapter::General,
                }
            }
        }

        impl Request {
            /// The PKCS#11 function this request serves. A `C_*Init` the
            /// module deferred travels with the operation's first request,
            /// which is that request's call (`C_Sign`, not `C_SignInit`).
            pub fn call(&self) -> Call {
                match self {
                    $(
                        Request::$variant { $( $sel, )? .. } => calls!(
                            @call [$($single)?] [$( $sel; $( $opv => $call ),* )?]
                        ),
                    )*
                }
            }

            /// The chapter of the request's row (a request that serves no
            /// PKCS#11 function still has one: an update of a recover
            /// operation is `Crypto`).
            pub fn chapter(&self) -> Chapter {
                match self {
                    $( Request::$variant { .. } => Chapter::$chapter, )*
                }
            }

            /// The mechanism type the request uses, if it carries one (a
            /// `C_*Init`, deferred or not, a key generation, wrap, unwrap or
            /// derivation).
            pub fn mechanism(&self) -> Option<u64> {
                match self {
                    $(
                        Request::$variant { $( $mech, )? .. } => calls!(@mech $($mech)?),
                    )*
                }
            }
        }

        /// Serves requests: one method per row of the call table, its fields
        /// by value in table order. [`dispatch`] calls the one a request
        /// names.
        pub trait Handler {
            /// Who is asking (the agent's per-process client state).
            type Client: ?Sized;
            /// What a call answers.
            type Output;
            $(
                #[doc = concat!("Serves [`Request::", stringify!($variant), "`].")]
                #[doc = ""]
                $(#[$vattr])*
                fn $handler(&self, client: &Self::Client, $( $field: $fty ),*) -> Self::Output;
            )*
        }

        /// Hands `req` to the [`Handler`] method of its row.
        pub fn dispatch<H: Handler + ?Sized>(h: &H, client: &H::Client, req: Request) -> H::Output {
            match req {
                $(
                    Request::$variant { $( $field ),* } => h.$handler(client, $( $field ),*),
                )*
            }
        }
    };

    (@call [$single:ident] []) => { Call::$single };
    (@call [] []) => { Call::Other };
    (@call [] [$sel:ident; $( $opv:ident => $call:ident ),*]) => {
        match $sel {
            $( Op::$opv => Call::$call, )*
            // Rows that list every operation make this arm unreachable.
            #[allow(unreachable_patterns)]
            _ => Call::Other,
        }
    };

    (@mech) => { None };
    (@mech $mech:ident) => { MechanismField::mechanism_type($mech) };
}

calls! {
    /// First message on every connection: the application-protocol
    /// versions the module speaks (see [`crate::version`]). Its place and
    /// shape never change.
    Hello { versions: VersionRange } => hello, General;

    GetSlotList { token_present: bool } => get_slot_list, SlotToken,
        call GetSlotList = "C_GetSlotList";
    GetSlotInfo { slot: SlotId } => get_slot_info, SlotToken,
        call GetSlotInfo = "C_GetSlotInfo";
    GetTokenInfo { slot: SlotId } => get_token_info, SlotToken,
        call GetTokenInfo = "C_GetTokenInfo";
    GetMechanismList { slot: SlotId } => get_mechanism_list, SlotToken,
        call GetMechanismList = "C_GetMechanismList";
    GetMechanismInfo { slot: SlotId, mechanism: u64 } => get_mechanism_info, SlotToken,
        call GetMechanismInfo = "C_GetMechanismInfo";
    /// `label` is the 32-byte blank-padded label as given.
    InitToken {
        slot: SlotId,
        so_pin: Secret,
        #[serde(with = "serde_bytes")]
        label: Vec<u8>,
    } => init_token, SlotToken,
        call InitToken = "C_InitToken";
    InitPin { session: SessionHandle, pin: Secret } => init_pin, SlotToken,
        call InitPin = "C_InitPIN";
    SetPin { session: SessionHandle, old_pin: Secret, new_pin: Secret } => set_pin, SlotToken,
        call SetPin = "C_SetPIN";

    OpenSession { slot: SlotId, flags: u64 } => open_session, Session,
        call OpenSession = "C_OpenSession";
    CloseSession { session: SessionHandle } => close_session, Session,
        call CloseSession = "C_CloseSession";
    CloseAllSessions { slot: SlotId } => close_all_sessions, Session,
        call CloseAllSessions = "C_CloseAllSessions";
    GetSessionInfo { session: SessionHandle } => get_session_info, Session,
        call GetSessionInfo = "C_GetSessionInfo";
    /// `pin` is `None` when the application passed a NULL PIN.
    Login { session: SessionHandle, user_type: u64, pin: Option<Secret> } => login, Session,
        call Login = "C_Login";
    Logout { session: SessionHandle } => logout, Session,
        call Logout = "C_Logout";

    CreateObject {
        session: SessionHandle,
        #[serde(deserialize_with = "crate::attr::template")]
        template: Vec<Attribute>,
    } => create_object, Object,
        call CreateObject = "C_CreateObject";
    CopyObject {
        session: SessionHandle,
        object: ObjectHandle,
        #[serde(deserialize_with = "crate::attr::template")]
        template: Vec<Attribute>,
    } => copy_object, Object,
        call CopyObject = "C_CopyObject";
    DestroyObject { session: SessionHandle, object: ObjectHandle } => destroy_object, Object,
        call DestroyObject = "C_DestroyObject";
    GetObjectSize { session: SessionHandle, object: ObjectHandle } => get_object_size, Object,
        call GetObjectSize = "C_GetObjectSize";
    GetAttributeValue { session: SessionHandle, object: ObjectHandle, types: Vec<u64> }
        => get_attribute_value, Object,
        call GetAttributeValue = "C_GetAttributeValue";
    SetAttributeValue {
        session: SessionHandle,
        object: ObjectHandle,
        #[serde(deserialize_with = "crate::attr::template")]
        template: Vec<Attribute>,
    } => set_attribute_value, Object,
        call SetAttributeValue = "C_SetAttributeValue";
    /// `C_FindObjectsInit`: the agent runs the whole search and answers
    /// every match at once; the module iterates locally.
    FindObjects {
        session: SessionHandle,
        #[serde(deserialize_with = "crate::attr::template")]
        template: Vec<Attribute>,
    } => find_objects, Object,
        call FindObjectsInit = "C_FindObjectsInit";

    /// `C_EncryptInit`, `C_SignInit`, ... (`key` is `None` for digests).
    OperationInit { session: SessionHandle, op: Op, init: OpInit } => operation_init, Crypto,
        mechanism init,
        by op {
            Encrypt => EncryptInit = "C_EncryptInit",
            Decrypt => DecryptInit = "C_DecryptInit",
            Digest => DigestInit = "C_DigestInit",
            Sign => SignInit = "C_SignInit",
            Verify => VerifyInit = "C_VerifyInit",
            SignRecover => SignRecoverInit = "C_SignRecoverInit",
            VerifyRecover => VerifyRecoverInit = "C_VerifyRecoverInit",
        };
    /// Single-part `C_Encrypt`, `C_Decrypt`, `C_Digest`, `C_Sign`,
    /// `C_SignRecover`, `C_VerifyRecover`: answered with the whole output.
    Single {
        session: SessionHandle,
        op: Op,
        init: Option<OpInit>,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    } => single, Crypto,
        mechanism init,
        by op {
            Encrypt => Encrypt = "C_Encrypt",
            Decrypt => Decrypt = "C_Decrypt",
            Digest => Digest = "C_Digest",
            Sign => Sign = "C_Sign",
            SignRecover => SignRecover = "C_SignRecover",
            VerifyRecover => VerifyRecover = "C_VerifyRecover",
        };
    /// `C_Verify`.
    Verify {
        session: SessionHandle,
        init: Option<OpInit>,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        #[serde(with = "serde_bytes")]
        signature: Vec<u8>,
    } => verify, Crypto,
        mechanism init,
        call Verify = "C_Verify";
    /// `C_*Update`: answered with the output (empty for sign, verify, digest).
    Update {
        session: SessionHandle,
        op: Op,
        init: Option<OpInit>,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    } => update, Crypto,
        mechanism init,
        by op {
            Encrypt => EncryptUpdate = "C_EncryptUpdate",
            Decrypt => DecryptUpdate = "C_DecryptUpdate",
            Digest => DigestUpdate = "C_DigestUpdate",
            Sign => SignUpdate = "C_SignUpdate",
            Verify => VerifyUpdate = "C_VerifyUpdate",
        };
    /// `C_DigestKey`.
    DigestKey { session: SessionHandle, key: ObjectHandle } => digest_key, Crypto,
        call DigestKey = "C_DigestKey";
    /// `C_EncryptFinal`, `C_DecryptFinal`, `C_DigestFinal`, `C_SignFinal`.
    /// `data` is update input the module held back (digest, sign): the
    /// agent feeds it to one `C_*Update` before the final call.
    Final {
        session: SessionHandle,
        op: Op,
        init: Option<OpInit>,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    } => final_, Crypto,
        mechanism init,
        by op {
            Encrypt => EncryptFinal = "C_EncryptFinal",
            Decrypt => DecryptFinal = "C_DecryptFinal",
            Digest => DigestFinal = "C_DigestFinal",
            Sign => SignFinal = "C_SignFinal",
        };
    /// `C_VerifyFinal`, with held-back update input as in `Final`.
    VerifyFinal {
        session: SessionHandle,
        init: Option<OpInit>,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        #[serde(with = "serde_bytes")]
        signature: Vec<u8>,
    } => verify_final, Crypto,
        mechanism init,
        call VerifyFinal = "C_VerifyFinal";

    GenerateKey {
        session: SessionHandle,
        mechanism: Mechanism,
        #[serde(deserialize_with = "crate::attr::template")]
        template: Vec<Attribute>,
    } => generate_key, Keys,
        mechanism mechanism,
        call GenerateKey = "C_GenerateKey";
    GenerateKeyPair {
        session: SessionHandle,
        mechanism: Mechanism,
        #[serde(deserialize_with = "crate::attr::template")]
        public_template: Vec<Attribute>,
        #[serde(deserialize_with = "crate::attr::template")]
        private_template: Vec<Attribute>,
    } => generate_key_pair, Keys,
        mechanism mechanism,
        call GenerateKeyPair = "C_GenerateKeyPair";
    WrapKey {
        session: SessionHandle,
        mechanism: Mechanism,
        wrapping_key: ObjectHandle,
        key: ObjectHandle,
    } => wrap_key, Keys,
        mechanism mechanism,
        call WrapKey = "C_WrapKey";
    UnwrapKey {
        session: SessionHandle,
        mechanism: Mechanism,
        unwrapping_key: ObjectHandle,
        #[serde(with = "serde_bytes")]
        wrapped_key: Vec<u8>,
        #[serde(deserialize_with = "crate::attr::template")]
        template: Vec<Attribute>,
    } => unwrap_key, Keys,
        mechanism mechanism,
        call UnwrapKey = "C_UnwrapKey";
    DeriveKey {
        session: SessionHandle,
        mechanism: Mechanism,
        base_key: ObjectHandle,
        #[serde(deserialize_with = "crate::attr::template")]
        template: Vec<Attribute>,
    } => derive_key, Keys,
        mechanism mechanism,
        call DeriveKey = "C_DeriveKey";

    SeedRandom {
        session: SessionHandle,
        #[serde(with = "serde_bytes")]
        seed: Vec<u8>,
    } => seed_random, Random,
        call SeedRandom = "C_SeedRandom";
    GenerateRandom { session: SessionHandle, len: u64 } => generate_random, Random,
        call GenerateRandom = "C_GenerateRandom";
}

impl Request {
    /// The stable name of the PKCS#11 function the request serves
    /// (`C_Sign`), or `other`.
    pub fn name(&self) -> &'static str {
        self.call().name()
    }
}

impl Call {
    /// The call named `name` ([`Call::name`]'s inverse).
    pub fn from_name(name: &str) -> Option<Call> {
        Call::ALL.iter().copied().find(|c| c.name() == name)
    }

    /// Its index in [`Call::ALL`], for tables of counters.
    pub fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
#[path = "calls_tests.rs"]
mod tests;
