//! The crate's layers, as `docs/architecture.md` draws them: every `src/` file is a module the
//! table names, opens with a line saying what it owns, and uses only modules of lower layers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The table of `docs/architecture.md`: module name to layer.
fn layers() -> BTreeMap<String, u32> {
    let doc = std::fs::read_to_string(root().join("docs/architecture.md")).unwrap();
    let mut out = BTreeMap::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | `module` | layer | what it owns |
        if cells.len() < 5 || !cells[1].starts_with('`') {
            continue;
        }
        let name = cells[1].trim_matches('`').to_string();
        let layer = cells[2]
            .parse()
            .unwrap_or_else(|_| panic!("docs/architecture.md: the layer of {name}: {line}"));
        assert!(out.insert(name.clone(), layer).is_none(), "{name} twice");
    }
    assert!(
        out.len() > 20,
        "the table of docs/architecture.md was not found"
    );
    out
}

/// Every source file of the crate with its module name (`sentry::client`, `lib`); test-only
/// files (`config/tests.rs`) are left out.
fn sources() -> Vec<(String, PathBuf)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let src = root().join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    let mut out = Vec::new();
    for path in files {
        let rel = path.strip_prefix(&src).unwrap().with_extension("");
        let mut parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if parts.last().is_some_and(|p| p == "mod") {
            parts.pop();
        }
        if parts.last().is_some_and(|p| p == "tests") {
            continue;
        }
        out.push((parts.join("::"), path));
    }
    out.sort();
    out
}

/// The code of a file without its comments, string and char literals (blanked), and without
/// the items only tests build (`#[cfg(test)]`, which may use anything).
fn code(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i += 2;
            while i < b.len() && !b[i..].starts_with(b"*/") {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && (b.get(i + 1) == Some(&b'\\') || b.get(i + 2) == Some(&b'\'')) {
            // A char literal ('"', '\n'); anything else after a quote is a lifetime.
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("' '");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    // Items only tests build (`#[cfg(test)]`: unit tests, test doubles) may use anything.
    while let Some(at) = out.find("#[cfg(test)]") {
        let rest = &out[at..];
        let end = match (rest.find('{'), rest.find(';')) {
            (Some(open), semi) if semi.is_none_or(|s| open < s) => {
                let mut depth = 0;
                let close = rest[open..].char_indices().find_map(|(k, c)| {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    (depth == 0).then_some(open + k + 1)
                });
                close.unwrap_or(rest.len())
            }
            (_, Some(semi)) => semi + 1,
            _ => rest.len(),
        };
        out.replace_range(at..at + end, "");
    }
    out
}

/// The paths under `crate::` (or a module's `super::`, or a package's child) a file's code
/// names, each as its segments, `{...}` groups expanded.
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    fn group(s: &[u8], i: &mut usize, base: &[String], out: &mut Vec<Vec<String>>) {
        // After `{`: items separated by commas until the matching `}`.
        let mut path = base.to_vec();
        let mut word = String::new();
        while *i < s.len() {
            let c = s[*i] as char;
            *i += 1;
            match c {
                '{' => group(s, i, &path, out),
                '}' | ',' => {
                    if !word.is_empty() {
                        path.push(std::mem::take(&mut word));
                    }
                    if path.len() > base.len() {
                        out.push(std::mem::replace(&mut path, base.to_vec()));
                    }
                    path = base.to_vec();
                    if c == '}' {
                        return;
                    }
                }
                ':' if !word.is_empty() => path.push(std::mem::take(&mut word)),
                c if c.is_alphanumeric() || c == '_' => word.push(c),
                _ => {}
            }
        }
    }
    let s = code.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = code[from..].find(prefix) {
        let start = from + at;
        from = start + prefix.len();
        let before = code[..start].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let mut i = from;
        let mut path = Vec::new();
        let mut word = String::new();
        loop {
            match s.get(i).map(|&c| c as char) {
                Some(c) if c.is_alphanumeric() || c == '_' => {
                    word.push(c);
                    i += 1;
                }
                Some(':') if s.get(i + 1) == Some(&b':') => {
                    path.push(std::mem::take(&mut word));
                    i += 2;
                }
                Some('{') => {
                    i += 1;
                    group(s, &mut i, &path, &mut out);
                    break;
                }
                _ => {
                    if !word.is_empty() {
                        path.push(word);
                    }
                    out.push(path);
                    break;
                }
            }
        }
    }
    out
}

/// The module a path names: the longest prefix that is a module of the table.
fn module_of(path: &[String], known: &BTreeMap<String, u32>) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|m| known.contains_key(m))
}

/// The modules a file's code (see [`code`]) uses: `name` is its module, `package` whether
/// it is a package's `mod.rs`.
fn uses(name: &str, package: bool, code: &str, known: &BTreeMap<String, u32>) -> BTreeSet<String> {
    let parent: Vec<String> = name.split("::").map(String::from).collect();
    let mut used = BTreeSet::new();
    for p in paths_after(code, "crate::") {
        // A path naming no module names an item of the crate root (`lib`).
        used.insert(module_of(&p, known).unwrap_or_else(|| "lib".to_string()));
    }
    // `super::` is the parent module (of a package's `mod.rs` too: the package's
    // parent), once per `super`; `self::` the module itself.
    let mut base = parent[..parent.len() - 1].to_vec();
    if name == "lib" {
        base.clear();
    }
    for p in paths_after(code, "super::") {
        let ups = p.iter().take_while(|s| *s == "super").count();
        let keep = base.len().saturating_sub(ups);
        let full: Vec<String> = base[..keep]
            .iter()
            .cloned()
            .chain(p[ups..].to_vec())
            .collect();
        used.insert(module_of(&full, known).unwrap_or_else(|| "lib".to_string()));
    }
    let own: &[String] = if name == "lib" { &[] } else { &parent };
    for p in paths_after(code, "self::") {
        let full: Vec<String> = own.iter().cloned().chain(p).collect();
        used.extend(module_of(&full, known));
    }
    // A package's `mod.rs` names its children bare (`credentials::Credentials`).
    if package {
        for child in known
            .keys()
            .filter_map(|k| k.strip_prefix(&format!("{name}::")))
        {
            for p in paths_after(code, &format!("{child}::")) {
                let full: Vec<String> = parent
                    .iter()
                    .cloned()
                    .chain([child.to_string()])
                    .chain(p)
                    .collect();
                used.extend(module_of(&full, known));
            }
        }
    }
    used
}

#[test]
fn every_import_points_down_the_layers_of_the_architecture_document() {
    let known = layers();
    let files = sources();
    let names: BTreeSet<&String> = files.iter().map(|(n, _)| n).collect();
    let drawn: BTreeSet<&String> = known.keys().collect();
    assert_eq!(
        names, drawn,
        "src/ and the table of docs/architecture.md name different modules"
    );
    let mut wrong = Vec::new();
    for (name, path) in &files {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(
            text.starts_with("//!"),
            "{}: a file opens with a line saying what it owns",
            path.display()
        );
        let code = code(&text);
        let package = path.ends_with("mod.rs");
        let mut used = uses(name, package, &code, &known);
        used.remove(name);
        for u in used {
            if known[&u] >= known[name] {
                wrong.push(format!(
                    "{name} (layer {}) uses {u} (layer {})",
                    known[name], known[&u]
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that do not point down (docs/architecture.md):\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_import_reader_sees_what_it_must() {
    let known: BTreeMap<String, u32> = [("a", 1), ("b", 1), ("p", 1), ("p::c", 1)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let code = code(
        "use crate::{a::X, p::{c::Y, Z}};\n// crate::b in a comment\nlet s = \"crate::b\"; let c = '\"'; crate::p::c::f();\n#[cfg(test)]\nmod tests { use crate::b; }",
    );
    let found: BTreeSet<String> = paths_after(&code, "crate::")
        .iter()
        .filter_map(|p| module_of(p, &known))
        .collect();
    let expected: BTreeSet<String> = ["a", "p", "p::c"].iter().map(|s| s.to_string()).collect();
    assert_eq!(found, expected);
    // `super::` from a package's `mod.rs` is the package's parent; `super::super`, `self::`
    // and items of the crate root are resolved too.
    let set = |v: &[&str]| {
        v.iter()
            .map(|s| s.to_string())
            .collect::<BTreeSet<String>>()
    };
    assert_eq!(uses("p", true, "use super::a::X;", &known), set(&["a"]));
    assert_eq!(
        uses("p::c", false, "use super::super::b::X;", &known),
        set(&["b"])
    );
    assert_eq!(
        uses("p", true, "pub use self::c::Y;", &known),
        set(&["p::c"])
    );
    assert_eq!(uses("a", false, "crate::helper();", &known), set(&["lib"]));
}

/// Every function of the pipeline (`src/collect/`) reads in one sitting: at most this many
/// lines, its doc comment not counted.
const MAX_PIPELINE_FN_LINES: usize = 80;

#[test]
fn no_function_of_the_pipeline_is_longer_than_a_screen() {
    let mut long = Vec::new();
    for (name, path) in sources() {
        if name != "collect" && !name.starts_with("collect::") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let code = code(&text);
        let lines: Vec<&str> = code.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            let line = lines[i];
            let indent = line.len() - line.trim_start().len();
            let head = line.trim_start();
            let is_fn = ["fn ", "pub fn ", "pub(super) fn ", "pub(crate) fn "]
                .iter()
                .any(|p| head.starts_with(p));
            if !is_fn || head.ends_with(';') {
                i += 1;
                continue;
            }
            let close = format!("{}}}", " ".repeat(indent));
            let end = (i..lines.len())
                .find(|&j| lines[j] == close)
                .unwrap_or(lines.len() - 1);
            if end + 1 - i > MAX_PIPELINE_FN_LINES {
                long.push(format!("{}: {} ({} lines)", name, head, end + 1 - i));
            }
            i = end + 1;
        }
    }
    assert!(
        long.is_empty(),
        "functions over {MAX_PIPELINE_FN_LINES} lines:\n{}",
        long.join("\n")
    );
}
