//! keyward installed like a system component: the install step stages
//! every file where Debian expects it, never replaces an administrator's
//! configuration, and what it installs works: the systemd unit verifies,
//! p11-kit lists keyward's token through the module file, the manual page
//! names every command, the bash completion is valid bash, and `keyward
//! devices` says plainly that there is no device.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use keyward_tests::admin::keyward_bin;
use keyward_tests::tools::{describe, output, require_tool, run_ok};
use keyward_tests::{keyward_test, Env};

const MULTIARCH_MODULE: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/libkeyward_pkcs11.so";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the repository")
        .to_path_buf()
}

/// Runs the install step into `dest` with the test build's binaries.
fn install(tb: &Env, dest: &Path) -> String {
    let bins = Path::new(&tb.module).parent().expect("the build directory");
    run_ok(
        Command::new(repo().join("softhsm-config/install"))
            .arg("--destdir")
            .arg(dest)
            .args([
                "--prefix",
                "/usr",
                "--libdir",
                "/usr/lib/x86_64-linux-gnu",
                "--from",
            ])
            .arg(bins),
    )
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

keyward_test!(fn the_install_step_stages_every_file_and_keeps_an_existing_configuration(tb) {
    let dest = tempfile::tempdir().expect("temp dir");
    let d = |p: &str| dest.path().join(p.trim_start_matches('/'));
    install(&tb, dest.path());
    for (path, want) in [
        (MULTIARCH_MODULE, 0o644),
        ("/usr/sbin/keyward-agent", 0o755),
        ("/usr/bin/keyward", 0o755),
        ("/etc/keyward/keyward-agent.toml", 0o640),
        ("/lib/systemd/system/keyward-agent.service", 0o644),
        ("/usr/lib/sysusers.d/keyward.conf", 0o644),
        ("/usr/share/p11-kit/modules/keyward.module", 0o644),
        ("/usr/share/man/man1/keyward.1", 0o644),
        ("/usr/share/man/man1/keyward-agent.1", 0o644),
        ("/usr/share/man/man1/keyward-key-pubkey.1", 0o644),
        ("/usr/share/bash-completion/completions/keyward", 0o644),
        ("/usr/share/bash-completion/completions/keyward-agent", 0o644),
        ("/usr/share/zsh/vendor-completions/_keyward", 0o644),
        ("/usr/share/fish/vendor_completions.d/keyward.fish", 0o644),
        ("/usr/share/doc/keyward/example-policy.toml", 0o644),
        ("/usr/share/doc/keyward/install.md", 0o644),
    ] {
        assert_eq!(mode(&d(path)), want, "{path}: mode");
    }
    // The module file names the installed module.
    let module_file = fs::read_to_string(d("/usr/share/p11-kit/modules/keyward.module")).expect("module file");
    assert!(module_file.lines().any(|l| l == format!("module: {MULTIARCH_MODULE}")), "{module_file}");
    assert!(module_file.lines().any(|l| l == "critical: no"), "{module_file}");
    // The configuration: the reference, with the admin socket's group set.
    let config = fs::read_to_string(d("/etc/keyward/keyward-agent.toml")).expect("config");
    let reference = fs::read_to_string(repo().join("agent/keyward-agent.toml")).expect("reference");
    assert!(config.lines().any(|l| l == "admin_socket_group = \"keyward-admin\""), "{config}");
    // The agent writes its policy file; /etc is read-only to it.
    assert!(config.lines().any(|l| l == "policy = \"/var/lib/keyward/policy.toml\""), "{config}");
    assert_eq!(config.lines().count(), reference.lines().count(), "the installed configuration is the reference");
    // The binaries are the build's.
    let agent = fs::read(d("/usr/sbin/keyward-agent")).expect("agent");
    assert_eq!(agent, fs::read(Path::new(&tb.module).with_file_name("keyward-agent")).expect("built agent"));

    // Installing again keeps the administrator's configuration.
    fs::write(d("/etc/keyward/keyward-agent.toml"), "# mine\n").expect("edit");
    let again = install(&tb, dest.path());
    assert_eq!(fs::read_to_string(d("/etc/keyward/keyward-agent.toml")).expect("config"), "# mine\n");
    assert!(again.contains("kept"), "{again}");
});

keyward_test!(fn the_install_step_refuses_bad_arguments_clearly(tb) {
    let dest = tempfile::tempdir().expect("temp dir");
    let mut c = Command::new(repo().join("softhsm-config/install"));
    c.arg("--destdir").arg(dest.path()).args(["--from", "/nonexistent-keyward-build"]);
    let out = output(&mut c);
    assert!(!out.status.success(), "{}", describe(&c, &out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent-keyward-build/keyward is missing"), "{}", describe(&c, &out));
    let mut c = Command::new(repo().join("softhsm-config/install"));
    c.arg("--bogus");
    let out = output(&mut c);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown argument: --bogus"), "{}", describe(&c, &out));
    assert!(fs::read_dir(dest.path()).expect("dest").next().is_none(), "a refused install left files");
    let _ = tb;
});

keyward_test!(fn the_installed_systemd_unit_verifies(tb) {
    // CI and developers' machines have systemd-analyze (softhsm-config/setup
    // installs systemd); its absence is a failure, not a pass.
    let analyze = require_tool("systemd-analyze", "systemd");
    let dest = tempfile::tempdir().expect("temp dir");
    install(&tb, dest.path());
    let unit = dest.path().join("lib/systemd/system/keyward-agent.service");
    let text = fs::read_to_string(&unit).expect("unit");
    for line in [
        "User=keyward",
        "RuntimeDirectory=keyward",
        "StateDirectory=keyward",
        "ConfigurationDirectory=keyward",
        "ExecStart=/usr/sbin/keyward-agent --config /etc/keyward/keyward-agent.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectKernelTunables=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
    ] {
        assert!(text.lines().any(|l| l == line), "the unit lacks {line:?}:\n{text}");
    }
    // The unit as installed, its programs at their staged place (verify
    // checks that ExecStart names an executable): that path is all that
    // differs.
    let staged_agent = dest.path().join("usr/sbin/keyward-agent");
    let dir = tempfile::tempdir().expect("temp dir");
    let staged = dir.path().join("keyward-agent.service");
    let staged_text = text.replace("/usr/sbin/keyward-agent", &staged_agent.display().to_string());
    assert_eq!(staged_text.lines().count(), text.lines().count());
    fs::write(&staged, &staged_text).expect("write");
    let verify = |unit: &Path| {
        let mut c = Command::new(&analyze);
        c.args(["verify", "--man=no"]).arg(unit);
        let out = output(&mut c);
        let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), all, describe(&c, &out))
    };
    let (ok, all, described) = verify(&staged);
    assert!(ok, "{described}");
    // Verify reports unknown settings and typos as remarks with exit 0.
    assert!(!all.contains("keyward-agent.service:"), "systemd-analyze has remarks:\n{all}");

    // And a broken unit is caught: the check can fail.
    let broken = dir.path().join("broken-keyward.service");
    fs::write(&broken, staged_text.replace("ProtectSystem=strict", "ProtectSystem=stricter")).expect("write");
    let (_, all, _) = verify(&broken);
    assert!(all.contains("broken-keyward.service:") && all.contains("stricter"), "a bad setting is not reported:\n{all}");
    let missing = dir.path().join("missing-keyward.service");
    fs::write(&missing, text.replace("/usr/sbin/keyward-agent", "/nonexistent/keyward-agent")).expect("write");
    let (ok, all, _) = verify(&missing);
    assert!(!ok && all.contains("/nonexistent/keyward-agent"), "a missing program is not reported:\n{all}");
});

// p11-kit reads the user's module files only when not running as root: it
// runs as nobody (uid 65534), an application of the policy.
keyward_test!(fn p11_kit_lists_the_keyward_token_through_the_module_file(tb) with ["--policy-file", concat!(env!("CARGO_MANIFEST_DIR"), "/policies/neighbour.toml")] {
    tb.require_agent("a token behind the agent");
    let p11_kit = require_tool("p11-kit", "p11-kit");
    let setpriv = require_tool("setpriv", "util-linux");
    // nobody reaches the socket.
    fs::set_permissions(&tb.dir, fs::Permissions::from_mode(0o711)).expect("chmod the testbed");
    tb.set_agent_options(&["socket_mode = \"0666\""]);
    let dest = tempfile::tempdir().expect("temp dir");
    install(&tb, dest.path());
    // The installed module file, pointed at this build's module, in the
    // user's p11-kit configuration.
    let home = tempfile::tempdir().expect("home");
    let installed = fs::read_to_string(dest.path().join("usr/share/p11-kit/modules/keyward.module")).expect("module file");
    let mine = installed.replace(MULTIARCH_MODULE, &tb.module);
    assert_ne!(mine, installed);
    let modules = home.path().join(".config/pkcs11/modules");
    fs::create_dir_all(&modules).expect("mkdir");
    fs::write(modules.join("keyward.module"), mine).expect("write");
    for d in [home.path(), &home.path().join(".config"), &home.path().join(".config/pkcs11"), &modules] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let list = |as_nobody: bool| {
        let mut c = if as_nobody {
            let mut c = Command::new(&setpriv);
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(&p11_kit);
            c
        } else {
            Command::new(&p11_kit)
        };
        c.arg("list-modules")
            .env("HOME", home.path())
            .env_remove("XDG_CONFIG_HOME")
            .env("KEYWARD_SOCKET", &tb.socket);
        run_ok(&mut c)
    };
    let out = list(true);
    let section = out
        .split("\n")
        .skip_while(|l| !l.starts_with("keyward: "))
        .take_while(|l| l.starts_with("keyward: ") || l.starts_with(' '))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(section.contains(&tb.module), "p11-kit does not list keyward:\n{out}");
    assert!(section.contains("library-manufacturer: keyward"), "{section}");
    assert!(section.contains(&format!("token: {}", tb.token)), "p11-kit does not list the token {}:\n{section}", tb.token);
    // Without the module file, no keyward: the listing comes from it.
    fs::remove_file(modules.join("keyward.module")).expect("rm");
    let out = list(true);
    assert!(!out.contains("keyward"), "keyward listed without its module file:\n{out}");
});

keyward_test!(fn the_man_page_names_every_command_and_the_completion_is_bash(tb) {
    let bash = require_tool("bash", "bash");
    let bin = keyward_bin(&tb);
    let page = run_ok(Command::new(&bin).arg("man"));
    let help = run_ok(Command::new(&bin).arg("--help"));
    // Every command `keyward --help` lists is in keyward(1).
    let commands: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .expect("a command list")
        .lines()
        .skip(1)
        .map_while(|l| l.strip_prefix("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() > 10 && commands.contains(&"devices"), "{commands:?}");
    for c in commands {
        assert!(page.contains(&c.replace('-', "\\-")), "keyward(1) lacks {c}");
    }
    for b in [bin.clone(), bin.with_file_name("keyward-agent")] {
        let dir = tempfile::tempdir().expect("temp dir");
        let script = dir.path().join("completion.bash");
        let out = output(Command::new(&b).args(["completions", "bash"]));
        assert!(out.status.success());
        fs::write(&script, &out.stdout).expect("write");
        let mut c = Command::new(&bash);
        c.arg("-n").arg(&script);
        let checked = output(&mut c);
        assert!(checked.status.success(), "{}", describe(&c, &checked));
        // And it completes: loading it registers the completion function.
        let mut c = Command::new(&bash);
        c.arg("-c").arg(format!(". {} && complete -p {}", script.display(), b.file_name().expect("name").to_string_lossy()));
        run_ok(&mut c);
    }
    let out = output(Command::new(&bin).args(["completions", "tcsh"]));
    assert_eq!(out.status.code(), Some(2), "an unknown shell is a usage error");
});

keyward_test!(fn devices_says_plainly_that_there_is_none(tb) {
    let mut c = Command::new(keyward_bin(&tb));
    c.arg("devices");
    let out = output(&mut c);
    assert!(out.status.success(), "{}", describe(&c, &out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let hidraw_empty = fs::read_dir("/sys/class/hidraw").is_ok_and(|mut d| d.next().is_none());
    if hidraw_empty && !Path::new("/sys/bus/usb/devices").exists() {
        // Nothing to find here: the plain message, nothing else.
        assert_eq!(stdout, "no USB security devices found\n", "{}", describe(&c, &out));
    } else {
        // A machine with devices: the message or one `vvvv:pppp  maker ...` line each.
        assert!(
            stdout == "no USB security devices found\n"
                || stdout.lines().all(|l| l.len() > 11 && l.as_bytes()[4] == b':' && &l[9..11] == "  "),
            "{}",
            describe(&c, &out)
        );
    }
});
