//! Where each field of a YAML document sits, so a diagnostic about `spec.network.vip` can name its
//! line and column. serde_yaml 0.9 reports a location only for syntax errors and the first typed
//! error; to locate *every* error we walk libyaml's event stream ourselves. We use `unsafe-libyaml`,
//! the very parser serde_yaml runs on (already in the dependency tree), so positions and parse
//! behaviour agree exactly with what deserialisation saw.

use std::collections::HashMap;
use std::mem::MaybeUninit;

/// A 1-based position in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

/// Field path → position of its key (for mapping entries) or of the item (for sequence items).
/// Paths use the same spelling as diagnostics: `spec.controlPlane.nodes[0].ip`.
#[derive(Debug, Default)]
pub struct PositionIndex {
    by_path: HashMap<String, Pos>,
}

impl PositionIndex {
    /// Indexes the first document of `text`. On a syntax error it keeps what it saw before it:
    /// the syntax error itself is reported by serde_yaml with its own location.
    pub fn build(text: &str) -> Self {
        let mut index = Self::default();
        let mut stack: Vec<Frame> = Vec::new();
        let mut root_seen = false;
        EventStream::new(text).for_each(|event| match event {
            Event::NodeStart { pos, scalar, kind } => {
                let path = match stack.last_mut() {
                    None => {
                        if root_seen {
                            return false; // a second document: not ours to index
                        }
                        root_seen = true;
                        index.by_path.insert(String::new(), pos);
                        String::new()
                    }
                    Some(Frame::Map {
                        path,
                        key,
                        expecting_key,
                    }) => {
                        if *expecting_key {
                            *expecting_key = false;
                            *key = Some((scalar.unwrap_or_default(), pos));
                            if kind != NodeKind::Scalar {
                                // A complex key: index its insides under a path no lookup uses.
                                stack.push(Frame::new(kind, "\u{0}".into()));
                            }
                            return true;
                        }
                        *expecting_key = true;
                        let (k, key_pos) = key.take().unwrap_or_else(|| (String::new(), pos));
                        let child = join_key(path, &k);
                        index.by_path.insert(child.clone(), key_pos);
                        child
                    }
                    Some(Frame::Seq { path, next }) => {
                        let child = join_index(path, *next);
                        *next += 1;
                        index.by_path.insert(child.clone(), pos);
                        child
                    }
                };
                if kind != NodeKind::Scalar {
                    stack.push(Frame::new(kind, path));
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
}

/// Appends a mapping key to a path; keys that would read ambiguously (`docker.io`) are quoted.
pub fn join_key(parent: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    match (parent.is_empty(), plain) {
        (true, true) => key.to_owned(),
        (true, false) => format!("[{key:?}]"),
        (false, true) => format!("{parent}.{key}"),
        (false, false) => format!("{parent}[{key:?}]"),
    }
}

pub fn join_index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
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
    Map {
        path: String,
        key: Option<(String, Pos)>,
        expecting_key: bool,
    },
    Seq {
        path: String,
        next: usize,
    },
}

impl Frame {
    fn new(kind: NodeKind, path: String) -> Self {
        match kind {
            NodeKind::Map => Frame::Map {
                path,
                key: None,
                expecting_key: true,
            },
            _ => Frame::Seq { path, next: 0 },
        }
    }
}

enum Event {
    /// A scalar, alias, sequence start or mapping start.
    NodeStart {
        pos: Pos,
        scalar: Option<String>,
        kind: NodeKind,
    },
    /// A sequence or mapping end.
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
    fn for_each(mut self, mut f: impl FnMut(Event) -> bool) {
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
            let (done, item) = match event.type_ {
                unsafe_libyaml::YAML_STREAM_END_EVENT => (true, None),
                unsafe_libyaml::YAML_SCALAR_EVENT => {
                    // SAFETY: for a scalar event the `scalar` union member is the live one, and
                    // `value` points at `length` bytes owned by the event.
                    let text = unsafe {
                        let s = event.data.scalar;
                        let bytes = std::slice::from_raw_parts(s.value, s.length as usize);
                        String::from_utf8_lossy(bytes).into_owned()
                    };
                    (
                        false,
                        Some(Event::NodeStart {
                            pos,
                            scalar: Some(text),
                            kind: NodeKind::Scalar,
                        }),
                    )
                }
                unsafe_libyaml::YAML_ALIAS_EVENT => (
                    false,
                    Some(Event::NodeStart {
                        pos,
                        scalar: None,
                        kind: NodeKind::Scalar,
                    }),
                ),
                unsafe_libyaml::YAML_SEQUENCE_START_EVENT => (
                    false,
                    Some(Event::NodeStart {
                        pos,
                        scalar: None,
                        kind: NodeKind::Seq,
                    }),
                ),
                unsafe_libyaml::YAML_MAPPING_START_EVENT => (
                    false,
                    Some(Event::NodeStart {
                        pos,
                        scalar: None,
                        kind: NodeKind::Map,
                    }),
                ),
                unsafe_libyaml::YAML_SEQUENCE_END_EVENT
                | unsafe_libyaml::YAML_MAPPING_END_EVENT => (false, Some(Event::End)),
                _ => (false, None),
            };
            // SAFETY: the event was initialised by a successful parse and is deleted once.
            unsafe { unsafe_libyaml::yaml_event_delete(&mut event) };
            if done {
                return;
            }
            if let Some(item) = item
                && !f(item)
            {
                return;
            }
        }
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
        let ix = PositionIndex::build(DOC);
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
        let ix = PositionIndex::build("a: 1\nb: [1, 2\nc: 3\n");
        assert_eq!(ix.locate("a").map(|p| p.line), Some(1));
    }

    #[test]
    fn parent_paths() {
        assert_eq!(parent_path("a.b[2]"), "a.b");
        assert_eq!(parent_path("a.b"), "a");
        assert_eq!(parent_path("a[\"x.y\"]"), "a");
        assert_eq!(parent_path("a"), "");
    }
}
