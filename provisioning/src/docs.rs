//! `keyward man [DIR]` and `keyward completions SHELL` (both hidden): the
//! manual pages and shell completions, generated from the command-line
//! definition itself so that they never drift from it. The install step
//! runs them.

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;

use crate::cli::{Cli, Shell};

/// Writes the completion script for `shell` to `out`.
pub fn completions(shell: Shell, out: &mut dyn Write) {
    let mut cmd = Cli::command();
    let name = cmd.get_name().to_string();
    match shell {
        Shell::Bash => clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, name, out),
        Shell::Zsh => clap_complete::generate(clap_complete::Shell::Zsh, &mut cmd, name, out),
        Shell::Fish => clap_complete::generate(clap_complete::Shell::Fish, &mut cmd, name, out),
    }
}

/// With a directory: `keyward.1` and one page per sub-command
/// (`keyward-key-pubkey.1`, ...) written there. Without: `keyward.1` on
/// `out`.
pub fn man(dir: Option<&Path>, out: &mut dyn Write) -> std::io::Result<()> {
    let cmd = Cli::command();
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            clap_mangen::generate_to(cmd, dir)
        }
        None => clap_mangen::Man::new(cmd).render(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_man_page_names_every_top_level_command() {
        let mut page = Vec::new();
        man(None, &mut page).expect("render");
        let page = String::from_utf8(page).expect("UTF-8");
        let cmd = Cli::command();
        let visible: Vec<_> = cmd.get_subcommands().filter(|c| !c.is_hide_set()).collect();
        assert!(visible.len() > 10, "too few commands: {}", visible.len());
        for sub in visible {
            // roff escapes '-' as '\-'.
            let name = sub.get_name().replace('-', "\\-");
            assert!(
                page.contains(&name),
                "keyward.1 lacks the command {name}:\n{page}"
            );
        }
        for hidden in ["completions", "man"] {
            assert!(
                !page.contains(&format!("keyward\\-{hidden}(1)")),
                "keyward.1 shows the hidden {hidden}"
            );
        }
    }

    #[test]
    fn the_man_pages_land_in_the_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        man(Some(dir.path()), &mut std::io::sink()).expect("generate");
        for page in ["keyward.1", "keyward-status.1", "keyward-key-pubkey.1"] {
            assert!(dir.path().join(page).is_file(), "{page} is missing");
        }
    }

    #[test]
    fn every_shell_gets_a_script_naming_the_commands() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut script = Vec::new();
            completions(shell, &mut script);
            let script = String::from_utf8(script).expect("UTF-8");
            assert!(
                script.contains("status") && script.contains("audit"),
                "{shell:?}:\n{script}"
            );
        }
    }
}
