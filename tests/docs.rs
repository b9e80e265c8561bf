//! The documentation points only at what a clone of berth has: every file a reader is told to
//! open or run is in the repository.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

/// Top-level folders of the repository whose paths the docs name.
const REPO_DIRS: [&str; 8] = [
    "scripts/",
    "packaging/",
    "systemd/",
    "docs/",
    "benches/",
    "tests/",
    "src/",
    ".ci/",
];

/// Inline code spans (`…`) of a Markdown text, and the first word of each line of its fenced
/// blocks (where commands are).
fn code_spans(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            // A command line of a block (examples of data are not paths to open).
            out.extend(line.split_whitespace().next().map(str::to_string));
            continue;
        }
        out.extend(line.split('`').skip(1).step_by(2).map(str::to_string));
    }
    out
}

/// Relative link targets `](target)` of a Markdown text.
fn links(text: &str) -> Vec<String> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .filter(|t| !t.contains("://") && !t.starts_with('#') && !t.starts_with("mailto:"))
        .map(|t| t.split('#').next().unwrap_or(t).to_string())
        .collect()
}

/// Paths a doc tells readers to use that a clone does not have.
fn missing_paths(text: &str, root: &Path) -> Vec<String> {
    let mut missing = Vec::new();
    for span in code_spans(text) {
        let first = span.split_whitespace().next().unwrap_or("");
        let first = first.trim_end_matches([',', '.', ';', ':', ')']);
        if first.starts_with("../") {
            missing.push(format!("{first} (outside the repository)"));
        } else if REPO_DIRS.iter().any(|d| first.starts_with(d))
            && !first.contains(['*', '<', '{', '$'])
            && !root.join(first).exists()
        {
            missing.push(first.to_string());
        }
    }
    for link in links(text) {
        if link.starts_with("../") || !root.join(&link).exists() {
            missing.push(format!("link {link}"));
        }
    }
    missing
}

#[test]
fn the_readme_names_only_files_a_clone_has() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for doc in ["README.md", "packaging/README.md", "docs/protocol.md"] {
        let Ok(text) = std::fs::read_to_string(root.join(doc)) else {
            continue;
        };
        let missing = missing_paths(&text, root);
        assert!(
            missing.is_empty(),
            "{doc} points at files a clone of berth does not have: {missing:?}"
        );
    }
}

#[test]
fn the_path_check_catches_paths_outside_and_missing_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = "run `../shared/tools/module-cycles src`, see [x](docs/nope.md) and `scripts/nope`;\n```\nscripts/module-cycles src\n```\n";
    assert_eq!(
        missing_paths(text, root),
        [
            "../shared/tools/module-cycles (outside the repository)",
            "scripts/nope",
            "link docs/nope.md"
        ]
    );
}

#[test]
fn the_module_cycle_check_ships_with_the_repository_and_passes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(root.join("scripts/module-cycles"))
        .arg(root.join("src"))
        .output()
        .expect("scripts/module-cycles runs (python3)");
    assert!(
        out.status.success(),
        "import cycles between top-level modules:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
