//! The documentation points only at what a clone of berth has: every file a reader is told to
//! open or run is in the repository, and every link lands on a file and a heading that exist.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

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

/// A Markdown text's lines but the fence markers, each with whether it is inside a fenced block.
fn lines_with_fences(text: &str) -> impl Iterator<Item = (&str, bool)> {
    let mut fenced = false;
    text.lines().filter_map(move |line| {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            return None;
        }
        Some((line, fenced))
    })
}

/// Inline code spans (`…`) of a Markdown text, and the first word of each line of its fenced
/// blocks (where commands are).
fn code_spans(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (line, fenced) in lines_with_fences(text) {
        if fenced {
            // A command line of a block (examples of data are not paths to open).
            out.extend(line.split_whitespace().next().map(str::to_string));
            continue;
        }
        out.extend(line.split('`').skip(1).step_by(2).map(str::to_string));
    }
    out
}

/// Relative link targets `](target)` of a Markdown text: (path, anchor); the path is empty for
/// a link within the text (`#anchor`).
fn links(text: &str) -> Vec<(String, Option<String>)> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .filter(|t| !t.contains("://") && !t.starts_with("mailto:"))
        .map(|t| match t.split_once('#') {
            Some((path, anchor)) => (path.to_string(), Some(anchor.to_string())),
            None => (t.to_string(), None),
        })
        .collect()
}

/// The anchors GitHub gives a Markdown text's headings: lower case, spaces to `-`, every
/// character but letters, digits, `-` and `_` dropped (outside fenced blocks).
fn anchors(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (line, fenced) in lines_with_fences(text) {
        if fenced || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim();
        out.push(
            title
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                    _ => None,
                })
                .flat_map(char::to_lowercase)
                .collect(),
        );
    }
    out
}

/// `link` resolved against the directory `dir` (relative to the repository root), or `None`
/// when it leaves the repository.
fn resolve(dir: &Path, link: &str) -> Option<PathBuf> {
    let mut parts: Vec<String> = dir
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    for segment in link.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            s => parts.push(s.to_string()),
        }
    }
    Some(parts.iter().collect())
}

/// Paths a doc tells readers to use that a clone does not have. Code spans name paths from the
/// repository root (where commands run); links are relative to `dir`, the doc's directory.
fn missing_paths(text: &str, root: &Path, dir: &Path) -> Vec<String> {
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
    for (link, anchor) in links(text) {
        let target = if link.is_empty() {
            Some(text.to_string())
        } else {
            match resolve(dir, &link) {
                None => {
                    missing.push(format!("link {link} (outside the repository)"));
                    continue;
                }
                Some(path) if !root.join(&path).exists() => {
                    missing.push(format!("link {link}"));
                    continue;
                }
                Some(path) => std::fs::read_to_string(root.join(path)).ok(),
            }
        };
        if let (Some(anchor), Some(target)) = (anchor, target)
            && !anchors(&target).contains(&anchor)
        {
            missing.push(format!("link {link}#{anchor} (no such heading)"));
        }
    }
    missing
}

/// README.md, packaging/README.md and every page under docs/.
fn docs(root: &Path) -> Vec<PathBuf> {
    let mut docs = vec![
        PathBuf::from("README.md"),
        PathBuf::from("packaging/README.md"),
    ];
    let mut pages: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ is there")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .map(|p| p.strip_prefix(root).unwrap().to_path_buf())
        .collect();
    pages.sort();
    docs.extend(pages);
    docs
}

#[test]
fn the_docs_name_only_files_a_clone_has() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let docs = docs(root);
    for page in [
        "docs/README.md",
        "docs/commands.md",
        "docs/configuration.md",
        "docs/operations.md",
        "docs/isolation.md",
        "docs/kubernetes.md",
        "docs/oz-compatibility.md",
        "docs/dev-control-plane.md",
        "docs/protocol.md",
        "docs/benchmarks.md",
        "docs/development.md",
    ] {
        assert!(docs.contains(&PathBuf::from(page)), "{page} is checked");
    }
    for doc in docs {
        let text = std::fs::read_to_string(root.join(&doc)).unwrap();
        let missing = missing_paths(&text, root, doc.parent().unwrap());
        assert!(
            missing.is_empty(),
            "{} points at files a clone of berth does not have: {missing:?}",
            doc.display()
        );
    }
}

#[test]
fn the_docs_index_and_the_readme_link_every_page() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let index = std::fs::read_to_string(root.join("docs/README.md")).unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    for doc in docs(root) {
        let Ok(page) = doc.strip_prefix("docs") else {
            continue;
        };
        let page = page.to_str().unwrap();
        if page == "README.md" {
            continue;
        }
        assert!(
            index.contains(&format!("]({page})")),
            "docs/README.md links {page}"
        );
        assert!(
            readme.contains(&format!("](docs/{page})")),
            "README.md links docs/{page}"
        );
    }
}

#[test]
fn the_path_check_catches_paths_outside_and_missing_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = "run `../shared/tools/module-cycles src`, see [x](docs/nope.md) and `scripts/nope`;\n```\nscripts/module-cycles src\n```\n";
    assert_eq!(
        missing_paths(text, root, Path::new("")),
        [
            "../shared/tools/module-cycles (outside the repository)",
            "scripts/nope",
            "link docs/nope.md"
        ]
    );
    // From docs/: links are relative to it, code spans to the root.
    let text = "## Here we are\n[a](../README.md#quickstart), [b](protocol.md), [c](#here-we-are), \
                [d](../../x), [e](../README.md#nowhere), [f](#gone), [g](README.md), `docs/nope.md`\n";
    assert_eq!(
        missing_paths(text, root, Path::new("docs")),
        [
            "docs/nope.md",
            "link ../../x (outside the repository)",
            "link ../README.md#nowhere (no such heading)",
            "link #gone (no such heading)",
        ]
    );
}

#[test]
fn anchors_are_githubs() {
    assert_eq!(
        anchors(
            "# The embedded control plane (`berth dev`)\n```\n# not a heading\n```\n## `cargo bench --bench isolation`\n### DNS (CVE-2024-29018)\n## Several berths, one worker id\n"
        ),
        [
            "the-embedded-control-plane-berth-dev",
            "cargo-bench---bench-isolation",
            "dns-cve-2024-29018",
            "several-berths-one-worker-id"
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
