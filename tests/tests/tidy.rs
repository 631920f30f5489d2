//! Checks of the tree itself, as rust-analyzer's `tidy`: ARCHITECTURE.md names only paths that
//! exist and maps every system-test module, crates depend only as its dependency rule allows,
//! and every Rust file opens with a `//!` line saying what it is for.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

/// Folders that hold what tools made, not the project's own files.
const NOT_OURS: &[&str] = &["target", "node_modules", ".git", "dist"];

/// Every file and folder of the project, as paths relative to the root with `/` separators.
fn tree() -> Vec<String> {
    let root = root();
    let mut found = Vec::new();
    let mut pending = vec![root.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            if NOT_OURS.contains(&name.as_str()) {
                continue;
            }
            let path = entry.path();
            let relative = path
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            if entry.file_type().unwrap().is_dir() {
                pending.push(path);
            }
            found.push(relative);
        }
    }
    found
}

/// The backquoted words of `text` that name files or folders: with a `/` or a file's
/// extension, and none of what subjects, URLs, routes and code use (`{`, `*`, `>`, `:`...).
fn named_paths(text: &str) -> BTreeSet<String> {
    const EXTENSIONS: &[&str] = &[
        ".rs", ".md", ".sql", ".json", ".yaml", ".toml", ".html", ".js", ".ts", ".txt", ".pbf",
        ".svg", ".png", ".sh",
    ];
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|word| {
            !word.is_empty()
                && !word.starts_with('/')
                && !word.starts_with('-')
                && !word.starts_with('.')
                && !word.starts_with("target/")
                && !word
                    .chars()
                    .any(|c| c.is_whitespace() || "{}*<>:?=()'\",;|$#@!&[]".contains(c))
        })
        .map(|word| word.trim_end_matches('/').to_owned())
        .filter(|word| word.contains('/') || EXTENSIONS.iter().any(|e| word.ends_with(e)))
        .collect()
}

#[test]
fn every_path_architecture_md_names_exists() {
    let text = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let tree = tree();
    let named = named_paths(&text);
    assert!(
        named.len() > 50,
        "the map names {} paths: {named:?}",
        named.len()
    );
    // A path is written from the root, or from the crate or folder its section is about.
    let missing: Vec<_> = named
        .iter()
        .filter(|path| {
            !tree
                .iter()
                .any(|have| have == *path || have.ends_with(&format!("/{path}")))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names paths that do not exist: {missing:?}"
    );
}

#[test]
fn the_path_check_finds_a_wrong_path() {
    let named = named_paths(
        "`cluster.rs` and `xtask/src/cluster/` beside `{p}.evt.*`, `/api/`, `a b.rs`, \
         `GET /v1/jobs`, `target/debug/x`, `.rs` and `trips::api`",
    );
    assert_eq!(
        named,
        BTreeSet::from(["cluster.rs".to_owned(), "xtask/src/cluster".to_owned()])
    );
}

#[test]
fn every_system_test_module_is_on_the_map() {
    let text = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let section = text
        .split("### `tests/`")
        .nth(1)
        .and_then(|rest| rest.split("\n### ").next())
        .expect("ARCHITECTURE.md has a section on tests/");
    let system = root().join("tests/tests/system");
    let mut unmapped = Vec::new();
    for entry in std::fs::read_dir(&system).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let module = name.trim_end_matches(".rs");
        if module == "main" {
            continue;
        }
        let written = [format!("`{module}`"), format!("`{module}/`")];
        if !written.iter().any(|w| section.contains(w.as_str())) {
            unmapped.push(module.to_owned());
        }
    }
    assert!(
        unmapped.is_empty(),
        "ARCHITECTURE.md's tests/ section does not name these system-test modules: {unmapped:?}"
    );
}

/// Which workspace crates each crate may depend on (normal and build dependencies; tests and
/// xtask may use anything). ARCHITECTURE.md's first invariant says the same in words.
fn allowed_dependencies() -> BTreeMap<&'static str, BTreeSet<&'static str>> {
    BTreeMap::from([
        ("protocol", BTreeSet::new()),
        ("topology", BTreeSet::new()),
        ("kit", BTreeSet::from(["protocol", "topology"])),
        ("roads", BTreeSet::from(["protocol"])),
        (
            "gateway",
            BTreeSet::from(["protocol", "kit", "roads", "topology"]),
        ),
        (
            "matcher",
            BTreeSet::from(["protocol", "kit", "roads", "topology"]),
        ),
        (
            "trips",
            BTreeSet::from(["protocol", "kit", "roads", "topology"]),
        ),
        ("simulator", BTreeSet::from(["protocol", "roads"])),
    ])
}

#[test]
fn crates_depend_only_as_the_dependency_rule_allows() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = std::process::Command::new(cargo)
        .current_dir(root())
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .output()
        .expect("cargo metadata runs");
    assert!(output.status.success(), "{output:?}");
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let packages = metadata["packages"].as_array().unwrap();
    let ours: BTreeSet<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    let allowed = allowed_dependencies();
    let mut broken = Vec::new();
    for package in packages {
        let name = package["name"].as_str().unwrap();
        if matches!(name, "tests" | "xtask") {
            continue;
        }
        let Some(may) = allowed.get(name) else {
            broken.push(format!("{name} is not in the dependency rule: add it"));
            continue;
        };
        for dependency in package["dependencies"].as_array().unwrap() {
            let on = dependency["name"].as_str().unwrap();
            let dev = dependency["kind"].as_str() == Some("dev");
            if ours.contains(on) && !dev && !may.contains(on) {
                broken.push(format!("{name} depends on {on}"));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "the dependency rule is broken: {broken:?}"
    );
}

#[test]
fn every_rust_file_opens_with_what_it_is_for() {
    let root = root();
    let unsaid: Vec<_> = tree()
        .into_iter()
        .filter(|path| path.ends_with(".rs"))
        .filter(|path| {
            let text = std::fs::read_to_string(root.join(path)).unwrap_or_default();
            !text.starts_with("//!")
        })
        .collect();
    assert!(
        unsaid.is_empty(),
        "these files do not open with a `//!` line: {unsaid:?}"
    );
}
