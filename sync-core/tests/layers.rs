//! The layers of `sync-core` (stated in `src/lib.rs`) hold: each module
//! imports only from its own layer or the layers below, the replica and
//! the hub do not import each other, and only the dialect files name a
//! kind of database.
//!
//! Read from the sources, as text: a `crate::<module>` path anywhere in a
//! file (a `use`, a path in code, a doc link) is an import of that module.

use std::path::{Path, PathBuf};

/// The layer of each top-level module of `src/`.
const LAYERS: &[(&str, u8)] = &[
    ("model", 1),
    ("dialect", 2),
    ("store", 3),
    ("replica", 4),
    ("hub", 4),
    ("sync", 5),
];

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

/// Every `.rs` file below `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`None` for `lib.rs`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).expect("below src");
    let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
    let first = first
        .strip_suffix(".rs")
        .map(str::to_owned)
        .unwrap_or(first);
    (first != "lib").then_some(first)
}

/// The modules a text names as `crate::<module>`, in a path or in a
/// group (`crate::{a, b::c}`).
fn imports(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut push = |name: String| {
        if !name.is_empty() && !out.contains(&name) {
            out.push(name);
        }
    };
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        match after.strip_prefix('{') {
            Some(group) => {
                for item in top_level_items(group) {
                    push(ident(item.trim_start()));
                }
            }
            None => push(ident(after)),
        }
        rest = after;
    }
    out
}

/// The identifier a text starts with.
fn ident(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// The comma-separated items of a `{...}` group whose opening brace was
/// just passed, up to its closing brace.
fn top_level_items(group: &str) -> Vec<&str> {
    let (mut depth, mut start, mut items) = (0usize, 0usize, Vec::new());
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&group[start..i]);
                return items;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items
}

/// The module path of a file of `src/` (`hub/push.rs` is `hub::push`,
/// `hub/mod.rs` is `hub`).
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("below src");
    let mut parts: Vec<String> = rel
        .components()
        .filter_map(|c| c.as_os_str().to_str().map(str::to_owned))
        .collect();
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs");
        if stem != "mod" && stem != "lib" {
            parts.push(stem.to_owned());
        }
    }
    parts
}

/// The top-level modules that `super::` chains in `code` (outside inline
/// modules) climb to from the module `path`: a chain as long as the path
/// reaches the crate root, and names a module from there.
fn climbs(code: &str, path: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("super::") {
        let mut chain = &rest[at..];
        let mut ups = 0;
        while let Some(next) = chain.strip_prefix("super::") {
            ups += 1;
            chain = next;
        }
        if ups >= path.len() {
            let name = ident(chain);
            if !name.is_empty() && !out.contains(&name) {
                out.push(name);
            }
        }
        rest = chain;
    }
    out
}

/// The text of a file before its unit tests (`#[cfg(test)]`).
fn code(text: &str) -> &str {
    text.split("#[cfg(test)]").next().unwrap_or(text)
}

fn files() -> (PathBuf, Vec<PathBuf>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    (src, files)
}

#[test]
fn every_module_imports_only_from_layers_below() {
    let (src, files) = files();
    let mut wrong = Vec::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        let Some(own) = layer(&module) else {
            wrong.push(format!(
                "{}: module `{module}` has no layer",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).expect("readable source");
        let path = module_path(&src, file);
        let mut targets = imports(&text);
        targets.extend(climbs(code(&text), &path));
        for target in targets {
            let Some(theirs) = layer(&target) else {
                // The crate root's re-exports (`crate::Replica`) are above
                // every layer.
                wrong.push(format!("{}: imports `crate::{target}`", file.display()));
                continue;
            };
            let sideways = own == 4 && theirs == 4 && target != module;
            if theirs > own || sideways {
                wrong.push(format!(
                    "{}: `{module}` (layer {own}) imports `{target}` (layer {theirs})",
                    file.display()
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
    assert!(files.len() > 30, "read {} files", files.len());
}

#[test]
fn only_the_dialect_files_name_a_kind_of_database() {
    let (src, files) = files();
    let mut wrong = Vec::new();
    for file in &files {
        if module_of(&src, file).as_deref() == Some("dialect") {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("readable source");
        for (i, line) in code(&text).lines().enumerate() {
            let names_a_kind = [
                "DbBackend::",
                "DatabaseBackend::",
                "DbBackend as",
                "DatabaseBackend as",
            ]
            .iter()
            .any(|k| line.contains(k));
            if names_a_kind {
                wrong.push(format!("{}:{}: {}", file.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "kinds of database named outside dialect/:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_checks_see_what_they_look_for() {
    assert_eq!(
        imports("use crate::store::rows;\nlet d = crate::dialect::of(k);\n// crate::x"),
        ["store", "dialect", "x"]
    );
    assert_eq!(code("fn a() {}\n#[cfg(test)]\nmod tests {}"), "fn a() {}\n");
    let src = Path::new("/s/src");
    assert_eq!(
        module_of(src, Path::new("/s/src/hub/push.rs")).as_deref(),
        Some("hub")
    );
    assert_eq!(
        module_of(src, Path::new("/s/src/store/mod.rs")).as_deref(),
        Some("store")
    );
    assert_eq!(module_of(src, Path::new("/s/src/lib.rs")), None);
    assert_eq!(
        imports("use crate::{hub::SqlHub, model::{change, clock}};"),
        ["hub", "model"]
    );
    let push = module_path(src, Path::new("/s/src/hub/push.rs"));
    assert_eq!(push, ["hub", "push"]);
    assert_eq!(module_path(src, Path::new("/s/src/hub/mod.rs")), ["hub"]);
    assert_eq!(
        climbs("use super::merge::Merge;", &push),
        Vec::<String>::new()
    );
    assert_eq!(climbs("use super::super::sync::x;", &push), ["sync"]);
    assert_eq!(layer("sync"), Some(5));
    assert_eq!(layer("tidesync"), None);
}

/// The modules `code` imports, resolved to module paths among `modules`:
/// `crate::a::b::Item` is the longest prefix that is a module, and
/// `super::x` is the sibling `x` of the module at `path`.
fn module_imports(code: &str, path: &[String], modules: &[Vec<String>]) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    let mut add = |target: Vec<String>| {
        if target != path && !out.contains(&target) {
            out.push(target);
        }
    };
    let longest = |parts: &[String]| {
        (1..=parts.len())
            .rev()
            .map(|k| parts[..k].to_vec())
            .find(|p| modules.contains(p))
    };
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        let full: String = after
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let parts: Vec<String> = full
            .split("::")
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect();
        if let Some(target) = longest(&parts) {
            add(target);
        }
        rest = after;
    }
    let parent = &path[..path.len().saturating_sub(1)];
    let mut rest = code;
    while let Some(at) = rest.find("super::") {
        let before = rest[..at].chars().last();
        let after = &rest[at + "super::".len()..];
        if !matches!(before, Some(c) if c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            let mut target = parent.to_vec();
            target.push(ident(after));
            if modules.contains(&target) {
                add(target);
            }
        }
        rest = after;
    }
    out
}

/// Within a layer, modules import each other one way: no circle.
#[test]
fn no_module_imports_form_a_circle() {
    let (src, files) = files();
    let modules: Vec<Vec<String>> = files.iter().map(|f| module_path(&src, f)).collect();
    let edges: Vec<Vec<Vec<String>>> = files
        .iter()
        .zip(&modules)
        .map(|(f, path)| {
            let text = std::fs::read_to_string(f).expect("readable source");
            module_imports(code(&text), path, &modules)
        })
        .collect();
    // Depth-first search for a back edge.
    fn visit(
        i: usize,
        modules: &[Vec<String>],
        edges: &[Vec<Vec<String>>],
        state: &mut [u8],
        stack: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        state[i] = 1;
        stack.push(i);
        for target in &edges[i] {
            let Some(j) = modules.iter().position(|m| m == target) else {
                continue;
            };
            if state[j] == 1 {
                let from = stack.iter().position(|k| *k == j).unwrap_or(0);
                return Some(stack[from..].to_vec());
            }
            if state[j] == 0
                && let Some(c) = visit(j, modules, edges, state, stack)
            {
                return Some(c);
            }
        }
        stack.pop();
        state[i] = 2;
        None
    }
    let mut state = vec![0u8; modules.len()];
    for i in 0..modules.len() {
        if state[i] == 0
            && let Some(circle) = visit(i, &modules, &edges, &mut state, &mut Vec::new())
        {
            let names: Vec<String> = circle.iter().map(|k| modules[*k].join("::")).collect();
            panic!(
                "modules import each other in a circle: {}",
                names.join(" -> ")
            );
        }
    }
}

#[test]
fn imports_resolve_to_modules() {
    let m = |s: &str| s.split("::").map(str::to_owned).collect::<Vec<_>>();
    let modules = vec![m("hub"), m("hub::push"), m("hub::merge"), m("store::codec")];
    let push = m("hub::push");
    assert_eq!(
        module_imports(
            "use super::merge::Merge;\nuse crate::store::codec::{db_sequence};\nself::super::x",
            &push,
            &modules
        ),
        [m("store::codec"), m("hub::merge")]
    );
}
