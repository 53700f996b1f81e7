//! Loading a set of intent files: per-file checks (YAML syntax, schema, types, rules), then the
//! cross-file rules, with every finding placed at its file, line and column.
//!
//! The result serves the reconciler's safety rule (DESIGN.md §7): a file that exists but does not
//! parse or validate is *unknown* — reported under its stem, never mistaken for an absent cluster.
//! A cross-file collision invalidates every file involved: kiln never guesses which one is right.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::cluster::Cluster;
use super::diagnostic::{Diagnostic, Finding, Severity, clip_values};
use super::document::ClusterDocument;
use super::position::{PositionIndex, check_node_count};
use super::rules::{self, NodeIdentity};
use super::schema::structural_findings;
use super::types::{HumanDuration, Ipv4Range, MacAddr, Vmid};

/// The largest intent file kiln reads (DESIGN.md §2): a pull request must not be able to make
/// every poll parse megabytes.
pub const MAX_FILE_BYTES: usize = 256 * 1024;

/// The most YAML nodes a file may hold once its aliases are expanded (DESIGN.md §2): a 100 KB
/// "billion laughs" file would otherwise expand to 10^8 values inside serde_yaml.
pub const MAX_NODES: usize = 10_000;

/// What `load` makes of a set of files.
#[derive(Debug, Default)]
pub struct LoadOutcome {
    /// Valid clusters, in input order.
    pub clusters: Vec<Cluster>,
    /// Files that exist but are not valid: their clusters are unknown, never absent.
    pub invalid: Vec<InvalidFile>,
    /// Findings that never fail (of valid and invalid files alike).
    pub warnings: Vec<Diagnostic>,
}

#[derive(Debug, Clone)]
pub struct InvalidFile {
    /// The file name without `.yaml`: the name of the cluster the file would declare.
    pub stem: String,
    pub path: PathBuf,
    /// Every error of the file, in file order.
    pub diagnostics: Vec<Diagnostic>,
}

impl InvalidFile {
    /// A file refused before it was read (a symlink, a file that is not text): unknown under its
    /// stem, like any other invalid file, with `why` as its one error.
    pub fn refused(path: &Path, why: &str) -> Self {
        Self {
            stem: stem_of(path),
            path: path.to_owned(),
            diagnostics: vec![Diagnostic {
                severity: Severity::Error,
                file: path.to_owned(),
                line: None,
                column: None,
                path: String::new(),
                message: clip_values(why),
                hint: None,
            }],
        }
    }
}

impl LoadOutcome {
    pub fn is_valid(&self) -> bool {
        self.invalid.is_empty()
    }
    /// Every error, file by file.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.invalid.iter().flat_map(|f| f.diagnostics.iter())
    }
}

/// The stem of an intent file's path (`clusters/production.yaml` → `production`).
pub fn stem_of(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// One file while it is being checked.
struct FileState<'a> {
    path: &'a Path,
    text: &'a str,
    stem: String,
    doc: Option<ClusterDocument>,
    ids: Vec<NodeIdentity>,
    findings: Vec<Finding>,
    /// Errors serde_yaml located itself (syntax, the first typed error).
    located: Vec<Diagnostic>,
    /// Built only for a file with findings (a second parse), on the file's own thread, for the
    /// paths of the first `indexed_for` findings.
    index: Option<PositionIndex>,
    indexed_for: usize,
}

/// Loads and validates intent files given as `(path, text)`; the paths name the files in
/// diagnostics and give each cluster its expected name (the stem).
pub fn load<'a>(files: impl IntoIterator<Item = (&'a Path, &'a str)>) -> LoadOutcome {
    let files: Vec<(&'a Path, &'a str)> = files.into_iter().collect();
    let mut states = check_files(&files);
    cross_file(&mut states);
    finish(states)
}

/// Files are independent until the cross-file rules, so a large set is checked on every core
/// (1,000 files is a real fleet's repository, loaded on every poll).
fn check_files<'a>(files: &[(&'a Path, &'a str)]) -> Vec<FileState<'a>> {
    const PER_THREAD_MIN: usize = 32;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(files.len() / PER_THREAD_MIN)
        .max(1);
    if threads == 1 {
        return files
            .iter()
            .map(|(p, t)| indexed(check_file(p, t)))
            .collect();
    }
    let chunk = files.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|(p, t)| indexed(check_file(p, t)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

fn indexed(mut st: FileState<'_>) -> FileState<'_> {
    if !st.findings.is_empty() {
        st.index = Some(index_for(&st));
        st.indexed_for = st.findings.len();
    }
    st
}

fn index_for(st: &FileState<'_>) -> PositionIndex {
    PositionIndex::build(st.text, st.findings.iter().map(|f| f.path.as_str()))
}

fn check_file<'a>(path: &'a Path, text: &'a str) -> FileState<'a> {
    let mut st = FileState {
        path,
        text,
        stem: stem_of(path),
        doc: None,
        ids: Vec::new(),
        findings: Vec::new(),
        located: Vec::new(),
        index: None,
        indexed_for: 0,
    };
    if let Some(refused) = over_limits(path, text) {
        st.located.push(refused);
        return st;
    }
    let value = super::yaml_json::from_yaml(text)
        .map_err(|e| yaml_error(path, &e, "not a valid YAML document"));
    let value = match value {
        Ok(serde_json::Value::Null) => {
            st.findings.push(
                Finding::error("", "the file holds no document")
                    .hint("an intent file is one `kind: Cluster` document, see examples/clusters"),
            );
            return st;
        }
        Ok(v) => v,
        Err(d) => {
            st.located.push(d);
            return st;
        }
    };
    st.findings = structural_findings(&value);
    st.findings.extend(string_type_findings(&value));
    if !st.findings.is_empty() {
        return st;
    }
    match ClusterDocument::deserialize(&value) {
        Ok(doc) => {
            st.ids = rules::identities(&doc);
            st.findings = rules::check(&doc, &st.stem, &st.ids);
            st.doc = Some(doc);
        }
        Err(json_err) => {
            // The schema cannot express every type (a range whose first address is after its
            // last); serde_yaml says where, for this first typed error.
            let d = match serde_yaml::from_str::<ClusterDocument>(text) {
                Err(e) => yaml_error(path, &e, "check the field's type"),
                Ok(_) => Diagnostic {
                    severity: Severity::Error,
                    file: path.to_owned(),
                    line: None,
                    column: None,
                    path: String::new(),
                    message: json_err.to_string(),
                    hint: None,
                },
            };
            st.located.push(d);
        }
    }
    st
}

/// The limits of DESIGN.md §2, checked before serde_yaml builds anything: its loader expands
/// every alias into a full copy, so the node count has to be known from the event stream first.
fn over_limits(path: &Path, text: &str) -> Option<Diagnostic> {
    let refuse = |at: Option<super::position::Pos>, message: String, hint: &str| Diagnostic {
        severity: Severity::Error,
        file: path.to_owned(),
        line: at.map(|p| p.line),
        column: at.map(|p| p.column),
        path: String::new(),
        message,
        hint: Some(hint.to_owned()),
    };
    if text.len() > MAX_FILE_BYTES {
        return Some(refuse(
            None,
            format!(
                "the file is larger than the limit of {} KiB",
                MAX_FILE_BYTES / 1024
            ),
            "an intent file declares one cluster and is a few KiB; kiln reads no larger file",
        ));
    }
    check_node_count(text, MAX_NODES).err().map(|e| {
        refuse(
            Some(e.at),
            format!(
                "the document holds more than the limit of {} YAML nodes once its aliases are expanded",
                e.limit
            ),
            "write the values out, or use fewer aliases (`*name`) of large anchored nodes",
        )
    })
}

/// Typed strings whose rules the schema cannot state (a range's order, a duration's unit): checked
/// here, with their paths, so they too are reported with the file's other errors.
fn string_type_findings(value: &serde_json::Value) -> Vec<Finding> {
    fn check<T: std::str::FromStr<Err = String>>(
        value: &serde_json::Value,
        pointer: &str,
        path: &str,
        out: &mut Vec<Finding>,
    ) {
        if let Some(s) = value.pointer(pointer).and_then(serde_json::Value::as_str)
            && let Err(e) = s.parse::<T>()
        {
            let mut f = Finding::error(path, e);
            if let Some(h) = super::schema::field_hint(path) {
                f = f.hint(h);
            }
            out.push(f);
        }
    }
    let mut out = Vec::new();
    check::<Ipv4Range>(
        value,
        "/spec/network/lbRange",
        "spec.network.lbRange",
        &mut out,
    );
    check::<HumanDuration>(
        value,
        "/spec/backup/schedule",
        "spec.backup.schedule",
        &mut out,
    );
    out
}

fn yaml_error(path: &Path, e: &serde_yaml::Error, hint: &str) -> Diagnostic {
    let text = e.to_string();
    // serde_yaml appends " at line L column C"; we print the position in front instead.
    let text = match text.find(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    };
    // Typed errors start with the field path: `spec.network: unknown field …`.
    let (field, message) = match text.split_once(": ") {
        Some((p, m)) if !p.contains(' ') && !p.is_empty() => (p.to_owned(), m.to_owned()),
        _ => (String::new(), text),
    };
    let loc = e.location();
    Diagnostic {
        severity: Severity::Error,
        file: path.to_owned(),
        line: loc.as_ref().map(|l| l.line()),
        column: loc.as_ref().map(|l| l.column()),
        path: field,
        message,
        hint: Some(hint.to_owned()),
    }
}

/// What one node entry or range of a file claims on the shared network and in Proxmox.
struct Owner {
    file: usize,
    path: String,
}

fn cross_file(states: &mut [FileState<'_>]) {
    let mut extra: Vec<(usize, Finding)> = Vec::new();
    let describe = |states: &[FileState<'_>], o: &Owner| {
        format!("{} ({})", states[o.file].path.display(), o.path)
    };

    // Cluster names: two files of one name (in different folders) would fight over one cluster.
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, st) in states.iter().enumerate() {
        if let Some(doc) = &st.doc
            && let Some(&j) = names.get(doc.metadata.name.as_str())
        {
            let name = doc.metadata.name.as_str();
            for (me, other) in [(i, j), (j, i)] {
                extra.push((
                    me,
                    Finding::error(
                        "metadata.name",
                        format!(
                            "cluster `{name}` is also declared by {}",
                            states[other].path.display()
                        ),
                    )
                    .hint("each cluster name may be used by one file only"),
                ));
            }
        } else if let Some(doc) = &st.doc {
            names.insert(doc.metadata.name.as_str(), i);
        }
    }

    let mut vmids: HashMap<Vmid, Owner> = HashMap::new();
    let mut macs: HashMap<MacAddr, Owner> = HashMap::new();
    // Addresses: node IPs, VIPs and load-balancer ranges, as inclusive intervals.
    let mut claims: Vec<(u32, u32, Owner, String)> = Vec::new();
    for (i, st) in states.iter().enumerate() {
        let Some(doc) = &st.doc else { continue };
        for id in &st.ids {
            let owner = || Owner {
                file: i,
                path: id.path.clone(),
            };
            if let Ok(v) = id.vmid {
                collide(&mut vmids, v, owner(), &mut extra, states, &describe, |o| {
                    (o.path.clone(), format!("VMID {v}"))
                });
            }
            let mac_path = if id.mac_given {
                format!("{}.mac", id.path)
            } else {
                id.path.clone()
            };
            collide(
                &mut macs,
                id.mac,
                Owner {
                    file: i,
                    path: mac_path,
                },
                &mut extra,
                states,
                &describe,
                |o| (o.path.clone(), format!("MAC {}", id.mac)),
            );
            let ip = u32::from(id.ip);
            claims.push((
                ip,
                ip,
                Owner {
                    file: i,
                    path: format!("{}.ip", id.path),
                },
                format!("IP {}", id.ip),
            ));
        }
        let n = &doc.spec.network;
        let vip = u32::from(n.vip);
        claims.push((
            vip,
            vip,
            Owner {
                file: i,
                path: "spec.network.vip".into(),
            },
            format!("VIP {}", n.vip),
        ));
        if let Some(r) = n.lb_range {
            claims.push((
                u32::from(r.first),
                u32::from(r.last),
                Owner {
                    file: i,
                    path: "spec.network.lbRange".into(),
                },
                format!("lbRange {r}"),
            ));
        }
    }

    // Sweep the intervals by start; `active` holds those that may still overlap what follows.
    claims.sort_by_key(|c| (c.0, c.1));
    let mut active: Vec<usize> = Vec::new();
    for k in 0..claims.len() {
        let (start, end, ref me, ref what) = claims[k];
        active.retain(|&a| claims[a].1 >= start);
        for &a in &active {
            let (o_start, o_end, ref other, ref other_what) = claims[a];
            if other.file == me.file {
                continue; // the file's own rules report this, once
            }
            let verb = if start == end && o_start == o_end {
                "is also"
            } else {
                "overlaps"
            };
            for (mine, my_what, theirs, their_what) in
                [(me, what, other, other_what), (other, other_what, me, what)]
            {
                extra.push((
                    mine.file,
                    Finding::error(
                        mine.path.clone(),
                        format!(
                            "{my_what} {verb} {their_what} of {}",
                            describe(states, theirs)
                        ),
                    )
                    .hint("clusters must not share addresses"),
                ));
            }
        }
        active.push(k);
    }

    for (file, f) in extra {
        states[file].findings.push(f);
    }
}

/// Records `key` for `owner`; when another file holds it already, both files get an error.
fn collide<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, Owner>,
    key: K,
    owner: Owner,
    extra: &mut Vec<(usize, Finding)>,
    states: &[FileState<'_>],
    describe: &impl Fn(&[FileState<'_>], &Owner) -> String,
    what: impl Fn(&Owner) -> (String, String),
) {
    match map.get(&key) {
        Some(first) if first.file != owner.file => {
            let (my_path, thing) = what(&owner);
            let (first_path, _) = what(first);
            extra.push((
                owner.file,
                Finding::error(my_path, format!("{thing} is also used by {}", describe(states, first)))
                    .hint("clusters must not share VMIDs, MACs or addresses; change vmidPrefix, mac or ip"),
            ));
            extra.push((
                first.file,
                Finding::error(first_path, format!("{thing} is also used by {}", describe(states, &owner)))
                    .hint("clusters must not share VMIDs, MACs or addresses; change vmidPrefix, mac or ip"),
            ));
        }
        Some(_) => {} // within one file: the file's own rules report it
        None => {
            map.insert(key, owner);
        }
    }
}

fn finish(states: Vec<FileState<'_>>) -> LoadOutcome {
    let mut out = LoadOutcome::default();
    for mut st in states {
        let mut diags = std::mem::take(&mut st.located);
        if !st.findings.is_empty() {
            // Cross-file findings came after the file's own index was built.
            let index = match st.index.take() {
                Some(ix) if st.indexed_for == st.findings.len() => ix,
                _ => index_for(&st),
            };
            for f in std::mem::take(&mut st.findings) {
                let pos = index.locate(&f.path);
                diags.push(Diagnostic {
                    severity: f.severity,
                    file: st.path.to_owned(),
                    line: pos.map(|p| p.line),
                    column: pos.map(|p| p.column),
                    path: f.path,
                    message: f.message,
                    hint: f.hint,
                });
            }
        }
        for d in &mut diags {
            // A path holds the file's keys, which are values too.
            d.path = clip_values(&d.path);
            d.message = clip_values(&d.message);
            d.hint = d.hint.as_deref().map(clip_values);
        }
        diags.sort_by_key(|d| (d.line, d.column));
        diags.dedup();
        let (errors, warnings): (Vec<_>, Vec<_>) =
            diags.into_iter().partition(Diagnostic::is_error);
        out.warnings.extend(warnings);
        let expanded = match (&st.doc, errors.is_empty()) {
            (Some(doc), true) => Cluster::expand(doc).map_err(|problems| {
                problems
                    .into_iter()
                    .map(|m| Diagnostic {
                        severity: Severity::Error,
                        file: st.path.to_owned(),
                        line: None,
                        column: None,
                        path: String::new(),
                        message: clip_values(&m),
                        hint: None,
                    })
                    .collect()
            }),
            _ => Err(errors),
        };
        match expanded {
            Ok(cluster) => out.clusters.push(cluster),
            Err(diagnostics) => out.invalid.push(InvalidFile {
                stem: st.stem,
                path: st.path.to_owned(),
                diagnostics,
            }),
        }
    }
    out
}
