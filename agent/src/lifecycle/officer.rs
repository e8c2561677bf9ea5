//! The backend's security officer, for what only the SO may do: creating
//! or generating a key with `CKA_TRUSTED` true (the backup key's wrapping
//! half, a transport key of `keyward key export`).
//!
//! PKCS#11 keeps one login state per application: the agent's sessions
//! are logged in as the user and cannot also be the SO. So the agent runs
//! itself once more as a short-lived child (`keyward-agent officer`,
//! hidden), which loads the token's library, logs in as SO with the
//! configured `backend_so_pin`, makes the one object, logs out and exits.
//! The job (library, token, SO PIN, template — with a key value where one
//! is created) goes through the child's standard input, never its
//! arguments or environment; both ends zeroise their copies. The object is
//! a public token object (an SO session cannot make private ones); the
//! agent finds it afterwards by its `CKA_ID`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use keyward_protocol::{Attribute, Mechanism};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::config::BackendSelector;
use crate::tokens::VirtualToken;

use super::{fail, AResult, AdminErrorKind};

/// The hidden sub-command the child runs.
pub const OFFICER_COMMAND: &str = "officer";

/// The largest job the child reads (templates are small).
const MAX_JOB: u64 = 1 << 20;

/// What the SO makes.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum OfficerAction {
    /// `C_CreateObject` with this template.
    Create(Vec<Attribute>),
    /// `C_GenerateKey` with this mechanism and template.
    Generate(Mechanism, Vec<Attribute>),
}

/// One job for the child.
#[derive(Serialize, Deserialize)]
struct Job {
    library: PathBuf,
    /// `(label, serial)`: exactly one is set.
    token: (Option<String>, Option<String>),
    so_pin: Zeroizing<Vec<u8>>,
    action: OfficerAction,
}

impl Drop for Job {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        let (OfficerAction::Create(t) | OfficerAction::Generate(_, t)) = &mut self.action;
        for a in t.iter_mut() {
            if let keyward_protocol::AttrValue::Leaf(keyward_protocol::Value::Bytes(v)) =
                &mut a.value
            {
                v.zeroize();
            }
        }
    }
}

/// Runs `action` as the backend's SO on token `t`, in a child process.
/// Refused when the token has no `backend_so_pin`.
pub(crate) fn as_officer(t: &VirtualToken, action: OfficerAction) -> AResult<()> {
    let Some(so_pin) = &t.config.backend_so_pin else {
        return fail(
            AdminErrorKind::Invalid,
            format!(
                "token {:?}: only the HSM's security officer may mark a key trusted, and the \
                 agent's configuration gives no backend_so_pin for this token",
                t.config.label
            ),
        );
    };
    let so_pin = so_pin.read().map_err(|e| super::AdminError {
        kind: AdminErrorKind::Failed,
        message: format!("token {:?}: backend_so_pin: {e}", t.config.label),
    })?;
    let token = match t.config.selector() {
        BackendSelector::Label(l) => (Some(l), None),
        BackendSelector::Serial(s) => (None, Some(s)),
    };
    let job = Job {
        library: t.config.library.clone(),
        token,
        so_pin,
        action,
    };
    let bytes = Zeroizing::new(postcard::to_stdvec(&job).map_err(|e| super::AdminError {
        kind: AdminErrorKind::Failed,
        message: format!("officer job: {e}"),
    })?);
    drop(job);
    run_child(&bytes).map_err(|message| super::AdminError {
        kind: AdminErrorKind::Failed,
        message: format!("HSM security officer: {message}"),
    })
}

/// The objects of class `cko` with `CKA_ID` `id` that the SO's child
/// made, once this process's sessions see them (10 s at most; none
/// after that): a backend may take a moment to show one process the
/// token objects another made (SoftHSM2 notices them when its token files
/// change, which it checks at a coarse granularity).
pub(crate) fn seen(
    s: &super::hsm::HsmSession<'_>,
    id: &[u8],
    cko: u64,
) -> AResult<Vec<crate::backend::BackendObject>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let found = s.by_id(id, cko)?;
        if !found.is_empty() || std::time::Instant::now() >= deadline {
            return Ok(found);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Starts `keyward-agent officer`, hands it `job` and waits for its word.
fn run_child(job: &[u8]) -> Result<(), String> {
    let exe = officer_exe()?;
    let mut child = Command::new(&exe)
        .arg(OFFICER_COMMAND)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    let written = child
        .stdin
        .take()
        .ok_or_else(|| "no pipe to the child".to_owned())
        .and_then(|mut input| {
            input
                .write_all(job)
                .map_err(|e| format!("cannot write to the child: {e}"))
        });
    let output = child
        .wait_with_output()
        .map_err(|e| format!("the child: {e}"))?;
    written?;
    let said = String::from_utf8_lossy(&output.stdout);
    let said = said.trim();
    if output.status.success() && said == "ok" {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&output.stderr);
    let why = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no message");
    Err(why
        .trim_start_matches("keyward-agent: ")
        .trim_start_matches("error: ")
        .to_owned())
}

/// The agent's own binary: `KEYWARD_AGENT_EXE` where a test harness runs
/// the lifecycle inside another binary, else this process's executable.
fn officer_exe() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("KEYWARD_AGENT_EXE") {
        return Ok(PathBuf::from(p));
    }
    std::env::current_exe().map_err(|e| format!("cannot find the agent's executable: {e}"))
}

/// The child's side: reads one job from `input`, carries it out, says
/// `ok` on `output`. Errors name the step, never the PIN or a value.
pub fn serve(input: &mut dyn Read, output: &mut dyn Write) -> Result<(), String> {
    let mut bytes = Zeroizing::new(Vec::new());
    input
        .take(MAX_JOB + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("officer: cannot read the job: {e}"))?;
    if bytes.len() as u64 > MAX_JOB {
        return Err("officer: the job is too large".into());
    }
    let job: Job =
        postcard::from_bytes(&bytes).map_err(|e| format!("officer: malformed job: {e}"))?;
    let selector = match &job.token {
        (Some(l), _) => BackendSelector::Label(l.clone()),
        (None, Some(s)) => BackendSelector::Serial(s.clone()),
        (None, None) => return Err("officer: the job names no token".into()),
    };
    let lib = crate::backend::ffi::Library::load(&job.library)?;
    let token = crate::backend::ffi::Token::open_as(
        lib,
        &selector,
        job.so_pin.clone(),
        cryptoki_sys::CKU_SO,
    )?;
    use crate::backend::Backend;
    let session = token.anchor_session();
    let made = match &job.action {
        OfficerAction::Create(template) => token
            .create_object(session, template.as_slice())
            .map_err(|e| format!("C_CreateObject: {e}")),
        OfficerAction::Generate(mechanism, template) => token
            .generate_key(session, mechanism, template.as_slice())
            .map_err(|e| format!("C_GenerateKey: {e}")),
    };
    let _ = token.logout(session);
    made?;
    output
        .write_all(b"ok\n")
        .map_err(|e| format!("officer: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(input: &[u8]) -> (Result<(), String>, Vec<u8>) {
        let mut out = Vec::new();
        let r = serve(&mut &input[..], &mut out);
        (r, out)
    }

    #[test]
    fn a_malformed_oversized_or_empty_job_is_refused_without_saying_ok() {
        for (input, says) in [
            (Vec::new(), "malformed job"),
            (b"not a job".to_vec(), "malformed job"),
            (vec![0xff; (MAX_JOB + 1) as usize], "too large"),
        ] {
            let (r, out) = served(&input);
            let e = r.unwrap_err();
            assert!(e.contains(says), "{e}");
            assert!(out.is_empty());
        }
    }

    #[test]
    fn a_job_naming_no_token_or_a_missing_library_is_refused_and_names_no_secret() {
        let job = |token: (Option<String>, Option<String>), library: &str| Job {
            library: PathBuf::from(library),
            token,
            so_pin: Zeroizing::new(b"so-pin-secret".to_vec()),
            action: OfficerAction::Create(vec![Attribute::bytes(
                cryptoki_sys::CKA_VALUE,
                b"key-value-secret".to_vec(),
            )]),
        };
        for (j, says) in [
            (job((None, None), "/nonexistent/lib.so"), "names no token"),
            (
                job((Some("t".into()), None), "/nonexistent/lib.so"),
                "lib.so",
            ),
        ] {
            let bytes = postcard::to_stdvec(&j).unwrap();
            let (r, out) = served(&bytes);
            let e = r.unwrap_err();
            assert!(e.contains(says), "{e}");
            assert!(!e.contains("secret"), "{e}");
            assert!(out.is_empty());
        }
    }
}
