//! `keyward policy check FILE`: exit codes and messages a script relies on.

use std::path::Path;
use std::process::Command;

fn keyward() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keyward"))
}

#[test]
fn the_example_policy_is_valid() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/example-policy.toml");
    let out = keyward()
        .args(["policy", "check"])
        .arg(&example)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("valid (strict mode"), "{text}");
}

#[test]
fn a_mistake_is_named_with_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.toml");
    std::fs::write(
        &file,
        "[settings]\nmode = \"strict\"\n\n[[class]]\nname = \"tls\"\npurpose = \"sining\"\n\
         algorithms = [\"ec:p256\"]\nprotect_period = \"30d\"\nprocess_period = \"60d\"\n",
    )
    .unwrap();
    let out = keyward()
        .args(["policy", "check"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("policy.toml:6:"), "{err}");
    assert!(err.contains("purpose") && err.contains("sining"), "{err}");

    let out = keyward()
        .args(["policy", "check", "--json"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
    // The error document's shape, beside the file and its verdict.
    assert!(v["error"]["message"].as_str().unwrap().contains("sining"));
    assert_eq!(v["error"]["kind"], "invalid_policy");
    assert_eq!(v["error"]["exit_code"], 1);
}

#[test]
fn a_missing_file_is_an_error_not_a_crash() {
    let out = keyward()
        .args(["policy", "check", "/nonexistent/policy.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/policy.toml"));
}
