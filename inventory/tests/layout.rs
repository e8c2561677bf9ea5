//! The crate's layout: its source files import each other without a
//! circle, the plain data and pure logic import no SQLite code, and
//! `sqlite/mod.rs` imports none of its parts.
//!
//! A file depends on another when its code (not its comments) names a path
//! into it: `crate::x::Y` depends on `x.rs` (or `x/mod.rs`), `super::Y` on
//! the parent module's file, and `crate::Y` on `lib.rs`. `lib.rs` depends
//! on every module it re-exports from. Test files (`*_tests.rs`) are left
//! out: they may use anything.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// Files that hold the plain data and the pure logic.
const PURE: &[&str] = &[
    "audit.rs",
    "error.rs",
    "store.rs",
    "types.rs",
    "usage.rs",
    "verify.rs",
];

/// Production source files under `src/`, by path relative to it (with
/// `/`), each with its code lines (comment lines dropped).
fn sources() -> BTreeMap<String, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let rel = path
                .strip_prefix(&src)
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            if !rel.ends_with(".rs") || rel.ends_with("_tests.rs") {
                continue;
            }
            let text = fs::read_to_string(&path).unwrap();
            let code: Vec<&str> = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect();
            out.insert(rel, code.join("\n"));
        }
    }
    out
}

/// The module path of a source file: `lib.rs` is the root,
/// `sqlite/mod.rs` is `sqlite`, `sqlite/trail.rs` is `sqlite::trail`.
fn module_of(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .trim_end_matches(".rs")
        .split('/')
        .map(String::from)
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

/// The file a path lands in: the longest prefix of `path` that is a
/// module with a file of its own (`lib.rs` when none is).
fn file_of(files: &BTreeMap<Vec<String>, String>, path: &[String]) -> String {
    (0..=path.len())
        .rev()
        .find_map(|n| files.get(&path[..n]).cloned())
        .unwrap_or_else(|| "lib.rs".to_owned())
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Reads the path after `base` at `code[at..]` (`a::b::{c, d::e}`),
/// pushing every full path it names into `out`; returns where it ends.
fn read_path(code: &[char], mut at: usize, base: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let mut path = base;
    loop {
        while code.get(at) == Some(&' ') || code.get(at) == Some(&'\n') {
            at += 1;
        }
        if code.get(at) == Some(&'{') {
            at += 1;
            loop {
                at = read_path(code, at, path.clone(), out);
                while code.get(at).is_some_and(|c| c.is_whitespace() || *c == ',') {
                    at += 1;
                }
                match code.get(at) {
                    Some('}') => return at + 1,
                    None => return at,
                    _ => {}
                }
            }
        }
        let start = at;
        while code.get(at).is_some_and(|c| is_ident(*c)) {
            at += 1;
        }
        if at > start {
            path.push(code[start..at].iter().collect());
        }
        if code.get(at) == Some(&':') && code.get(at + 1) == Some(&':') {
            at += 2;
        } else {
            out.push(path);
            return at;
        }
    }
}

/// Every path a file's code names from `crate::`, `super::` or (in
/// `lib.rs`) one of the root's modules, as a full module path.
fn paths_in(rel: &str, code: &str, roots: &BTreeSet<String>) -> Vec<Vec<String>> {
    let here = module_of(rel);
    let code: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    // Inline modules (`mod name {`) open here, with their indentation.
    let mut inline: Vec<(usize, String)> = Vec::new();
    let mut at = 0;
    while at < code.len() {
        let line_start = at == 0 || code[at - 1] == '\n';
        if line_start {
            let line: String = code[at..].iter().take_while(|c| **c != '\n').collect();
            let indent = line.len() - line.trim_start().len();
            if inline
                .last()
                .is_some_and(|(i, _)| *i == indent && line.trim() == "}")
            {
                inline.pop();
            }
            let trimmed = line.trim_start().trim_start_matches("pub(crate) ");
            if let Some(name) = trimmed
                .strip_prefix("mod ")
                .and_then(|r| r.strip_suffix(" {"))
            {
                inline.push((indent, name.to_owned()));
            }
        }
        let boundary = at == 0 || !(is_ident(code[at - 1]) || code[at - 1] == ':');
        if !boundary || !is_ident(code[at]) {
            at += 1;
            continue;
        }
        let end = (at..code.len())
            .find(|&i| !is_ident(code[i]))
            .unwrap_or(code.len());
        let word: String = code[at..end].iter().collect();
        let follows = code.get(end) == Some(&':') && code.get(end + 1) == Some(&':');
        if !follows {
            at = end;
            continue;
        }
        let mut scope: Vec<String> = here.clone();
        scope.extend(inline.iter().map(|(_, n)| n.clone()));
        let base = match word.as_str() {
            "crate" => Some((Vec::new(), end + 2)),
            "super" => {
                let mut next = end + 2;
                scope.pop();
                let sup: Vec<char> = "super::".chars().collect();
                while code.get(next..next + sup.len()) == Some(&sup[..]) {
                    scope.pop();
                    next += sup.len();
                }
                Some((scope, next))
            }
            w if rel == "lib.rs" && roots.contains(w) => Some((Vec::new(), at)),
            _ => None,
        };
        at = match base {
            Some((base, from)) => read_path(&code, from, base, &mut out),
            None => end,
        };
    }
    out
}

/// Which files each production file depends on.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let sources = sources();
    let files: BTreeMap<Vec<String>, String> = sources
        .keys()
        .map(|rel| (module_of(rel), rel.clone()))
        .collect();
    let roots: BTreeSet<String> = files
        .keys()
        .filter(|m| m.len() == 1)
        .map(|m| m[0].clone())
        .collect();
    sources
        .iter()
        .map(|(rel, code)| {
            let deps = paths_in(rel, code, &roots)
                .iter()
                .map(|p| file_of(&files, p))
                .filter(|f| f != rel)
                .collect();
            (rel.clone(), deps)
        })
        .collect()
}

/// A circle through `from`, if there is one: the files along it.
fn circle(g: &BTreeMap<String, BTreeSet<String>>, from: &str) -> Option<Vec<String>> {
    fn walk(
        g: &BTreeMap<String, BTreeSet<String>>,
        target: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        let last = path.last().cloned().unwrap_or_default();
        for next in g.get(&last).into_iter().flatten() {
            if next == target {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(g, target, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![from.to_owned()];
    walk(g, from, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn the_dependency_reader_sees_the_paths_it_must() {
    // The reader itself, on known code: without this, a reader that saw
    // nothing would pass every check below.
    let roots: BTreeSet<String> = ["audit", "sqlite"].iter().map(|s| s.to_string()).collect();
    let code = "use super::SqliteInventory;\nuse crate::audit::{check_field, Hash};\n\
                mod inner {\n    use super::X;\n}\nfn f() { crate::Inventory::x(); }\n";
    let got = paths_in("sqlite/trail.rs", code, &roots);
    let want: Vec<Vec<String>> = [
        &["sqlite", "SqliteInventory"][..],
        &["audit", "check_field"],
        &["audit", "Hash"],
        &["sqlite", "trail", "X"],
        &["Inventory", "x"],
    ]
    .iter()
    .map(|p| p.iter().map(|s| s.to_string()).collect())
    .collect();
    assert_eq!(got, want);
    let lib = "pub use audit::{AuditLog, Hash};\npub const V: u32 = schema::LATEST;\n";
    let got = paths_in("lib.rs", lib, &roots);
    assert_eq!(got.len(), 2, "{got:?}");
    let g = graph();
    assert!(g["lib.rs"].contains("sqlite/mod.rs"), "{:?}", g["lib.rs"]);
    assert!(
        g["sqlite/trail.rs"].contains("audit.rs"),
        "{:?}",
        g["sqlite/trail.rs"]
    );
    assert!(g["sqlite/inventory.rs"].contains("sqlite/mod.rs"));
}

#[test]
fn no_source_file_imports_one_that_imports_it_back() {
    let g = graph();
    let circles: Vec<String> = g
        .keys()
        .filter_map(|f| circle(&g, f))
        .map(|c| c.join(" -> "))
        .collect();
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}

#[test]
fn the_data_and_pure_logic_import_no_sqlite_code() {
    let sources = sources();
    let g = graph();
    for file in PURE {
        let code = sources
            .get(*file)
            .unwrap_or_else(|| panic!("{file} is missing"));
        assert!(!code.contains("rusqlite"), "{file} uses rusqlite");
        let into_sqlite: Vec<&String> = g[*file]
            .iter()
            .filter(|d| d.starts_with("sqlite/") || d.as_str() == "schema.rs")
            .collect();
        assert!(into_sqlite.is_empty(), "{file} imports {into_sqlite:?}");
    }
}

#[test]
fn the_sqlite_module_imports_none_of_its_parts() {
    let g = graph();
    let parts: Vec<&String> = g["sqlite/mod.rs"]
        .iter()
        .filter(|d| d.starts_with("sqlite/"))
        .collect();
    assert!(parts.is_empty(), "sqlite/mod.rs imports {parts:?}");
}
