//! The module invariants of ARCHITECTURE.md, checked over the code's own paths.
//!
//! ARCHITECTURE.md's module table has a column "must never depend on": backticked names that are
//! either kiln modules (checked as `crate::NAME`, or `super::…::NAME` climbing to the crate root) or
//! external crates (checked as a path starting `NAME::`, or `::NAME::` for `kube`, whose bare name
//! inside kiln is its own module). The table is parsed from the document, so the map and the test
//! cannot drift apart. Test-only code (`#[cfg(test)]` modules and the files they name) is exempt: a
//! unit test may borrow a simulator to exercise a client.
//!
//! The scan is lexical on purpose: comments and string literals are blanked first, then every path is
//! read. It needs no compiler plugin, and what it misses (a macro-generated path) is rarer than what a
//! reviewer misses.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Crates that are some module's external system; naming them elsewhere breaks "nothing else talks
/// to that system".
const EXTERNAL: &[&str] = &[
    "anyhow",
    "axum",
    "gix",
    "k8s_openapi",
    "kube",
    "minijinja",
    "notify",
    "reqwest",
    "tonic",
    "vaultrs",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `module → forbidden names`, from the "must never depend on" column.
fn rules(architecture: &str) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    let mut column = None;
    for line in architecture.lines() {
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').collect();
        if cells.len() < 2 {
            column = None;
            continue;
        }
        if let Some(i) = cells
            .iter()
            .position(|c| c.trim().eq_ignore_ascii_case("must never depend on"))
        {
            column = Some(i);
            continue;
        }
        let Some(i) = column else { continue };
        let Some(module) = backticked(cells[0]).into_iter().next() else {
            continue;
        };
        let forbidden = cells.get(i).map(|c| backticked(c)).unwrap_or_default();
        out.insert(module, forbidden);
    }
    out
}

fn backticked(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The `.rs` files of a top-level module: `src/NAME.rs` or everything under `src/NAME/`.
fn module_files(name: &str) -> Vec<PathBuf> {
    let src = root().join("src");
    let single = src.join(format!("{name}.rs"));
    if single.is_file() {
        return vec![single];
    }
    let mut files = Vec::new();
    let mut stack = vec![src.join(name)];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

/// Blanks comments, string and char literals (keeping line breaks), so prose never counts as a path.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |out: &mut String, s: &[u8]| {
        for &c in s {
            out.push(if c == b'\n' { '\n' } else { ' ' });
        }
    };
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            let end = b[i..]
                .iter()
                .position(|&c| c == b'\n')
                .map_or(b.len(), |p| i + p);
            blank(&mut out, &b[i..end]);
            i = end;
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            let start = i;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            blank(&mut out, &b[start..i]);
        } else if b[i] == b'r'
            && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#'))
            && (i == 0 || !is_ident(b[i - 1]))
        {
            let start = i;
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push('r');
                i += 1;
                continue;
            }
            j += 1;
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            while j < b.len() && !b[j..].starts_with(&close) {
                j += 1;
            }
            i = (j + close.len()).min(b.len());
            blank(&mut out, &b[start..i]);
        } else if b[i] == b'"' {
            let start = i;
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(b.len());
            blank(&mut out, &b[start..i]);
        } else if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
            blank(&mut out, &b[i..i + 3]);
            i += 3;
        } else if b[i] == b'\'' && b.get(i + 1) == Some(&b'\\') {
            let start = i;
            i += 2;
            while i < b.len() && b[i] != b'\'' {
                i += 1;
            }
            i = (i + 1).min(b.len());
            blank(&mut out, &b[start..i]);
        } else {
            // Copy one whole UTF-8 character.
            let ch = text[i..].chars().next().expect("in bounds");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Removes `#[cfg(test)] mod x { … }` bodies; returns the code and the names of `#[cfg(test)] mod x;`
/// files, which are test-only as a whole.
fn without_tests(code: &str) -> (String, Vec<String>) {
    let mut out = code.to_owned();
    let mut test_files = Vec::new();
    let mut from = 0;
    while let Some(pos) = out[from..].find("#[cfg(test)]") {
        let at = from + pos;
        let rest = &out[at + "#[cfg(test)]".len()..];
        let trimmed = rest.trim_start();
        let offset = at + "#[cfg(test)]".len() + (rest.len() - trimmed.len());
        let item = trimmed
            .strip_prefix("pub(crate) ")
            .or_else(|| trimmed.strip_prefix("pub "))
            .unwrap_or(trimmed);
        let Some(after_mod) = item.strip_prefix("mod ") else {
            from = offset;
            continue;
        };
        let name: String = after_mod
            .bytes()
            .take_while(|&c| is_ident(c))
            .map(char::from)
            .collect();
        let tail = after_mod[name.len()..].trim_start();
        if tail.starts_with(';') {
            test_files.push(name);
            from = offset;
            continue;
        }
        let Some(open) = out[offset..].find('{').map(|p| offset + p) else {
            break;
        };
        let mut depth = 0;
        let mut end = out.len();
        for (k, c) in out[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + k + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        let blanked: String = out[at..end]
            .chars()
            .map(|c| if c == '\n' { '\n' } else { ' ' })
            .collect();
        out.replace_range(at..end, &blanked);
        from = end.min(out.len());
    }
    (out, test_files)
}

/// A file's module path below the crate root: `src/reconcile/steps/vm.rs` → `[reconcile, steps, vm]`.
fn module_path(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(root().join("src")).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// One reference to something outside the file: `(line, what)` where `what` is `crate::NAME` for a
/// kiln module or `NAME` for an external crate.
fn references(file: &Path, code: &str) -> Vec<(usize, String)> {
    let here = module_path(file);
    let b = code.as_bytes();
    let mut found = Vec::new();
    let line_of = |i: usize| code[..i].bytes().filter(|&c| c == b'\n').count() + 1;
    let mut i = 0;
    while i < b.len() {
        if !is_ident(b[i]) || (i > 0 && is_ident(b[i - 1])) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && is_ident(b[i]) {
            i += 1;
        }
        let word = &code[start..i];
        let leading_colons = start >= 2 && &code[start - 2..start] == "::";
        let followed = code[i..].starts_with("::");
        if !followed {
            continue;
        }
        // A path continues an earlier segment unless it starts here.
        let continues = leading_colons && start >= 3 && is_ident(b[start - 3]);
        if continues {
            continue;
        }
        match word {
            "crate" => {
                for m in first_segments(&code[i + 2..]) {
                    found.push((line_of(start), format!("crate::{m}")));
                }
            }
            "super" => {
                let mut depth = 1;
                let mut j = i + 2;
                while code[j..].starts_with("super::") {
                    depth += 1;
                    j += "super::".len();
                }
                // `super` from `a/b/c.rs` (module a::b::c) climbs to a::b, then a, then the root.
                if here.len() == depth {
                    for m in first_segments(&code[j..]) {
                        found.push((line_of(start), format!("crate::{m}")));
                    }
                }
            }
            // `kube::` bare is kiln's own module wherever `use crate::kube` brought it in; the crate
            // is always written `::kube`.
            _ if EXTERNAL.contains(&word) && (word != "kube" || leading_colons) => {
                found.push((line_of(start), word.to_owned()));
            }
            _ => {}
        }
    }
    found
}

/// The first segment(s) of a path's rest: `proxmox::X` → `[proxmox]`, `{a::X, b}` → `[a, b]`.
fn first_segments(rest: &str) -> Vec<String> {
    let rest = rest.trim_start();
    if let Some(group) = rest.strip_prefix('{') {
        let mut depth = 1;
        let mut names = Vec::new();
        let mut expecting = true;
        let mut k = 0;
        let g = group.as_bytes();
        while k < g.len() && depth > 0 {
            match g[k] {
                b'{' => depth += 1,
                b'}' => depth -= 1,
                b',' if depth == 1 => expecting = true,
                c if is_ident(c) && depth == 1 && expecting => {
                    let s = k;
                    while k < g.len() && is_ident(g[k]) {
                        k += 1;
                    }
                    names.push(group[s..k].to_owned());
                    expecting = false;
                    continue;
                }
                _ => {}
            }
            k += 1;
        }
        names
    } else {
        let name: String = rest
            .bytes()
            .take_while(|&c| is_ident(c))
            .map(char::from)
            .collect();
        vec![name]
    }
}

fn violations() -> Vec<String> {
    let architecture =
        std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let rules = rules(&architecture);
    assert!(
        rules.len() >= 10,
        "ARCHITECTURE.md's module table lost its \"must never depend on\" column: {rules:?}"
    );
    let mut out = Vec::new();
    for (module, forbidden) in &rules {
        let files = module_files(module);
        assert!(
            !files.is_empty(),
            "ARCHITECTURE.md names `{module}`, which src/ lacks"
        );
        let mut test_only: BTreeSet<PathBuf> = BTreeSet::new();
        for file in &files {
            let text = std::fs::read_to_string(file).expect("readable source");
            let (code, tests) = without_tests(&code_only(&text));
            let dir = if file.file_name().is_some_and(|n| n == "mod.rs")
                || file.parent() == Some(&root().join("src"))
            {
                file.parent().expect("parent").to_path_buf()
            } else {
                file.with_extension("")
            };
            for t in tests {
                test_only.insert(dir.join(format!("{t}.rs")));
                test_only.insert(dir.join(&t).join("mod.rs"));
            }
            if test_only.contains(file) {
                continue;
            }
            for (line, what) in references(file, &code) {
                let name = what.strip_prefix("crate::").unwrap_or(&what);
                if forbidden.iter().any(|f| f == name) {
                    let rel = file.strip_prefix(root()).unwrap_or(file);
                    out.push(format!(
                        "{}:{line}: `{module}` uses `{what}`",
                        rel.display()
                    ));
                }
            }
        }
    }
    out
}

#[test]
fn modules_keep_the_invariants_architecture_md_states() {
    let found = violations();
    assert!(
        found.is_empty(),
        "module invariants of ARCHITECTURE.md broken:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_scanner_sees_grouped_climbing_and_external_paths_and_not_prose() {
    let file = root().join("src/reconcile/steps/vm.rs");
    let code = code_only(
        "use crate::{proxmox::X, spec};\n// crate::git in a comment\nlet s = \"crate::secrets\";\n\
         use super::super::talos::Y; use super::super::super::git::Z;\nfn f() { tonic::Code::Ok; ::kube::Api; kube::x(); a::tonic::b(); }\n",
    );
    let refs: Vec<String> = references(&file, &code).into_iter().map(|r| r.1).collect();
    assert_eq!(
        refs,
        [
            "crate::proxmox",
            "crate::spec",
            "crate::git",
            "tonic",
            "kube"
        ],
    );
    let (code, files) = without_tests(&code_only(
        "use crate::a;\n#[cfg(test)]\nmod tests { use crate::sim; }\n#[cfg(test)]\nmod more;\n",
    ));
    assert!(!code.contains("sim"));
    assert_eq!(files, ["more"]);
}
