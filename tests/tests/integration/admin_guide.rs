//! The administrator's guide shows real output: its console transcripts
//! run, in order, against a testbed set up the way the guide tells its
//! reader to (`testbed up /tmp/kw --policy-file policy/example-policy.toml
//! --admin-group 65534`),
//! and every command must print what the guide shows and exit as it says.
//!
//! `KEYWARD_GUIDE_UPDATE=1` writes what the commands printed into the guide
//! where it differs, for review with `git diff`.

use std::path::{Path, PathBuf};
use std::process::Command;

use keyward_tests::harness::Env;
use keyward_tests::keyward_test;
use keyward_tests::transcript::{self, Step};

/// Where the guide tells its reader to put the testbed.
const READER_DIR: &str = "/tmp/kw";

fn guide() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/admin-guide.md")
}

/// Runs the guide's transcripts in one shell with the testbed's
/// environment and `keyward` on the path; what each step printed, with the
/// testbed's directory written as the reader's.
fn run_steps(tb: &Env, steps: &[Step]) -> Vec<(String, i32)> {
    let bins = Path::new(&tb.module)
        .parent()
        .expect("the module's directory")
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bins.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let work = tb.path("reader");
    std::fs::create_dir_all(&work).expect("the reader's directory");
    let out = Command::new("bash")
        .arg("-c")
        .arg(transcript::script(steps))
        .current_dir(&work)
        .env("PATH", path)
        .env("TZ", "UTC")
        .output()
        .expect("run bash");
    // The reader's paths: the testbed where the guide puts it, the
    // programs where a package installs them.
    let text = String::from_utf8_lossy(&out.stdout)
        .replace(&tb.dir.display().to_string(), READER_DIR)
        .replace(&format!("{}/", bins.display()), "/usr/bin/");
    transcript::split(&text, steps.len()).unwrap_or_else(|e| panic!("the guide's transcripts: {e}"))
}

keyward_test!(fn every_console_transcript_in_the_admin_guide_prints_what_the_guide_shows(tb) with [
    "--policy-file", concat!(env!("CARGO_MANIFEST_DIR"), "/../policy/example-policy.toml"),
    "--admin-group", "65534"
] {
    tb.require_agent("the admin guide's transcripts");
    let doc = std::fs::read_to_string(guide()).expect("read docs/admin-guide.md");
    let steps = transcript::parse(&doc).unwrap_or_else(|e| panic!("docs/admin-guide.md: {e}"));
    assert!(steps.len() >= 20, "the guide has only {} console steps", steps.len());
    let results = run_steps(&tb, &steps);
    let mut wrong = Vec::new();
    let mut report = String::new();
    for (n, (step, (actual, status))) in steps.iter().zip(&results).enumerate() {
        if *status == step.exit && transcript::matches(&step.expected, actual) {
            continue;
        }
        report.push_str(&format!(
            "\n--- docs/admin-guide.md line {}: $ {}\n--- the guide shows (exit {}):\n{}\n--- the command printed (exit {status}):\n{actual}",
            step.output_lines.0,
            step.command,
            step.exit,
            step.expected.join("\n"),
        ));
        wrong.push((n, actual.clone(), *status));
    }
    if wrong.is_empty() {
        return;
    }
    if std::env::var_os("KEYWARD_GUIDE_UPDATE").is_some() {
        std::fs::write(guide(), transcript::rewrite(&doc, &steps, &wrong))
            .expect("write docs/admin-guide.md");
        eprintln!("docs/admin-guide.md: {} transcripts updated", wrong.len());
        return;
    }
    panic!(
        "{} of {} commands in docs/admin-guide.md print something else than the guide shows \
         (KEYWARD_GUIDE_UPDATE=1 writes what they print):{report}",
        wrong.len(),
        steps.len()
    );
});
