//! The layers of `embassy-core` (see `src/lib.rs` and `docs/ARCHITECTURE.md`, "core"): a module
//! names only modules of its own layer or of the layers below it, never a flat path kept for
//! other crates, and no modules import each other in a loop. Read from the source text, so a
//! doc link counts like an import.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers from the bottom up; files at the top level of `src/` are the vocabulary (0).
const LAYERS: [&str; 4] = ["keys", "format", "history", "engine"];

fn rank(first: &str) -> usize {
    LAYERS.iter().position(|l| *l == first).map_or(0, |i| i + 1)
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `engine/gc/records.rs` -> `engine::gc::records`; `history/mod.rs` -> `history`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file
        .strip_prefix(src)
        .expect("under src")
        .with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

/// Every `crate::a::b::...` path in `text`, with its line number (groups `{...}` end a path).
fn crate_paths(text: &str) -> Vec<(usize, Vec<String>)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            let before = rest[..i].chars().last();
            rest = &rest[i + "crate::".len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue; // `embassy_core::` or similar, not this crate's root
            }
            let mut segs = Vec::new();
            let mut tail = rest;
            loop {
                let end = tail
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                if end == 0 {
                    break;
                }
                segs.push(tail[..end].to_string());
                match tail[end..].strip_prefix("::") {
                    Some(t) => tail = t,
                    None => break,
                }
            }
            if !segs.is_empty() {
                out.push((n + 1, segs));
            }
        }
    }
    out
}

#[test]
fn layers_import_only_downward_and_without_loops() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let modules: BTreeMap<String, PathBuf> = files
        .iter()
        .map(|f| (module_of(&src, f), f.clone()))
        .collect();
    let top_level: BTreeSet<&str> = modules
        .keys()
        .filter(|m| !m.contains("::") && rank(m) == 0 && *m != "lib")
        .map(String::as_str)
        .collect();
    let mut problems = Vec::new();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, file) in &modules {
        if module == "lib" {
            continue; // the crate root declares the layers and keeps the flat paths
        }
        let text = std::fs::read_to_string(file).expect("read source");
        let own = rank(module.split("::").next().unwrap_or_default());
        for (line, segs) in crate_paths(&text) {
            let first = segs[0].as_str();
            let is_module = first.chars().next().is_some_and(|c| c.is_ascii_lowercase());
            if is_module && rank(first) == 0 && !top_level.contains(first) {
                problems.push(format!(
                    "{}:{line}: crate::{first} is a flat path kept for other crates; use the \
                     layered one",
                    file.display()
                ));
                continue;
            }
            if rank(first) > own {
                problems.push(format!(
                    "{}:{line}: crate::{} reaches up from layer {own} to layer {}",
                    file.display(),
                    segs.join("::"),
                    rank(first)
                ));
            }
            // The module named: the longest prefix of the path that is a module file.
            let target = (1..=segs.len())
                .rev()
                .map(|k| segs[..k].join("::"))
                .find(|m| modules.contains_key(m));
            if let Some(target) = target {
                let inside = module.starts_with(&format!("{target}::"));
                if target != *module && !inside {
                    edges.entry(module.clone()).or_default().insert(target);
                }
            }
        }
    }
    // Loops: a depth-first search that meets a module still on its path.
    fn visit(
        m: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        loops: &mut Vec<String>,
    ) {
        if let Some(i) = path.iter().position(|p| p == m) {
            loops.push(format!("{} -> {m}", path[i..].join(" -> ")));
            return;
        }
        if !done.insert(m.to_string()) {
            return;
        }
        path.push(m.to_string());
        for next in edges.get(m).into_iter().flatten() {
            visit(next, edges, path, done, loops);
        }
        path.pop();
    }
    let mut loops = Vec::new();
    let mut done = BTreeSet::new();
    for m in modules.keys() {
        visit(m, &edges, &mut Vec::new(), &mut done, &mut loops);
    }
    problems.extend(loops.into_iter().map(|l| format!("import loop: {l}")));
    assert!(
        problems.is_empty(),
        "core's layers are broken:\n{}",
        problems.join("\n")
    );
}
