//! Mechanisms and the info structures of slots, tokens and sessions.

use serde::{Deserialize, Serialize};

/// `CK_VERSION`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Version {
    /// Major number.
    pub major: u8,
    /// Minor number.
    pub minor: u8,
}

/// `CK_SLOT_INFO`; strings are unpadded and the module pads them.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct SlotInfo {
    /// `slotDescription`.
    pub description: String,
    /// `manufacturerID`.
    pub manufacturer: String,
    /// `CKF_*` slot flags.
    pub flags: u64,
    /// `hardwareVersion`.
    pub hardware_version: Version,
    /// `firmwareVersion`.
    pub firmware_version: Version,
}

/// `CK_TOKEN_INFO`; strings are unpadded and the module pads them.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[allow(missing_docs)]
pub struct TokenInfo {
    pub label: String,
    pub manufacturer: String,
    pub model: String,
    pub serial_number: String,
    pub flags: u64,
    pub max_session_count: u64,
    pub session_count: u64,
    pub max_rw_session_count: u64,
    pub rw_session_count: u64,
    pub max_pin_len: u64,
    pub min_pin_len: u64,
    pub total_public_memory: u64,
    pub free_public_memory: u64,
    pub total_private_memory: u64,
    pub free_private_memory: u64,
    pub hardware_version: Version,
    pub firmware_version: Version,
    /// `utcTime`, 16 characters, or empty where the token has no clock.
    pub utc_time: String,
}

/// `CK_MECHANISM_INFO`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MechanismInfo {
    /// `ulMinKeySize`.
    pub min_key_size: u64,
    /// `ulMaxKeySize`.
    pub max_key_size: u64,
    /// `CKF_*` mechanism flags.
    pub flags: u64,
}

/// `CK_SESSION_INFO`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionInfo {
    /// The virtual slot.
    pub slot_id: u64,
    /// `CKS_*`.
    pub state: u64,
    /// `CKF_RW_SESSION | CKF_SERIAL_SESSION`.
    pub flags: u64,
    /// `ulDeviceError`.
    pub device_error: u64,
}

/// `CK_MECHANISM` with its parameter decoded into a typed shape.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Mechanism {
    /// `CKM_*`.
    pub mechanism: u64,
    /// The parameter.
    pub param: MechParam,
}

impl Mechanism {
    /// A mechanism without a parameter.
    pub fn plain(mechanism: u64) -> Self {
        Mechanism {
            mechanism,
            param: MechParam::None,
        }
    }
}

/// A mechanism parameter. The variant fixes the C structure the agent
/// rebuilds for the backend; the module decides the variant from the
/// mechanism type and refuses (`CKR_MECHANISM_PARAM_INVALID`) any parameter
/// it cannot read faithfully.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum MechParam {
    /// `pParameter` is NULL.
    None,
    /// A flat byte string: an IV, an AES key-wrap IV, raw data.
    Bytes(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A single `CK_ULONG` (`CK_MAC_GENERAL_PARAMS`, `CK_RC2_PARAMS`, ...).
    Ulong(u64),
    /// `CK_RSA_PKCS_PSS_PARAMS`.
    RsaPss {
        /// `hashAlg`.
        hash_alg: u64,
        /// `mgf`.
        mgf: u64,
        /// `sLen`.
        salt_len: u64,
    },
    /// `CK_RSA_PKCS_OAEP_PARAMS`.
    RsaOaep {
        /// `hashAlg`.
        hash_alg: u64,
        /// `mgf`.
        mgf: u64,
        /// `source`.
        source: u64,
        /// `pSourceData` (empty when NULL).
        #[serde(with = "serde_bytes")]
        source_data: Vec<u8>,
    },
    /// `CK_GCM_PARAMS` (either the 3.0 layout or the older one without
    /// `ulIvBits`; the agent always passes the 3.0 layout on).
    Gcm {
        /// `pIv`.
        #[serde(with = "serde_bytes")]
        iv: Vec<u8>,
        /// `ulIvBits`.
        iv_bits: u64,
        /// `pAAD`.
        #[serde(with = "serde_bytes")]
        aad: Vec<u8>,
        /// `ulTagBits`.
        tag_bits: u64,
    },
    /// `CK_AES_CTR_PARAMS`.
    Ctr {
        /// `ulCounterBits`.
        counter_bits: u64,
        /// `cb`.
        cb: [u8; 16],
    },
    /// `CK_ECDH1_DERIVE_PARAMS`.
    Ecdh1Derive {
        /// `kdf`.
        kdf: u64,
        /// `pSharedData` (empty when NULL).
        #[serde(with = "serde_bytes")]
        shared_data: Vec<u8>,
        /// `pPublicData`.
        #[serde(with = "serde_bytes")]
        public_data: Vec<u8>,
    },
    /// `CK_EDDSA_PARAMS`.
    Eddsa {
        /// `phFlag`.
        ph_flag: bool,
        /// `pContextData` (empty when NULL).
        #[serde(with = "serde_bytes")]
        context: Vec<u8>,
    },
    /// `CK_KEY_DERIVATION_STRING_DATA`.
    DerivationString(#[serde(with = "serde_bytes")] Vec<u8>),
    /// `CK_AES_CBC_ENCRYPT_DATA_PARAMS` / `CK_DES_CBC_ENCRYPT_DATA_PARAMS`
    /// (the IV length tells which).
    CbcEncryptData {
        /// `iv` (8 or 16 bytes).
        #[serde(with = "serde_bytes")]
        iv: Vec<u8>,
        /// `pData`.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
}
