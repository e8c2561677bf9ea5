//! Console transcripts in the documentation, checked against what the
//! commands really print.
//!
//! A ` ```console ` block holds commands (lines starting `$ `, continued by
//! a trailing `\` or by a here-document up to its terminator) each followed
//! by the output it prints (standard output and standard error together).
//! A command that exits with a status other than 0 ends its output with
//! `[exit status N]`. The commands of all blocks of one file run in order in
//! one `bash`, so that files and shell variables made by one are there for
//! the next.
//!
//! Output is compared after [`normalize`]: times, long hexadecimal strings
//! (key identifiers, digests) and runs of spaces (table columns move with
//! the widths of their values) never differ. An expected line `...` stands
//! for any number of lines, and `[..]` within a line for any text.

use std::fmt::Write as _;
use std::sync::LazyLock;

use regex::Regex;

/// One command of a transcript and the output the document shows for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The command, as given to the shell (continuation lines included).
    pub command: String,
    /// The output lines the document shows (without the exit status line).
    pub expected: Vec<String>,
    /// The exit status the document shows (0 when it shows none).
    pub exit: i32,
    /// The lines of the document the output occupies: `[first, end)`,
    /// zero-based.
    pub output_lines: (usize, usize),
}

const FENCE: &str = "```console";
const PROMPT: &str = "$ ";

/// The exit status line for status `n`.
pub fn exit_line(n: i32) -> String {
    format!("[exit status {n}]")
}

fn parse_exit(line: &str) -> Option<i32> {
    line.strip_prefix("[exit status ")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The here-document terminator a command line opens, if any (`<<EOF`,
/// `<<'EOF'`, `<<-"EOF"`).
fn heredoc_end(line: &str) -> Option<String> {
    let (_, rest) = line.split_once("<<")?;
    let rest = rest.trim_start_matches('-').trim_start();
    let word: String = rest
        .trim_start_matches(['\'', '"'])
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!word.is_empty()).then_some(word)
}

/// The steps of every console block of `doc`, in order.
pub fn parse(doc: &str) -> Result<Vec<Step>, String> {
    let lines: Vec<&str> = doc.lines().collect();
    let mut steps = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim_end() != FENCE {
            i += 1;
            continue;
        }
        let start = i + 1;
        let end = (start..lines.len())
            .find(|&j| lines[j].trim_end() == "```")
            .ok_or_else(|| format!("line {}: a console block is not closed", i + 1))?;
        let mut j = start;
        if j < end && !lines[j].starts_with(PROMPT) {
            return Err(format!(
                "line {}: a console block must start with a command (`$ ...`)",
                j + 1
            ));
        }
        while j < end {
            let mut command = lines[j][PROMPT.len()..].to_owned();
            let mut heredoc = heredoc_end(&command);
            j += 1;
            while j < end && (command.ends_with('\\') || heredoc.is_some()) {
                command.push('\n');
                command.push_str(lines[j]);
                if heredoc.as_deref() == Some(lines[j].trim()) {
                    heredoc = None;
                }
                j += 1;
            }
            if let Some(word) = heredoc {
                return Err(format!(
                    "line {j}: the here-document {word} is not closed in its block"
                ));
            }
            let first = j;
            while j < end && !lines[j].starts_with(PROMPT) {
                j += 1;
            }
            let mut expected: Vec<String> =
                lines[first..j].iter().map(|l| (*l).to_owned()).collect();
            let exit = match expected.last().and_then(|l| parse_exit(l)) {
                Some(n) => {
                    expected.pop();
                    n
                }
                None => 0,
            };
            steps.push(Step {
                command,
                expected,
                exit,
                output_lines: (first, j),
            });
        }
        i = end + 1;
    }
    Ok(steps)
}

/// The bash script that runs `steps` in order, each framed by marker lines
/// that carry its index and exit status.
pub fn script(steps: &[Step]) -> String {
    let mut s = String::from("exec 2>&1 </dev/null\n");
    for (n, step) in steps.iter().enumerate() {
        let _ = write!(
            s,
            "printf '\\n{MARK}begin {n}\\n'\n{{\n{}\n}}\nprintf '\\n{MARK}end {n} %s\\n' \"$?\"\n",
            step.command
        );
    }
    s
}

const MARK: &str = "@@keyward-transcript ";

/// What each step printed and its exit status, from the script's output.
pub fn split(output: &str, count: usize) -> Result<Vec<(String, i32)>, String> {
    let mut results = Vec::with_capacity(count);
    let mut rest = output;
    for n in 0..count {
        let begin = format!("\n{MARK}begin {n}\n");
        let end = format!("\n{MARK}end {n} ");
        let b = rest
            .find(&begin)
            .ok_or_else(|| format!("step {n} did not start; the shell printed:\n{rest}"))?;
        let after = &rest[b + begin.len()..];
        let e = after
            .find(&end)
            .ok_or_else(|| format!("step {n} did not finish; it printed:\n{after}"))?;
        let tail = &after[e + end.len()..];
        let (status, next) = tail.split_once('\n').unwrap_or((tail, ""));
        let status = status
            .trim()
            .parse()
            .map_err(|_| format!("step {n}: no exit status in {status:?}"))?;
        results.push((after[..e].to_owned(), status));
        rest = next;
    }
    Ok(results)
}

fn is_hex_run(s: &str) -> bool {
    s.len() >= 8
        && s.bytes().all(|b| b.is_ascii_hexdigit())
        && s.bytes().any(|b| b.is_ascii_digit())
}

/// A line with its volatile parts replaced: date-times (`2026-12-05
/// 08:01:00`, `2026-12-05T08:01:00.25`) become `<time>` (their zone
/// stays), dates `<date>`, hexadecimal runs of 8 or more `<hex>`, and
/// runs of spaces one space.
pub fn normalize(line: &str) -> String {
    let line = TIME.replace_all(line, "<time>");
    let line = DATE.replace_all(&line, "<date>");
    let mut out = String::with_capacity(line.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if is_hex_run(word) {
            out.push_str("<hex>");
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in line.chars() {
        if c.is_ascii_alphanumeric() {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            if c == ' ' && out.ends_with(' ') {
                continue;
            }
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out.trim_end().to_owned()
}

/// A date-time as the CLI prints it; its zone (`Z`, an offset, ` UTC`)
/// stays, so that a change of how times are labelled shows.
static TIME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?").expect("the time pattern")
});

/// A date alone.
static DATE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b\d{4}-\d{2}-\d{2}\b").expect("the date pattern"));

/// Whether `actual` matches the `expected` line (both normalized), where
/// `[..]` in `expected` matches any text.
fn line_matches(expected: &str, actual: &str) -> bool {
    let parts: Vec<&str> = expected.split("[..]").collect();
    if parts.len() == 1 {
        return expected == actual;
    }
    let mut rest = actual;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            let Some(at) = rest.find(part) else {
                return false;
            };
            rest = &rest[at + part.len()..];
        }
    }
    true
}

/// Whether the `actual` output matches the `expected` lines: line by line
/// after [`normalize`], `...` standing for any number of lines. Leading and
/// trailing empty lines do not count.
pub fn matches(expected: &[String], actual: &str) -> bool {
    let exp: Vec<String> = trim_blank(expected.iter().map(|l| normalize(l)).collect());
    let act: Vec<String> = trim_blank(actual.lines().map(normalize).collect());
    match_from(&exp, &act)
}

fn trim_blank(mut lines: Vec<String>) -> Vec<String> {
    while lines.last().is_some_and(String::is_empty) {
        lines.pop();
    }
    let first = lines
        .iter()
        .position(|l| !l.is_empty())
        .unwrap_or(lines.len());
    lines.drain(..first);
    lines
}

fn match_from(exp: &[String], act: &[String]) -> bool {
    match exp.split_first() {
        None => act.is_empty(),
        Some((e, rest)) if e == "..." => (0..=act.len()).any(|skip| match_from(rest, &act[skip..])),
        Some((e, rest)) => act
            .split_first()
            .is_some_and(|(a, act_rest)| line_matches(e, a) && match_from(rest, act_rest)),
    }
}

/// `doc` with the output of each step in `fixes` (index, actual output,
/// exit status) replaced by what the command printed.
pub fn rewrite(doc: &str, steps: &[Step], fixes: &[(usize, String, i32)]) -> String {
    let lines: Vec<&str> = doc.lines().collect();
    let mut out: Vec<String> = Vec::with_capacity(lines.len());
    let mut at = 0;
    for (index, actual, status) in fixes {
        let (first, end) = steps[*index].output_lines;
        out.extend(lines[at..first].iter().map(|l| (*l).to_owned()));
        let expected = &steps[*index].expected;
        let lines = trim_blank(actual.lines().map(|l| l.trim_end().to_owned()).collect());
        // A line the guide shows with a wildcard stays as written while
        // it still matches.
        out.extend(
            lines
                .into_iter()
                .enumerate()
                .map(|(i, line)| match expected.get(i) {
                    Some(e)
                        if e.contains("[..]") && line_matches(&normalize(e), &normalize(&line)) =>
                    {
                        e.clone()
                    }
                    _ => line,
                }),
        );
        if *status != 0 {
            out.push(exit_line(*status));
        }
        at = end;
    }
    out.extend(lines[at..].iter().map(|l| (*l).to_owned()));
    let mut text = out.join("\n");
    if doc.ends_with('\n') {
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "# Title\n\ntext\n\n```console\n$ keyward key list\nNAME  STATE\nweb   active\n$ keyward key show nosuch\nkeyward: no key \"nosuch\"\n[exit status 4]\n```\n\n```sh\n$ not checked\n```\n\n```console\n$ cat > f <<'EOF'\na\nEOF\n$ echo a \\\n  b\na b\n```\n";

    #[test]
    fn console_blocks_become_steps_with_their_output_and_exit_status() {
        let steps = parse(DOC).unwrap();
        assert_eq!(steps.len(), 4);
        assert_eq!(steps[0].command, "keyward key list");
        assert_eq!(steps[0].expected, ["NAME  STATE", "web   active"]);
        assert_eq!(steps[0].exit, 0);
        assert_eq!(steps[1].exit, 4);
        assert_eq!(steps[1].expected, ["keyward: no key \"nosuch\""]);
        assert_eq!(steps[2].command, "cat > f <<'EOF'\na\nEOF");
        assert!(steps[2].expected.is_empty());
        assert_eq!(steps[3].command, "echo a \\\n  b");
        assert_eq!(steps[3].expected, ["a b"]);
    }

    #[test]
    fn a_block_must_start_with_a_command_and_be_closed() {
        assert!(parse("```console\noutput\n```\n").is_err());
        assert!(parse("```console\n$ ls\n").is_err());
        assert!(parse("```console\n$ cat <<EOF\nx\n```\n").is_err());
    }

    #[test]
    fn times_digests_and_column_widths_do_not_count_but_words_do() {
        let a = "web   active  2026-12-05 08:01:00Z  3b1c9f0e7a2d4c55";
        let b = "web active 2027-01-01 00:00:00Z 00112233aabbccdd";
        assert_eq!(normalize(a), normalize(b));
        // How a time is labelled counts.
        assert_ne!(
            normalize("at 2026-12-05 08:01:00Z"),
            normalize("at 2026-12-05 08:01:00")
        );
        assert_ne!(normalize("web active"), normalize("web revoked"));
        // A word of hex letters alone, or a short number, stays.
        assert_eq!(normalize("deadbeefcafe"), "deadbeefcafe");
        assert_eq!(normalize("version 12"), "version 12");
        assert_eq!(normalize("on 2026-12-05"), "on <date>");
    }

    #[test]
    fn ellipsis_lines_and_wildcards_match_what_varies() {
        let exp: Vec<String> = ["A", "...", "D [..] end"].map(String::from).to_vec();
        assert!(matches(&exp, "A\nB\nC\nD up 3s end\n"));
        assert!(matches(&exp, "A\nD x end"));
        assert!(!matches(&exp, "A\nB\nD x"));
        assert!(!matches(&exp, "B\nD x end"));
        let exact: Vec<String> = vec!["one".into()];
        assert!(matches(&exact, "\none\n\n"));
        assert!(!matches(&exact, "one\ntwo"));
    }

    #[test]
    fn steps_are_framed_and_split_back_with_their_status() {
        let steps = parse(DOC).unwrap();
        let s = script(&steps);
        assert!(s.contains("{\nkeyward key list\n}"));
        let out = format!(
            "\n{MARK}begin 0\nx\n\n{MARK}end 0 0\n\n{MARK}begin 1\ny\n{MARK}end 1 4\n\n{MARK}begin 2\n\n{MARK}end 2 0\n\n{MARK}begin 3\na b\n\n{MARK}end 3 0\n"
        );
        let parts = split(&out, 4).unwrap();
        assert_eq!(parts[0], ("x\n".to_owned(), 0));
        assert_eq!(parts[1].1, 4);
        assert!(split(&out, 5).is_err());
    }

    #[test]
    fn a_rewrite_replaces_only_the_outputs_that_differ() {
        let steps = parse(DOC).unwrap();
        let fixed = rewrite(
            DOC,
            &steps,
            &[
                (0, "NAME STATE\nweb  revoked\n".into(), 0),
                (3, "a b\n".into(), 1),
            ],
        );
        assert!(fixed.contains("$ keyward key list\nNAME STATE\nweb  revoked\n$ keyward key show"));
        assert!(fixed.contains("a b\n[exit status 1]\n```"));
        assert!(fixed.contains("[exit status 4]"));
        assert_eq!(parse(&fixed).unwrap().len(), 4);
        // A wildcard line that still matches is kept as written.
        let doc = "```console\n$ keyward status\nagent: 0.1\nuptime: [..]\nkeys: none\n```\n";
        let steps = parse(doc).unwrap();
        let fixed = rewrite(
            doc,
            &steps,
            &[(0, "agent: 0.2\nuptime: 3s\nkeys: none\n".into(), 0)],
        );
        assert_eq!(
            fixed,
            "```console\n$ keyward status\nagent: 0.2\nuptime: [..]\nkeys: none\n```\n"
        );
    }
}
