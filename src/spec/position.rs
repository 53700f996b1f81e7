//! Where each field of a YAML document sits, so a diagnostic about `spec.network.vip` can name its
//! line and column. serde_yaml 0.9 reports a location only for syntax errors and the first typed
//! error; to locate *every* error we walk libyaml's event stream ourselves. We use `unsafe-libyaml`,
//! the very parser serde_yaml runs on (already in the dependency tree), so positions and parse
//! behaviour agree exactly with what deserialisation saw.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::mem::MaybeUninit;

/// A 1-based position in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

/// Field path → position of its key (for mapping entries) or of the item (for sequence items).
/// Paths use the same spelling as diagnostics: `spec.controlPlane.nodes[0].ip`.
///
/// Only the paths asked for (and their ancestors) are kept: the walk builds each node's path in one
/// reused buffer, so indexing a file costs no allocation per node, whatever its size.
#[derive(Debug, Default)]
pub struct PositionIndex {
    by_path: HashMap<String, Pos>,
}

impl PositionIndex {
    /// Indexes the first document of `text` for `paths`. On a syntax error it keeps what it saw
    /// before it: the syntax error itself is reported by serde_yaml with its own location.
    pub fn build<'p>(text: &str, paths: impl IntoIterator<Item = &'p str>) -> Self {
        let mut wanted: HashSet<&str> = HashSet::new();
        for p in paths {
            let mut p = p;
            while wanted.insert(p) && !p.is_empty() {
                p = parent_path(p);
            }
        }
        wanted.insert("");
        let mut index = Self::default();
        let mut record = |path: &str, pos: Pos| {
            if wanted.contains(path) {
                index.by_path.entry(path.to_owned()).or_insert(pos);
            }
        };
        let mut buf = String::new();
        let mut stack: Vec<Frame> = Vec::new();
        let mut root_seen = false;
        EventStream::new(text).for_each(|event| match event {
            Event::NodeStart { pos, scalar, kind } => {
                match stack.last_mut() {
                    None => {
                        if root_seen {
                            return false; // a second document: not ours to index
                        }
                        root_seen = true;
                        record("", pos);
                    }
                    Some(Frame::Map {
                        base,
                        key_pos,
                        expecting_key,
                    }) => {
                        if *expecting_key {
                            *expecting_key = false;
                            *key_pos = pos;
                            buf.truncate(*base);
                            if kind == NodeKind::Scalar {
                                let key = String::from_utf8_lossy(scalar.unwrap_or_default());
                                push_key(&mut buf, *base, &key);
                            } else {
                                // A complex key: its insides go under a path no lookup uses.
                                buf.push('\u{0}');
                                stack.push(Frame::new(kind, buf.len()));
                            }
                            return true;
                        }
                        *expecting_key = true;
                        record(&buf, *key_pos);
                    }
                    Some(Frame::Seq { base, next }) => {
                        buf.truncate(*base);
                        push_index(&mut buf, *next);
                        *next += 1;
                        record(&buf, pos);
                    }
                }
                if kind != NodeKind::Scalar {
                    stack.push(Frame::new(kind, buf.len()));
                }
                true
            }
            Event::End => {
                stack.pop();
                true
            }
        });
        index
    }

    /// The position of `path`, or of its nearest ancestor that appears in the file (a missing
    /// field is reported where its parent is).
    pub fn locate(&self, path: &str) -> Option<Pos> {
        let mut p = path;
        loop {
            if let Some(pos) = self.by_path.get(p) {
                return Some(*pos);
            }
            if p.is_empty() {
                // No node at all (an empty file): the document starts at its beginning.
                return Some(Pos { line: 1, column: 1 });
            }
            p = parent_path(p);
        }
    }

    /// Whether `path` itself (not an ancestor) was asked for and found.
    pub fn has(&self, path: &str) -> bool {
        self.by_path.contains_key(path)
    }
}

/// Why a document was refused before serde_yaml expanded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooManyNodes {
    pub limit: usize,
    /// Where the count went past the limit (usually an alias).
    pub at: Pos,
}

/// Counts the nodes of `text` as serde_yaml would build them, an alias counting as the size of
/// the node it names, and stops at the first event past `limit`. libyaml's events do not expand
/// aliases, so this costs one pass over the text however much the aliases would expand to.
pub fn check_node_count(text: &str, limit: usize) -> Result<usize, TooManyNodes> {
    let mut count: usize = 0;
    let mut anchors: HashMap<Vec<u8>, usize> = HashMap::new();
    // Open collections: their anchor and the count before them.
    let mut open: Vec<(Option<Vec<u8>>, usize)> = Vec::new();
    let mut over = None;
    EventStream::new(text).for_each_raw(|raw| {
        match raw {
            Raw::Node {
                pos,
                anchor,
                alias,
                kind,
                ..
            } => {
                let size = match alias {
                    Some(name) => anchors.get(name).copied().unwrap_or(1),
                    None => 1,
                };
                let before = count;
                count = count.saturating_add(size);
                if kind == NodeKind::Scalar {
                    if let Some(a) = anchor {
                        anchors.insert(a.to_vec(), 1);
                    }
                } else {
                    open.push((anchor.map(<[u8]>::to_vec), before));
                }
                if count > limit {
                    over = Some(pos);
                    return false;
                }
            }
            Raw::End => {
                if let Some((Some(a), before)) = open.pop() {
                    anchors.insert(a, count - before);
                }
            }
        }
        true
    });
    match over {
        Some(at) => Err(TooManyNodes { limit, at }),
        None => Ok(count),
    }
}

/// Appends a mapping key to a path; keys that would read ambiguously (`docker.io`) are quoted.
pub fn join_key(parent: &str, key: &str) -> String {
    let mut out = parent.to_owned();
    push_key(&mut out, parent.len(), key);
    out
}

pub fn join_index(parent: &str, i: usize) -> String {
    let mut out = parent.to_owned();
    push_index(&mut out, i);
    out
}

/// `join_key` in place: `buf[..parent_len]` is the parent path.
fn push_key(buf: &mut String, parent_len: usize, key: &str) {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    match (parent_len == 0, plain) {
        (true, true) => buf.push_str(key),
        (false, true) => {
            buf.push('.');
            buf.push_str(key);
        }
        (_, false) => {
            let _ = write!(buf, "[{key:?}]");
        }
    }
}

fn push_index(buf: &mut String, i: usize) {
    let _ = write!(buf, "[{i}]");
}

/// `a.b[2]` → `a.b`, `a.b` → `a`, `a["x.y"]` → `a`, `a` → ``.
pub fn parent_path(path: &str) -> &str {
    if path.ends_with(']') {
        // The matching `[` is the last one not inside quotes; keys with `[` in quotes are rare
        // enough that falling back to a shorter ancestor is fine.
        if let Some(i) = path.rfind('[') {
            return &path[..i];
        }
    }
    match path.rfind('.') {
        Some(i) => &path[..i],
        None => "",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeKind {
    Scalar,
    Seq,
    Map,
}

enum Frame {
    /// `base`: the length of the mapping's own path in the walk's buffer.
    Map {
        base: usize,
        key_pos: Pos,
        expecting_key: bool,
    },
    Seq {
        base: usize,
        next: usize,
    },
}

impl Frame {
    fn new(kind: NodeKind, base: usize) -> Self {
        match kind {
            NodeKind::Map => Frame::Map {
                base,
                key_pos: Pos { line: 0, column: 0 },
                expecting_key: true,
            },
            _ => Frame::Seq { base, next: 0 },
        }
    }
}

enum Event<'e> {
    /// A scalar, alias, sequence start or mapping start; `scalar` is a scalar's text.
    NodeStart {
        pos: Pos,
        scalar: Option<&'e [u8]>,
        kind: NodeKind,
    },
    /// A sequence or mapping end.
    End,
}

/// An event with what the node count needs: anchors and alias targets.
enum Raw<'e> {
    Node {
        pos: Pos,
        anchor: Option<&'e [u8]>,
        alias: Option<&'e [u8]>,
        scalar: Option<&'e [u8]>,
        kind: NodeKind,
    },
    End,
}

/// A safe wrapper over libyaml's pull parser, owning the parser and the input it points into.
struct EventStream<'a> {
    parser: Box<MaybeUninit<unsafe_libyaml::yaml_parser_t>>,
    _input: &'a [u8],
}

impl<'a> EventStream<'a> {
    fn new(text: &'a str) -> Self {
        let input = text.as_bytes();
        let mut parser = Box::new(MaybeUninit::<unsafe_libyaml::yaml_parser_t>::uninit());
        // SAFETY: `yaml_parser_initialize` fully initialises the parser it is given; the input
        // slice outlives the parser (both live in `self`, the slice is borrowed for 'a), and the
        // parser is boxed so its address never changes while libyaml holds pointers into it.
        unsafe {
            let p = parser.as_mut_ptr();
            assert!(
                !unsafe_libyaml::yaml_parser_initialize(p).fail,
                "libyaml parser allocation"
            );
            unsafe_libyaml::yaml_parser_set_input_string(p, input.as_ptr(), input.len() as _);
        }
        Self {
            parser,
            _input: input,
        }
    }

    /// Feeds each node event to `f` until the stream ends, a syntax error stops it, or `f`
    /// returns false.
    fn for_each(self, mut f: impl FnMut(Event<'_>) -> bool) {
        self.for_each_raw(|raw| match raw {
            Raw::Node {
                pos, scalar, kind, ..
            } => f(Event::NodeStart { pos, scalar, kind }),
            Raw::End => f(Event::End),
        })
    }

    /// Like `for_each`, with anchors and alias names. The slices live as long as the call to `f`.
    fn for_each_raw(mut self, mut f: impl FnMut(Raw<'_>) -> bool) {
        loop {
            let mut event = MaybeUninit::<unsafe_libyaml::yaml_event_t>::uninit();
            // SAFETY: the parser was initialised in `new`; on success libyaml initialises
            // `event`, which we read and then free exactly once with `yaml_event_delete`.
            let ok = unsafe {
                !unsafe_libyaml::yaml_parser_parse(self.parser.as_mut_ptr(), event.as_mut_ptr())
                    .fail
            };
            if !ok {
                return;
            }
            let mut event = unsafe { event.assume_init() };
            let mark = event.start_mark;
            let pos = Pos {
                line: mark.line as usize + 1,
                column: mark.column as usize + 1,
            };
            let node = |anchor, alias, scalar, kind| {
                Some(Raw::Node {
                    pos,
                    anchor,
                    alias,
                    scalar,
                    kind,
                })
            };
            // SAFETY (each arm): the union member read is the one `type_` says is live; its
            // pointers are NUL-terminated strings (or `value` with `length` bytes) owned by the
            // event, which is deleted only after `f` returns, so the slices outlive their use.
            let (done, item) = unsafe {
                match event.type_ {
                    unsafe_libyaml::YAML_STREAM_END_EVENT => (true, None),
                    unsafe_libyaml::YAML_SCALAR_EVENT => {
                        let s = event.data.scalar;
                        let bytes = std::slice::from_raw_parts(s.value, s.length as usize);
                        (
                            false,
                            node(c_bytes(s.anchor), None, Some(bytes), NodeKind::Scalar),
                        )
                    }
                    unsafe_libyaml::YAML_ALIAS_EVENT => {
                        let a = event.data.alias;
                        let target = c_bytes(a.anchor).or(Some(&[][..]));
                        (false, node(None, target, None, NodeKind::Scalar))
                    }
                    unsafe_libyaml::YAML_SEQUENCE_START_EVENT => {
                        let anchor = c_bytes(event.data.sequence_start.anchor);
                        (false, node(anchor, None, None, NodeKind::Seq))
                    }
                    unsafe_libyaml::YAML_MAPPING_START_EVENT => {
                        let anchor = c_bytes(event.data.mapping_start.anchor);
                        (false, node(anchor, None, None, NodeKind::Map))
                    }
                    unsafe_libyaml::YAML_SEQUENCE_END_EVENT
                    | unsafe_libyaml::YAML_MAPPING_END_EVENT => (false, Some(Raw::End)),
                    _ => (false, None),
                }
            };
            let go_on = match item {
                Some(item) => f(item),
                None => true,
            };
            // SAFETY: the event was initialised by a successful parse and is deleted once; no
            // slice into it is used after this point.
            unsafe { unsafe_libyaml::yaml_event_delete(&mut event) };
            if done || !go_on {
                return;
            }
        }
    }
}

/// The bytes of a NUL-terminated libyaml string, `None` for a null pointer.
///
/// # Safety
/// `p` is null or points at a NUL-terminated string that outlives the returned slice.
unsafe fn c_bytes<'e>(p: *const u8) -> Option<&'e [u8]> {
    if p.is_null() {
        None
    } else {
        // SAFETY: guaranteed by the caller.
        Some(unsafe { std::ffi::CStr::from_ptr(p.cast()) }.to_bytes())
    }
}

impl Drop for EventStream<'_> {
    fn drop(&mut self) {
        // SAFETY: the parser was initialised in `new` and is deleted exactly once, here.
        unsafe { unsafe_libyaml::yaml_parser_delete(self.parser.as_mut_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
a: 1
spec:
  network:
    vip: 10.0.0.1
  nodes:
    - {ip: 10.0.0.2, mac: \"x\"}
    - ip: 10.0.0.3
  mirrors:
    docker.io: [\"https://m\"]
";

    #[test]
    fn locates_block_flow_and_sequence_entries() {
        let paths = [
            "a",
            "spec.network.vip",
            "spec.nodes[0]",
            "spec.nodes[0].mac",
            "spec.nodes[1].ip",
            "spec.mirrors[\"docker.io\"][0]",
            "spec.network.gateway",
        ];
        let ix = PositionIndex::build(DOC, paths);
        let at = |p: &str| ix.locate(p).map(|p| (p.line, p.column));
        assert_eq!(at("a"), Some((1, 1)));
        assert_eq!(at("spec.network.vip"), Some((4, 5)));
        assert_eq!(at("spec.nodes[0]"), Some((6, 7)));
        assert_eq!(at("spec.nodes[0].mac"), Some((6, 22)));
        assert_eq!(at("spec.nodes[1].ip"), Some((7, 7)));
        assert_eq!(at("spec.mirrors[\"docker.io\"][0]"), Some((9, 17)));
        // A missing field is reported where its nearest ancestor is.
        assert_eq!(at("spec.network.gateway"), Some((3, 3)));
    }

    #[test]
    fn keeps_what_precedes_a_syntax_error() {
        let ix = PositionIndex::build("a: 1\nb: [1, 2\nc: 3\n", ["a"]);
        assert_eq!(ix.locate("a").map(|p| p.line), Some(1));
    }

    #[test]
    fn keeps_only_the_paths_asked_for() {
        let ix = PositionIndex::build(DOC, ["spec.network.vip"]);
        assert!(ix.has("spec.network.vip") && ix.has("spec.network") && ix.has("spec"));
        assert!(!ix.has("a") && !ix.has("spec.nodes[0]"));
    }

    /// `levels` levels of `width` aliases to the level below: width^levels scalars once expanded.
    fn bomb(levels: usize, width: usize) -> String {
        let mut text = format!("l0: &l0 [{}]\n", vec!["x"; width].join(", "));
        for l in 1..=levels {
            let refs = vec![format!("*l{}", l - 1); width].join(", ");
            text.push_str(&format!("l{l}: &l{l} [{refs}]\n"));
        }
        text
    }

    #[test]
    fn an_alias_counts_as_the_node_it_names() {
        // Root map, then per level: key, sequence, `width` items.
        assert_eq!(
            check_node_count("a: &a [1, 2, 3]\nb: *a\n", 100),
            Ok(1 + 1 + 4 + 1 + 4)
        );
        assert_eq!(
            check_node_count("a: &a x\nb: [*a, *a]\n", 100),
            Ok(1 + 2 + 1 + 1 + 2)
        );
        let within = check_node_count(&bomb(2, 10), 10_000).unwrap();
        assert!(within > 100, "{within}");
    }

    #[test]
    fn a_billion_laughs_stops_at_the_limit_quickly() {
        let text = bomb(9, 10); // 10^9 scalars once expanded
        let started = std::time::Instant::now();
        let e = check_node_count(&text, 10_000).unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_millis(500));
        assert_eq!(e.limit, 10_000);
        // l3 (line 4): each of its aliases names l2's 1,111 nodes; the ninth passes 10,000.
        assert_eq!(e.at.line, 4, "{e:?}");
    }

    #[test]
    fn parent_paths() {
        assert_eq!(parent_path("a.b[2]"), "a.b");
        assert_eq!(parent_path("a.b"), "a");
        assert_eq!(parent_path("a[\"x.y\"]"), "a");
        assert_eq!(parent_path("a"), "");
    }
}
