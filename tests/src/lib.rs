//! keyward's integration and interoperability test harness.
//!
//! Layout:
//! - [`harness`]: one testbed (SoftHSM2 token + agent) per test, and the
//!   re-execution of the test binary that gives every test its own process
//!   (the module is a process-global library that reads `KEYWARD_SOCKET`
//!   from the environment, so two tests cannot share a process).
//!   [`keyward_test!`] generates such a test.
//! - [`p11`]: loading and initialising the module with `cryptoki`, finding
//!   the test token, logging in, generating keys.
//! - [`raw`]: calls through the module's `CK_FUNCTION_LIST` for what
//!   `cryptoki` cannot express (NULL pointers, short buffers, ...). All of
//!   the suite's `unsafe` code is there.
//! - [`tools`]: running real clients (pkcs11-tool, openssl) and failing
//!   loudly when they are missing.
//! - [`admin`]: a policy file for the testbed's agent, the `keyward` CLI
//!   against its admin socket, managed keys found by label.
//! - [`servers`]: what the NSS, GnuTLS and Chromium client tests share (TLS
//!   servers as child processes, bounded client runs, PIN files).
//! - [`clients`]: what the OpenSSH, Java and Python client tests share (a
//!   policy with granted, verify-only and hidden keys; a key's certificate).
//! - [`json`]: a small reader for `keyward --json` documents.
//! - [`probe`]: the probe processes (`src/bin/*_probe`) driven from a test.
//! - [`load`]: mixed load from several `load_probe` processes, judged by
//!   their summaries, and the agent's memory and descriptors.
//! - [`postgres`]: a throw-away PostgreSQL server per test (the fleet's
//!   shared store), password logins only, stopped, killed and started again.
//!
//! The tests are one binary, `tests/integration` (one module per area), and
//! the testbeds come from `keyward-testbed`, which uses the binaries of this
//! build and builds nothing. Run: build everything, then the suite, or one
//! module of it:
//!
//! ```text
//! cargo build --workspace
//! cargo test -p keyward-tests
//! cargo test -p keyward-tests --test integration wire::
//! ```
//!
//! `KEYWARD_TEST_DIRECT=1` runs the same bodies against SoftHSM2 loaded
//! directly (a plain SoftHSM2 token with the same label and PINs), to compare
//! keyward with the HSM it fronts. Tests that need an agent (restart, policy)
//! fail in that mode, by design.

pub mod admin;
pub mod clients;
pub mod fleet;
pub mod harness;
pub mod json;
pub mod load;
pub mod p11;
pub mod pki;
pub mod postgres;
pub mod probe;
pub mod raw;
pub mod roster;
pub mod servers;
pub mod tools;
pub mod transcript;
pub mod webhook;

pub use harness::Env;

/// Defines a test that runs `body` in its own process with its own testbed.
///
/// ```text
/// keyward_test!(fn signs(tb) { let ctx = Ctx::new(&tb); ... });
/// keyward_test!(fn refuses(tb) with ["--policy", "strict"] { ... });
/// ```
///
/// `tb` is the [`Env`] of the testbed (module path, socket, token label,
/// PINs, testbed directory). The words after `with` are extra arguments to
/// `testbed up`.
#[macro_export]
macro_rules! keyward_test {
    ($(#[$meta:meta])* fn $name:ident($tb:ident) $body:block) => {
        $crate::keyward_test!($(#[$meta])* fn $name($tb) with [] $body);
    };
    ($(#[$meta:meta])* fn $name:ident($tb:ident) with [$($arg:expr),* $(,)?] $body:block) => {
        #[test]
        $(#[$meta])*
        fn $name() {
            $crate::harness::run(
                concat!(module_path!(), "::", stringify!($name)),
                &[$($arg),*],
                |$tb: $crate::harness::Env| $body,
            );
        }
    };
}
