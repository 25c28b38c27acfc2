//! The crate's layering, read from its sources (src/, found through CARGO_MANIFEST_DIR):
//! every module imports only the modules below it (no upward import), and no two files of
//! one module import each other in a circle. The order is the one `src/lib.rs` documents.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Lowest first; `cli` is the binary (main.rs + src/cli/).
const LAYERS: &[&str] = &["gpu", "ops", "io", "report", "data", "nn", "eval", "calibrate", "select", "train", "experiments", "cli"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// (module, file key) of a source file: `src/calibrate/phase1.rs` -> ("calibrate", "phase1").
fn place(src: &Path, p: &Path) -> (String, String) {
    let rel: Vec<String> = p.strip_prefix(src).unwrap().iter().map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string()).collect();
    let module = match rel[0].as_str() {
        "main" => "cli".to_string(),
        m => m.to_string(),
    };
    let key = if rel.len() == 1 { "mod".to_string() } else { rel[1].clone() };
    (module, key)
}

/// Code without `//` comments (doc links name modules without importing them).
fn code(text: &str) -> String {
    text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// Identifiers following `prefix` (`crate::` / `super::`), including each name inside a
/// `prefix{a, b::c}` group.
fn after(text: &str, prefix: &str) -> Vec<String> {
    let mut out = vec![];
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        rest = &rest[i + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // the first name of every top-level entry of the group (nested groups skipped);
            // state: 0 before a name, 1 in it, 2 after it
            let (mut depth, mut state) = (0usize, 0u8);
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => state = 0,
                    c if depth == 0 && (c.is_alphanumeric() || c == '_') && state < 2 => {
                        if state == 0 {
                            out.push(String::new());
                            state = 1;
                        }
                        out.last_mut().unwrap().push(c);
                    }
                    _ if state == 1 => state = 2,
                    _ => {}
                }
            }
        } else {
            out.push(rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect());
        }
    }
    out
}

#[test]
fn modules_import_only_lower_layers_and_files_form_no_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![];
    rust_files(&src, &mut files);
    files.sort();
    let rank = |m: &str| LAYERS.iter().position(|x| *x == m);
    let mut upward = vec![];
    // file-level edges inside each module
    let mut edges: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    let mut keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    // lib.rs only declares the modules
    files.retain(|p| !p.ends_with("lib.rs"));
    for p in &files {
        let (m, k) = place(&src, p);
        keys.entry(m).or_default().insert(k);
    }
    for p in &files {
        let (m, k) = place(&src, p);
        let r = rank(&m).unwrap_or_else(|| panic!("{}: module {m} is not in the documented layer order {LAYERS:?}", p.display()));
        let text = code(&std::fs::read_to_string(p).unwrap());
        let siblings = &keys[&m];
        // `super::` in a module's root file, and `super::super::` below it, name the crate root
        let root = if k == "mod" { "super::" } else { "super::super::" };
        for target in after(&text, "crate::").into_iter().chain(after(&text, root)) {
            if rank(&target).is_some_and(|t| t > r) {
                upward.push(format!("{} imports crate::{target} ({m} is below {target})", p.display()));
            }
        }
        // crate::<same module>::<file> and super::<file> are edges between files of one module
        let own = format!("crate::{m}::");
        let mut targets: Vec<String> = after(&text, &own);
        if k != "mod" {
            targets.extend(after(&text, "super::"));
        }
        for t in targets {
            if siblings.contains(&t) && t != k {
                edges.entry((m.clone(), k.clone())).or_default().insert(t);
            }
        }
    }
    assert!(upward.is_empty(), "upward imports:\n{}", upward.join("\n"));
    // a circle among files of one module: depth-first search for a back edge
    fn visit(
        m: &str,
        k: &str,
        edges: &BTreeMap<(String, String), BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<String> {
        if let Some(i) = path.iter().position(|x| x == k) {
            return Some(format!("{m}: {} -> {k}", path[i..].join(" -> ")));
        }
        if done.contains(k) {
            return None;
        }
        path.push(k.to_string());
        for t in edges.get(&(m.to_string(), k.to_string())).into_iter().flatten() {
            if let Some(c) = visit(m, t, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(k.to_string());
        None
    }
    for (m, ks) in &keys {
        let mut done = BTreeSet::new();
        for k in ks {
            if let Some(c) = visit(m, k, &edges, &mut vec![], &mut done) {
                panic!("import circle: {c}");
            }
        }
    }
}

#[test]
fn the_reader_sees_groups_and_paths() {
    // the helpers above are what the layering test stands on: check them on known text
    assert_eq!(after("use crate::{gpu::Gpu, ops};", "crate::"), vec!["gpu", "ops"]);
    assert_eq!(after("x = crate::io::load(); super::phase1::f()", "crate::"), vec!["io"]);
    assert_eq!(after("super::phase1::f(); super::{capture, init::x}", "super::"), vec!["phase1", "capture", "init"]);
    assert_eq!(after("use crate::{io::{a, b}, nn::{c::{d}}, ops};", "crate::"), vec!["io", "nn", "ops"]);
    assert_eq!(code("let a = 1; // crate::train\n/// [`crate::x`]"), "let a = 1; \n");
}
