//! General-purpose functions (PKCS#11 5.4): initialise, finalise, info.

use std::sync::Once;

use pkcs11_sys::{CK_INFO, CK_VERSION};

use crate::client;
use crate::error::Result;
use crate::ffi::{pad, InitArgs, Out, Reserved};

/// Installs the stderr logger once, and only when `KEYWARD_LOG` asks for it:
/// a library in someone else's process is silent by default.
fn init_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Some(level) = std::env::var("KEYWARD_LOG").ok().filter(|l| !l.is_empty()) {
            let _ = env_logger::Builder::new()
                .parse_filters(&level)
                .target(env_logger::Target::Stderr)
                .try_init();
        }
    });
}

/// `C_Initialize`: no connection is made here; the agent is reached lazily.
pub(crate) fn initialize(args: InitArgs) -> Result<()> {
    args.check()?;
    init_logging();
    client::initialize()
}

/// `C_Finalize`.
pub(crate) fn finalize(reserved: Reserved) -> Result<()> {
    reserved.check()?;
    client::finalize()
}

fn crate_version() -> CK_VERSION {
    CK_VERSION {
        major: env!("CARGO_PKG_VERSION_MAJOR").parse().unwrap_or(0),
        minor: env!("CARGO_PKG_VERSION_MINOR").parse().unwrap_or(0),
    }
}

/// `C_GetInfo`, answered locally.
pub(crate) fn get_info(out: Out<CK_INFO>) -> Result<()> {
    out.write(CK_INFO {
        cryptokiVersion: CK_VERSION {
            major: 2,
            minor: 40,
        },
        manufacturerID: pad("keyward"),
        flags: 0,
        libraryDescription: pad("keyward PKCS#11 module"),
        libraryVersion: crate_version(),
    })
}
