//! The repository stands alone: a clone has everything its users need. No tracked file points
//! outside the repository (the development machine's paths, a sibling `shared/` folder), and every
//! relative link in the Markdown documents names a file or directory that exists in the clone.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("the repository root exists")
}

/// The files git tracks, relative to the root.
fn tracked_files(root: &Path) -> Vec<PathBuf> {
    let output = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(root)
        .output()
        .expect("git runs");
    assert!(
        output.status.success(),
        "git ls-files failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
        .stdout
        .split(|byte| *byte == 0)
        .filter(|name| !name.is_empty())
        .map(|name| PathBuf::from(String::from_utf8_lossy(name).into_owned()))
        .collect()
}

/// Text that points outside the clone. Each is written in two pieces so that this file does not
/// match itself.
fn outside_references() -> Vec<String> {
    vec![
        format!("{}/shared", ".."),
        format!("/{}/", "work"),
        format!("{}.md", "DESIGN"),
        format!("{}/ENVIRONMENT", "shared"),
    ]
}

#[test]
fn no_tracked_file_points_outside_the_repository() {
    let root = repo_root();
    let needles = outside_references();
    let mut found = Vec::new();
    for file in tracked_files(&root) {
        // Binary and non-UTF-8 files cannot hold such a reference in a form a user would follow.
        let Ok(text) = std::fs::read_to_string(root.join(&file)) else {
            continue;
        };
        for (number, line) in text.lines().enumerate() {
            for needle in &needles {
                if line.contains(needle.as_str()) {
                    found.push(format!(
                        "{}:{}: {}",
                        file.display(),
                        number + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "these lines point outside the repository, which a clone does not have:\n{}",
        found.join("\n")
    );
}

/// The targets of `[text](target)` links in Markdown, without `#fragment`s, skipping URLs.
fn relative_link_targets(markdown: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut rest = markdown;
    while let Some(start) = rest.find("](") {
        rest = &rest[start + 2..];
        let Some(end) = rest.find(')') else { break };
        let target = &rest[..end];
        rest = &rest[end..];
        let target = target.split('#').next().unwrap_or_default().trim();
        if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
            continue;
        }
        targets.push(target.to_owned());
    }
    targets
}

#[test]
fn every_relative_link_in_the_documents_resolves_in_the_clone() {
    let root = repo_root();
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in tracked_files(&root) {
        if file.extension().and_then(|e| e.to_str()) != Some("md") {
            continue;
        }
        let text = std::fs::read_to_string(root.join(&file)).expect("a Markdown file is text");
        let dir = root
            .join(&file)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        for target in relative_link_targets(&text) {
            checked += 1;
            if !dir.join(&target).exists() {
                broken.push(format!("{}: ({target})", file.display()));
            }
        }
    }
    assert!(
        checked > 0,
        "no relative link was found at all; the scan is broken"
    );
    assert!(
        broken.is_empty(),
        "these links name files the clone does not have:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_link_scan_finds_relative_links_and_skips_urls_and_fragments() {
    let text = "see [a](docs/a.md#part), [b](https://example.invalid/x) and [c](#top) or [d](../d)";
    assert_eq!(relative_link_targets(text), ["docs/a.md", "../d"]);
}
