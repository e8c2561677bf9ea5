//! The administrator API, spoken on the agent's admin socket with the same
//! framing as the application protocol.

use serde::{Deserialize, Serialize};

use crate::types::Version;

/// A call from the `keyward` CLI to the agent.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum AdminRequest {
    /// Agent version, uptime, and every virtual token with its backend.
    Status,
}

/// The agent's answer to an [`AdminRequest`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum AdminResponse {
    /// The request failed; the message says why.
    Err(String),
    /// Answer to [`AdminRequest::Status`].
    Status(Status),
}

/// What `keyward status` shows.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The agent's package version.
    pub agent_version: String,
    /// The protocol version it speaks.
    pub protocol_version: u16,
    /// The agent's process id.
    pub pid: u32,
    /// Seconds since the agent started.
    pub uptime_secs: u64,
    /// The application socket.
    pub socket: String,
    /// One entry per configured virtual token.
    pub tokens: Vec<TokenStatus>,
}

/// One virtual token and the backend token behind it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TokenStatus {
    /// The virtual slot id applications see.
    pub slot: u64,
    /// The virtual token label.
    pub label: String,
    /// Whether the virtual user PIN is set.
    pub user_pin_initialized: bool,
    /// Whether `C_InitToken` is allowed (lab setting).
    pub allow_init_token: bool,
    /// Path of the backend PKCS#11 library.
    pub backend_library: String,
    /// The backend library's description and version.
    pub backend_library_description: String,
    /// `libraryVersion` of the backend.
    pub backend_library_version: Version,
    /// Whether the backend token was found and logged in.
    pub backend_present: bool,
    /// Backend token label, manufacturer, model, serial.
    pub backend_label: String,
    /// Backend token manufacturer.
    pub backend_manufacturer: String,
    /// Backend token model.
    pub backend_model: String,
    /// Backend token serial number.
    pub backend_serial: String,
    /// Why the backend is unavailable, when it is.
    pub backend_error: Option<String>,
}
