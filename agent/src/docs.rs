//! `keyward-agent man [DIR]` and `keyward-agent completions SHELL` (both
//! hidden): the manual page and shell completions, generated from the
//! command-line definition so that they never drift from it. The install
//! step runs them.

use std::io::Write;
use std::path::Path;

/// `completions SHELL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    /// bash
    Bash,
    /// zsh
    Zsh,
    /// fish
    Fish,
}

/// Writes the completion script for `shell` of command line `cmd` to `out`.
pub fn completions(mut cmd: clap::Command, shell: Shell, out: &mut dyn Write) {
    let name = cmd.get_name().to_string();
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut cmd, name, out);
}

/// With a directory: `keyward-agent.1` and a page per sub-command written
/// there. Without: `keyward-agent.1` on `out`.
pub fn man(cmd: clap::Command, dir: Option<&Path>, out: &mut dyn Write) -> std::io::Result<()> {
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
    use clap::CommandFactory;

    use super::*;
    use crate::cli::Cli;

    #[test]
    fn the_man_page_names_every_visible_command_and_no_hidden_one() {
        let mut page = Vec::new();
        man(Cli::command(), None, &mut page).expect("render");
        let page = String::from_utf8(page).expect("UTF-8");
        let cmd = Cli::command();
        for sub in cmd.get_subcommands() {
            let name = sub.get_name().replace('-', "\\-");
            if sub.is_hide_set() {
                assert!(
                    !page.contains(&format!("keyward\\-agent\\-{name}(1)")),
                    "shows the hidden {name}:\n{page}"
                );
            } else {
                assert!(
                    page.contains(&name),
                    "keyward-agent.1 lacks {name}:\n{page}"
                );
            }
        }
        assert!(
            page.contains("\\-\\-config"),
            "the --config option is missing:\n{page}"
        );
    }

    #[test]
    fn every_shell_gets_a_script() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut script = Vec::new();
            completions(Cli::command(), shell, &mut script);
            let script = String::from_utf8(script).expect("UTF-8");
            assert!(
                script.contains("set-pin") && script.contains("check"),
                "{shell:?}:\n{script}"
            );
        }
    }
}
