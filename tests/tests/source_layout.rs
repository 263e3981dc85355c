//! The source tree keeps the layout a newcomer can navigate: no source file of the four crates
//! over 700 lines, and unit tests in sibling `tests.rs` files (`#[cfg(test)] mod tests;`), never
//! inline `mod tests { … }` blocks between the code.

use std::path::{Path, PathBuf};

/// The longest a source file may be.
const MAX_LINES: usize = 700;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().and_then(|e| e.to_str()) == Some("rs") {
            found.push(path);
        }
    }
}

/// Every `.rs` file below the `src` folders of the crates the layout rule covers.
fn sources() -> Vec<PathBuf> {
    let root = repo_root();
    let mut found = Vec::new();
    for krate in ["agent", "manager", "manifests", "cli"] {
        rust_files(&root.join(krate).join("src"), &mut found);
    }
    assert!(
        found.len() > 50,
        "only {} source files found; the walk is broken",
        found.len()
    );
    found.sort();
    found
}

/// The problems of one file's text, named by `name`.
fn layout_problems(name: &str, text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let lines = text.lines().count();
    if lines > MAX_LINES {
        problems.push(format!("{name}: {lines} lines, more than {MAX_LINES}"));
    }
    for (number, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("mod tests {") || trimmed.starts_with("pub mod tests {") {
            problems.push(format!(
                "{name}:{}: inline test module; move it to a sibling tests.rs (`mod tests;`)",
                number + 1
            ));
        }
    }
    problems
}

#[test]
fn no_source_file_is_too_long_and_unit_tests_live_in_sibling_files() {
    let root = repo_root();
    let mut problems = Vec::new();
    for file in sources() {
        let text = std::fs::read_to_string(&file).expect("a source file is text");
        let name = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .display()
            .to_string();
        problems.extend(layout_problems(&name, &text));
    }
    assert!(
        problems.is_empty(),
        "source layout:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_check_catches_long_files_and_inline_test_modules() {
    let long = "fn f() {}\n".repeat(MAX_LINES + 1);
    assert_eq!(layout_problems("long.rs", &long).len(), 1);
    let inline = "fn f() {}\n#[cfg(test)]\nmod tests {\n    #[test]\n    fn t() {}\n}\n";
    assert_eq!(layout_problems("inline.rs", inline).len(), 1);
    let sibling = "fn f() {}\n#[cfg(test)]\nmod tests;\n";
    assert!(layout_problems("sibling.rs", sibling).is_empty());
}
