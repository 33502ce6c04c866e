//! The documents: a README that fits on a screen and opens with the two fresh-machine commands,
//! every page under `docs/` linked from it, and every relative link (and `#anchor`) landing on
//! a file and heading that exist.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// README.md and every `docs/*.md`.
fn documents() -> Vec<PathBuf> {
    let mut out = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    out.extend(docs);
    out
}

/// GitHub's anchor for a heading: lowercase, punctuation but `-` and `_` dropped, spaces as `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// A document's lines outside code blocks (fenced with three backticks or tildes).
fn prose(text: &str) -> impl Iterator<Item = &str> {
    let mut fenced = false;
    text.lines().filter(move |line| {
        let fence = line.trim_start().starts_with("```") || line.trim_start().starts_with("~~~");
        fenced ^= fence;
        !fence && !fenced
    })
}

/// The anchors of a document's headings.
fn anchors(text: &str) -> BTreeSet<String> {
    prose(text)
        .filter(|line| line.starts_with('#'))
        .map(|line| slug(line.trim_start_matches('#')))
        .collect()
}

/// The targets of a document's inline links `[text](target)`, outside code spans.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose(text) {
        // Code spans may hold `](` that is not a link.
        let plain: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        let mut rest = plain.as_str();
        while let Some(at) = rest.find("](") {
            let tail = &rest[at + 2..];
            let Some(end) = tail.find(')') else { break };
            out.push(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    out
}

#[test]
fn every_relative_link_lands_on_a_file_and_heading_that_exist() {
    let mut broken = Vec::new();
    for doc in documents() {
        let text = read(&doc);
        for target in links(&text) {
            if target.starts_with("http://") || target.starts_with("https://") {
                continue;
            }
            let (file, anchor) = match target.split_once('#') {
                Some((f, a)) => (f, Some(a)),
                None => (target.as_str(), None),
            };
            let path = if file.is_empty() {
                doc.clone()
            } else {
                doc.parent().unwrap().join(file)
            };
            if !path.exists() {
                broken.push(format!("{}: {target}: no such file", doc.display()));
                continue;
            }
            if let Some(anchor) = anchor {
                if !anchors(&read(&path)).contains(anchor) {
                    broken.push(format!("{}: {target}: no such heading", doc.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_readme_fits_on_a_screen_and_opens_with_the_two_commands() {
    let readme = read(&root().join("README.md"));
    let lines = readme.lines().count();
    assert!(
        lines <= 200,
        "the README has {lines} lines; move detail to docs/"
    );
    // The first two shell blocks are the fresh-machine commands: run locally, then test.
    let blocks: Vec<&str> = readme
        .split("```sh\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap().trim())
        .collect();
    assert_eq!(
        blocks.get(..2),
        Some(&["scripts/demo.sh", "scripts/test.sh"][..])
    );
    let first_section = readme.find("\n## ").unwrap();
    assert!(readme[first_section..].starts_with("\n## On a fresh machine"));
    // Every page under docs/ is reachable from it.
    let linked: BTreeSet<String> = links(&readme).into_iter().collect();
    for doc in documents().iter().skip(1) {
        let name = format!("docs/{}", doc.file_name().unwrap().to_string_lossy());
        assert!(linked.contains(&name), "the README does not link {name}");
    }
}

#[test]
fn anchors_follow_githubs_rules() {
    assert_eq!(
        slug(" Status codes and Pub/Sub acknowledgement"),
        "status-codes-and-pubsub-acknowledgement"
    );
    assert_eq!(
        slug(" `spin up` with the cron trigger"),
        "spin-up-with-the-cron-trigger"
    );
    assert_eq!(
        links("see [a](b.md#c) and `[x](y)` and [d](https://e)"),
        ["b.md#c", "https://e"]
    );
}
