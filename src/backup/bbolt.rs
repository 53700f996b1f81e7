//! etcd's database file (bbolt) as it streams: [`SnapshotCheck`] validates a snapshot chunk by chunk
//! without holding it, and [`EtcdDbBuilder`] writes a real one (for the simulator and tests).
//!
//! Layout, from bbolt v1.5.0 (`internal/common/page.go`, `meta.go`, `bucket.go`, `tx.go`):
//! - every page starts with a 16-byte header: `id u64`, `flags u16` (branch 0x01, leaf 0x02, meta
//!   0x04, freelist 0x10), `count u16`, `overflow u32` (the node spans `1 + overflow` pages);
//! - pages 0 and 1 hold the meta after the header: `magic u32` (0xED0CDAED), `version u32` (2),
//!   `pageSize u32`, `flags u32`, the root bucket `{root pgid, sequence}`, `freelist pgid`, `pgid`
//!   (the high-water mark: the file's page count), `txid`, and `checksum`, the FNV-64a of the
//!   preceding 56 bytes. All integers little-endian;
//! - a leaf element is `flags u32` (bucket 0x01), `pos u32`, `ksize u32`, `vsize u32`, a branch
//!   element `pos u32`, `ksize u32`, `pgid u64`; `pos` counts from the element itself;
//! - a bucket's value is `{root pgid u64, sequence u64}`; root 0 means an inline bucket whose page
//!   (header and elements) follows in the value.
//!
//! `Tx.WriteTo` (bbolt `tx.go`), which etcd's snapshot uses, writes exactly `pgid * pageSize` bytes:
//! two meta pages from the same transaction (page 1 with `txid - 1`) and then the data pages. etcd's
//! maintenance API (`server/etcdserver/api/v3rpc/maintenance.go`, v3.4.23 and v3.5.17) sends that
//! database in 32 KiB chunks followed by the SHA-256 of it; `etcdctl snapshot save` stores the stream
//! as it comes, and `etcdutl snapshot restore` (`etcdutl/snapshot/v3_snapshot.go`, v3.5.17) tells the
//! trailer is there by `size % 512 == 32`. Talos's `EtcdSnapshot` relays the etcd client's stream, so
//! it carries the trailer too.
//!
//! etcd keeps its key-value history in the bucket `key` whose keys are revisions (8-byte big-endian
//! main revision, `_`, 8-byte sub revision, and a trailing `t` for a tombstone:
//! `server/mvcc/revision.go`), values `mvccpb.KeyValue`; `etcdutl snapshot status` reports the main
//! revision of the bucket's last key as the snapshot's revision, and so does [`SnapshotCheck`].

use std::collections::{HashMap, HashSet};

use sha2::{Digest, Sha256};

/// bbolt's magic number (`internal/common/types.go`).
pub const MAGIC: u32 = 0xED0C_DAED;
/// The data file version bbolt writes and accepts.
pub const VERSION: u32 = 2;
/// The SHA-256 etcd's maintenance API appends after the database.
pub const HASH_TRAILER_LEN: usize = 32;
/// A freelist that is not persisted (`PgidNoFreelist`).
const NO_FREELIST: u64 = u64::MAX;

const PAGE_HEADER: usize = 16;
const META_LEN: usize = 64;
/// Bytes of the meta the checksum covers (everything before `checksum`).
const META_SUMMED: usize = 56;
const ELEMENT: usize = 16;
const BUCKET_HEADER: usize = 16;

const BRANCH: u16 = 0x01;
const LEAF: u16 = 0x02;
const META: u16 = 0x04;
const FREELIST: u16 = 0x10;
const BUCKET_LEAF: u32 = 0x01;

/// The smallest and largest page sizes accepted: etcdutl's trailer test assumes a multiple of 512,
/// and no platform bbolt runs on has pages above 1 MiB.
const MIN_PAGE: u32 = 512;
const MAX_PAGE: u32 = 1 << 20;

/// A key longer than this is remembered only as "long": an etcd revision key is 17 or 18 bytes.
const KEPT_KEY: usize = 64;

/// Why a stream is not a whole etcd snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BboltError {
    #[error("not an etcd database (bbolt file): {0}")]
    NotBbolt(String),
    #[error("meta page {page} is invalid: {reason}")]
    BadMeta { page: u64, reason: String },
    #[error("page size {0} is not one bbolt writes (a power of two from 512 B to 1 MiB)")]
    PageSize(u32),
    #[error("the snapshot is truncated after {received} bytes: {reason}")]
    Truncated { received: u64, reason: String },
    #[error(
        "the snapshot runs past its database: {received} bytes where the meta page says {expected}"
    )]
    TooLong { received: u64, expected: u64 },
    #[error("page {pgid}: {reason}")]
    BadPage { pgid: u64, reason: String },
    #[error(
        "the SHA-256 trailer does not match the database (trailer {trailer}, computed {computed})"
    )]
    HashMismatch { trailer: String, computed: String },
    #[error("no `key` bucket: a bbolt file, but not etcd's database")]
    NoKeyBucket,
    #[error("the last key of the `key` bucket is not an etcd revision ({0} bytes)")]
    BadRevisionKey(usize),
}

/// What a checked snapshot holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFacts {
    /// The main revision of the `key` bucket's last key (0 when it is empty), as `etcdutl snapshot
    /// status` reports it.
    pub revision: i64,
    /// Every byte fed, the trailer included.
    pub size: u64,
    /// The database alone (`pgid * page_size`).
    pub db_size: u64,
    pub has_hash_trailer: bool,
    /// SHA-256 of the database alone (what the trailer, when present, says).
    pub db_sha256: [u8; 32],
    pub page_size: u32,
    /// The transaction id of the meta page in use.
    pub txid: u64,
    /// Entries in the `key` bucket (revisions kept, tombstones included).
    pub key_count: u64,
}

#[derive(Debug, Clone, Copy)]
struct Meta {
    page_size: u32,
    root: u64,
    freelist: u64,
    pgid: u64,
    txid: u64,
}

/// The last key of a node, kept only when short enough to be a revision.
#[derive(Debug, Clone)]
enum LastKey {
    None,
    Short(Box<[u8]>),
    Long(usize),
}

impl LastKey {
    fn of(key: Option<&[u8]>) -> Self {
        match key {
            None => LastKey::None,
            Some(k) if k.len() <= KEPT_KEY => LastKey::Short(k.into()),
            Some(k) => LastKey::Long(k.len()),
        }
    }
}

#[derive(Debug, Clone)]
enum BucketRef {
    Root(u64),
    Inline { count: u64, last: LastKey },
}

/// What the check keeps of one page: enough to find a bucket's last key at the end, never the data.
#[derive(Debug, Clone)]
enum Summary {
    Branch {
        children: Vec<u64>,
    },
    Leaf {
        count: u64,
        last: LastKey,
        buckets: Vec<(Box<[u8]>, BucketRef)>,
    },
    Freelist,
    Malformed(String),
}

/// A node spanning several pages, collected until its last page arrives.
struct Pending {
    pgid: u64,
    need: usize,
    bytes: Vec<u8>,
}

/// Checks an etcd snapshot as it streams: feed every chunk in order, then [`SnapshotCheck::finish`].
///
/// The meta pages are checked as soon as their bytes arrive (a stream that does not start like a
/// bbolt file fails on its first chunk). Each later page leaves a small summary (a branch's
/// children, a leaf's last key and the buckets it holds); only a node spanning several pages is
/// buffered, until its last page. `finish` walks the tree from the meta's root through the
/// summaries, so a free page holding stale data is never mistaken for a live one.
pub struct SnapshotCheck {
    received: u64,
    head: Vec<u8>,
    page_size: Option<usize>,
    buf: Vec<u8>,
    next_page: u64,
    metas: [Option<Meta>; 2],
    pending: Vec<Pending>,
    pages: HashMap<u64, Summary>,
    hasher: Sha256,
    holdback: Vec<u8>,
    failed: Option<BboltError>,
}

impl Default for SnapshotCheck {
    fn default() -> Self {
        Self::new()
    }
}

impl SnapshotCheck {
    pub fn new() -> Self {
        Self {
            received: 0,
            head: Vec::new(),
            page_size: None,
            buf: Vec::new(),
            next_page: 0,
            metas: [None, None],
            pending: Vec::new(),
            pages: HashMap::new(),
            hasher: Sha256::new(),
            holdback: Vec::new(),
            failed: None,
        }
    }

    /// Bytes fed so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Feeds the next chunk. An error is final: later calls return it again.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), BboltError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.feed_inner(chunk);
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    fn feed_inner(&mut self, chunk: &[u8]) -> Result<(), BboltError> {
        self.received += chunk.len() as u64;
        self.hash(chunk);
        match self.page_size {
            Some(_) => self.pages_from(chunk),
            None => {
                self.head.extend_from_slice(chunk);
                self.check_head()?;
                if self.page_size.is_some() {
                    let head = std::mem::take(&mut self.head);
                    self.pages_from(&head)?;
                }
                Ok(())
            }
        }
    }

    /// The hash covers everything but the last 32 bytes seen, which may be the trailer.
    fn hash(&mut self, chunk: &[u8]) {
        self.holdback.extend_from_slice(chunk);
        if self.holdback.len() > HASH_TRAILER_LEN {
            let cut = self.holdback.len() - HASH_TRAILER_LEN;
            self.hasher.update(&self.holdback[..cut]);
            self.holdback.drain(..cut);
        }
    }

    /// Judges the first page's header and meta as far as they have arrived.
    fn check_head(&mut self) -> Result<(), BboltError> {
        let head = &self.head;
        if head.len() >= 10 && u16_at(head, 8) != META {
            return Err(BboltError::NotBbolt(format!(
                "the first page is not a meta page (flags {:#06x})",
                u16_at(head, 8)
            )));
        }
        if head.len() >= PAGE_HEADER + 4 && u32_at(head, PAGE_HEADER) != MAGIC {
            return Err(BboltError::NotBbolt(format!(
                "magic {:#010x}, not {MAGIC:#010x}",
                u32_at(head, PAGE_HEADER)
            )));
        }
        if head.len() >= PAGE_HEADER + META_LEN {
            let meta = parse_meta(&head[..PAGE_HEADER + META_LEN], 0)?;
            self.page_size = Some(meta.page_size as usize);
        }
        Ok(())
    }

    fn pages_from(&mut self, mut data: &[u8]) -> Result<(), BboltError> {
        let ps = self.page_size.expect("page size known");
        if !self.buf.is_empty() {
            let take = (ps - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() < ps {
                return Ok(());
            }
            let page = std::mem::take(&mut self.buf);
            self.page(&page)?;
        }
        while data.len() >= ps {
            self.page(&data[..ps])?;
            data = &data[ps..];
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    fn page(&mut self, page: &[u8]) -> Result<(), BboltError> {
        let pgid = self.next_page;
        self.next_page += 1;
        if pgid < 2 {
            let meta = parse_meta(page, pgid)?;
            if meta.page_size as usize != page.len() {
                return Err(BboltError::BadMeta {
                    page: pgid,
                    reason: format!(
                        "page size {} where meta 0 says {}",
                        meta.page_size,
                        page.len()
                    ),
                });
            }
            self.metas[pgid as usize] = Some(meta);
            return Ok(());
        }
        let meta = self.meta().expect("both meta pages come first");
        if pgid >= meta.pgid {
            let ps = page.len() as u64;
            return Err(BboltError::TooLong {
                received: self.received,
                expected: meta.pgid * ps,
            });
        }
        let mut done = Vec::new();
        for (i, p) in self.pending.iter_mut().enumerate() {
            p.bytes.extend_from_slice(page);
            if p.bytes.len() >= p.need {
                done.push(i);
            }
        }
        for i in done.into_iter().rev() {
            let p = self.pending.swap_remove(i);
            self.pages.insert(p.pgid, summarize(&p.bytes));
        }
        // Every page whose header names its own position may be a node; pages inside a node's
        // overflow rarely do, and a wrong guess is never reached from the root.
        if u64_at(page, 0) != pgid {
            return Ok(());
        }
        let flags = u16_at(page, 8);
        if !matches!(flags, BRANCH | LEAF | FREELIST) {
            return Ok(());
        }
        let overflow = u32_at(page, 12) as u64;
        if overflow == 0 {
            self.pages.insert(pgid, summarize(page));
        } else if pgid + overflow < meta.pgid {
            self.pending.push(Pending {
                pgid,
                need: (overflow as usize + 1) * page.len(),
                bytes: page.to_vec(),
            });
        } else {
            self.pages.insert(
                pgid,
                Summary::Malformed(format!("overflow {overflow} runs past the last page")),
            );
        }
        Ok(())
    }

    /// The meta in use: the higher transaction of the two (bbolt `db.go` `meta()`); both must be valid
    /// in a snapshot, which `Tx.WriteTo` writes whole.
    fn meta(&self) -> Option<Meta> {
        match self.metas {
            [Some(a), Some(b)] => Some(if b.txid > a.txid { b } else { a }),
            _ => None,
        }
    }

    /// Ends the stream: checks its length and trailer, walks the database from its root and reads
    /// the revision.
    pub fn finish(self) -> Result<SnapshotFacts, BboltError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let received = self.received;
        let Some(ps) = self.page_size else {
            return Err(if received == 0 {
                BboltError::NotBbolt("the stream is empty".into())
            } else {
                BboltError::Truncated {
                    received,
                    reason: "shorter than the first meta page".into(),
                }
            });
        };
        let Some(meta) = self.meta() else {
            return Err(BboltError::Truncated {
                received,
                reason: "the two meta pages are not complete".into(),
            });
        };
        let has_hash_trailer = match self.buf.len() {
            0 => false,
            HASH_TRAILER_LEN => true,
            n => {
                return Err(BboltError::Truncated {
                    received,
                    reason: format!(
                        "{n} bytes after the last whole page of {ps} (0, or a {HASH_TRAILER_LEN}-byte \
                         SHA-256 trailer, expected)"
                    ),
                });
            }
        };
        if self.next_page < meta.pgid {
            return Err(BboltError::Truncated {
                received,
                reason: format!("{} of {} pages", self.next_page, meta.pgid),
            });
        }
        let mut hasher = self.hasher;
        if !has_hash_trailer {
            hasher.update(&self.holdback);
        }
        let db_sha256: [u8; 32] = hasher.finalize().into();
        if has_hash_trailer && self.holdback[..] != db_sha256[..] {
            return Err(BboltError::HashMismatch {
                trailer: hex::encode(&self.holdback),
                computed: hex::encode(db_sha256),
            });
        }
        let walk = walk(&self.pages, &meta)?;
        Ok(SnapshotFacts {
            revision: walk.revision,
            size: received,
            db_size: meta.pgid * ps as u64,
            has_hash_trailer,
            db_sha256,
            page_size: meta.page_size,
            txid: meta.txid,
            key_count: walk.key_count,
        })
    }
}

/// Checks a whole snapshot held in memory (tests, small files).
pub fn check(bytes: &[u8]) -> Result<SnapshotFacts, BboltError> {
    let mut c = SnapshotCheck::new();
    c.feed(bytes)?;
    c.finish()
}

struct Walk {
    revision: i64,
    key_count: u64,
}

/// Visits every node reachable from the root bucket (each once: a page reached twice is a
/// corrupt tree) and reads the `key` bucket's last key.
fn walk(pages: &HashMap<u64, Summary>, meta: &Meta) -> Result<Walk, BboltError> {
    if meta.freelist != NO_FREELIST {
        match pages.get(&meta.freelist) {
            Some(Summary::Freelist) => {}
            _ => {
                return Err(BboltError::BadPage {
                    pgid: meta.freelist,
                    reason: "the meta's freelist page is not a freelist".into(),
                });
            }
        }
    }
    let mut seen = HashSet::new();
    let top = bucket_tree(pages, meta.root, &mut seen)?;
    let mut key = None;
    let mut nested: Vec<BucketRef> = Vec::new();
    for (name, b) in top.buckets {
        if &*name == b"key" {
            key = Some(b.clone());
        }
        nested.push(b);
    }
    // The other buckets are walked too, so a missing page anywhere is found.
    let mut key_tree = None;
    while let Some(b) = nested.pop() {
        if let BucketRef::Root(root) = b {
            let t = bucket_tree(pages, root, &mut seen)?;
            if matches!(key, Some(BucketRef::Root(r)) if r == root) {
                key_tree = Some((t.count, t.last.clone()));
            }
            nested.extend(t.buckets.into_iter().map(|(_, b)| b));
        }
    }
    let (key_count, last) = match key {
        None => return Err(BboltError::NoKeyBucket),
        Some(BucketRef::Inline { count, last }) => (count, last),
        Some(BucketRef::Root(_)) => key_tree.expect("the key bucket was walked"),
    };
    let revision = match last {
        LastKey::None => 0,
        LastKey::Short(k) => revision_of(&k).ok_or(BboltError::BadRevisionKey(k.len()))?,
        LastKey::Long(n) => return Err(BboltError::BadRevisionKey(n)),
    };
    Ok(Walk {
        revision,
        key_count,
    })
}

struct Tree {
    count: u64,
    last: LastKey,
    buckets: Vec<(Box<[u8]>, BucketRef)>,
}

/// One bucket's B+tree: its entries' count, its last key, and the buckets it holds.
fn bucket_tree(
    pages: &HashMap<u64, Summary>,
    root: u64,
    seen: &mut HashSet<u64>,
) -> Result<Tree, BboltError> {
    let mut tree = Tree {
        count: 0,
        last: LastKey::None,
        buckets: Vec::new(),
    };
    // Depth first, children in order, so the last leaf visited holds the last key.
    let mut stack = vec![root];
    while let Some(pgid) = stack.pop() {
        if pgid < 2 {
            return Err(BboltError::BadPage {
                pgid,
                reason: "a bucket points into the meta pages".into(),
            });
        }
        if !seen.insert(pgid) {
            return Err(BboltError::BadPage {
                pgid,
                reason: "reached twice from the root".into(),
            });
        }
        match pages.get(&pgid) {
            None => {
                return Err(BboltError::BadPage {
                    pgid,
                    reason: "referenced by the tree but not a branch or leaf page".into(),
                });
            }
            Some(Summary::Malformed(reason)) => {
                return Err(BboltError::BadPage {
                    pgid,
                    reason: reason.clone(),
                });
            }
            Some(Summary::Freelist) => {
                return Err(BboltError::BadPage {
                    pgid,
                    reason: "the tree points at a freelist page".into(),
                });
            }
            Some(Summary::Branch { children }) => stack.extend(children.iter().rev()),
            Some(Summary::Leaf {
                count,
                last,
                buckets,
            }) => {
                tree.count += count;
                if !matches!(last, LastKey::None) {
                    tree.last = last.clone();
                }
                tree.buckets.extend(buckets.iter().cloned());
            }
        }
    }
    Ok(tree)
}

/// Reads one node (a page and its overflow, or an inline bucket's page).
fn summarize(node: &[u8]) -> Summary {
    match summarize_inner(node) {
        Ok(s) => s,
        Err(reason) => Summary::Malformed(reason),
    }
}

fn summarize_inner(node: &[u8]) -> Result<Summary, String> {
    let flags = u16_at(node, 8);
    let count = u16_at(node, 10) as usize;
    match flags {
        FREELIST => Ok(Summary::Freelist),
        BRANCH => {
            if count == 0 {
                return Err("an empty branch page".into());
            }
            let mut children = Vec::with_capacity(count);
            for i in 0..count {
                let at = PAGE_HEADER + i * ELEMENT;
                let e = node
                    .get(at..at + ELEMENT)
                    .ok_or("branch elements run past the page")?;
                let pos = u32_at(e, 0) as usize;
                let ksize = u32_at(e, 4) as usize;
                if at + pos + ksize > node.len() {
                    return Err(format!("branch element {i}'s key runs past the page"));
                }
                children.push(u64_at(e, 8));
            }
            Ok(Summary::Branch { children })
        }
        LEAF => {
            let mut buckets = Vec::new();
            let mut last = None;
            for i in 0..count {
                let at = PAGE_HEADER + i * ELEMENT;
                let e = node
                    .get(at..at + ELEMENT)
                    .ok_or("leaf elements run past the page")?;
                let eflags = u32_at(e, 0);
                let pos = u32_at(e, 4) as usize;
                let ksize = u32_at(e, 8) as usize;
                let vsize = u32_at(e, 12) as usize;
                let k = at + pos;
                let key = node
                    .get(k..k + ksize)
                    .ok_or_else(|| format!("leaf element {i}'s key runs past the page"))?;
                let value = node
                    .get(k + ksize..k + ksize + vsize)
                    .ok_or_else(|| format!("leaf element {i}'s value runs past the page"))?;
                if eflags & BUCKET_LEAF != 0 {
                    buckets.push((
                        key.into(),
                        bucket_ref(value).map_err(|r| {
                            format!("bucket {:?}: {r}", String::from_utf8_lossy(key))
                        })?,
                    ));
                }
                last = Some(key);
            }
            Ok(Summary::Leaf {
                count: count as u64,
                last: LastKey::of(last),
                buckets,
            })
        }
        other => Err(format!(
            "flags {other:#06x} are not a branch, leaf or freelist page"
        )),
    }
}

fn bucket_ref(value: &[u8]) -> Result<BucketRef, String> {
    if value.len() < BUCKET_HEADER {
        return Err("a bucket value shorter than its header".into());
    }
    let root = u64_at(value, 0);
    if root != 0 {
        return Ok(BucketRef::Root(root));
    }
    let page = &value[BUCKET_HEADER..];
    if page.len() < PAGE_HEADER {
        return Err("an inline bucket without its page".into());
    }
    match summarize_inner(page)? {
        Summary::Leaf {
            count,
            last,
            buckets,
        } if buckets.is_empty() => Ok(BucketRef::Inline { count, last }),
        _ => Err("an inline bucket is not a leaf without buckets".into()),
    }
}

fn parse_meta(page: &[u8], pgid: u64) -> Result<Meta, BboltError> {
    let bad = |reason: String| BboltError::BadMeta { page: pgid, reason };
    if page.len() < PAGE_HEADER + META_LEN {
        return Err(bad("shorter than a meta".into()));
    }
    if u64_at(page, 0) != pgid {
        return Err(bad(format!("the header says page {}", u64_at(page, 0))));
    }
    if u16_at(page, 8) != META {
        return Err(bad(format!(
            "flags {:#06x}, not a meta page",
            u16_at(page, 8)
        )));
    }
    let m = &page[PAGE_HEADER..PAGE_HEADER + META_LEN];
    if u32_at(m, 0) != MAGIC {
        let reason = format!("magic {:#010x}, not {MAGIC:#010x}", u32_at(m, 0));
        return Err(if pgid == 0 {
            BboltError::NotBbolt(reason)
        } else {
            bad(reason)
        });
    }
    if u32_at(m, 4) != VERSION {
        return Err(bad(format!("version {}, not {VERSION}", u32_at(m, 4))));
    }
    let sum = fnv64a(&m[..META_SUMMED]);
    if u64_at(m, META_SUMMED) != sum {
        return Err(bad(format!(
            "checksum {:#018x}, computed {sum:#018x}",
            u64_at(m, META_SUMMED)
        )));
    }
    let page_size = u32_at(m, 8);
    if !(MIN_PAGE..=MAX_PAGE).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(BboltError::PageSize(page_size));
    }
    let meta = Meta {
        page_size,
        root: u64_at(m, 16),
        freelist: u64_at(m, 32),
        pgid: u64_at(m, 40),
        txid: u64_at(m, 48),
    };
    // The same bounds bbolt's `Meta.Write` asserts before writing one.
    if meta.root < 2 || meta.root >= meta.pgid {
        return Err(bad(format!(
            "root page {} outside 2..{}",
            meta.root, meta.pgid
        )));
    }
    if meta.freelist != NO_FREELIST && (meta.freelist < 2 || meta.freelist >= meta.pgid) {
        return Err(bad(format!(
            "freelist page {} outside 2..{}",
            meta.freelist, meta.pgid
        )));
    }
    Ok(meta)
}

/// FNV-1a, 64 bits (Go's `hash/fnv` `New64a`), bbolt's meta checksum.
fn fnv64a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The main revision of a `key` bucket key: `main(8, BE) '_' sub(8, BE)` and an optional `t`
/// (etcd `server/mvcc/revision.go`, `kvstore.go` `markTombstone`).
pub fn revision_of(key: &[u8]) -> Option<i64> {
    let tombstone = match key.len() {
        17 => false,
        18 => true,
        _ => return None,
    };
    if key[8] != b'_' || (tombstone && key[17] != b't') {
        return None;
    }
    Some(i64::from_be_bytes(key[..8].try_into().expect("8 bytes")))
}

/// The `key` bucket key of revision `{main, sub}`.
pub fn revision_key(main: i64, sub: i64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[..8].copy_from_slice(&main.to_be_bytes());
    k[8] = b'_';
    k[9..].copy_from_slice(&sub.to_be_bytes());
    k
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Appends the SHA-256 trailer etcd's maintenance API sends after the database.
pub fn with_hash_trailer(mut db: Vec<u8>) -> Vec<u8> {
    let sum: [u8; 32] = Sha256::digest(&db).into();
    db.extend_from_slice(&sum);
    db
}

/// Writes a real etcd database: the buckets etcd creates (`server/mvcc/buckets/bucket.go`, v3.5.17),
/// `key` holding the last `keys` revisions up to `revision` (as after a compaction, which the
/// `meta` bucket's `scheduledCompactRev`/`finishedCompactRev` record), `meta` with
/// `consistent_index` and `term`, and one member.
#[derive(Debug, Clone)]
pub struct EtcdDbBuilder {
    revision: i64,
    keys: u64,
    value_len: usize,
    page_size: u32,
    consistent_index: u64,
    term: u64,
    member: Option<(u64, String)>,
}

impl EtcdDbBuilder {
    /// A database at `revision` (≥ 1) with up to eight keys of 64-byte values, 4 KiB pages.
    pub fn new(revision: i64) -> Self {
        let revision = revision.max(1);
        Self {
            revision,
            keys: (revision as u64).min(8),
            value_len: 64,
            page_size: 4096,
            consistent_index: revision as u64 + 3,
            term: 2,
            member: None,
        }
    }

    /// How many of the latest revisions the `key` bucket holds (at most `revision`).
    pub fn keys(mut self, keys: u64) -> Self {
        self.keys = keys.clamp(1, self.revision as u64);
        self
    }

    pub fn value_len(mut self, len: usize) -> Self {
        self.value_len = len;
        self
    }

    /// A power of two from 512 to 1 MiB.
    pub fn page_size(mut self, page_size: u32) -> Self {
        assert!(
            (MIN_PAGE..=MAX_PAGE).contains(&page_size) && page_size.is_power_of_two(),
            "bbolt page size {page_size}"
        );
        self.page_size = page_size;
        self
    }

    pub fn consistent_index(mut self, index: u64, term: u64) -> Self {
        self.consistent_index = index;
        self.term = term;
        self
    }

    /// One member in the `members` bucket (etcd `server/etcdserver/api/membership/store.go`: the
    /// key is the id in hex, the value the member's JSON).
    pub fn member(mut self, id: u64, name: &str, peer_url: &str) -> Self {
        let json = serde_json::json!({"id": id, "peerURLs": [peer_url], "name": name});
        self.member = Some((id, json.to_string()));
        self
    }

    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The snapshot as etcd's maintenance API streams it: the database and its SHA-256.
    pub fn build(&self) -> Vec<u8> {
        with_hash_trailer(self.build_db())
    }

    /// The database alone, as `Tx.WriteTo` writes it.
    pub fn build_db(&self) -> Vec<u8> {
        let ps = self.page_size as usize;
        let first = self.revision - self.keys as i64 + 1;
        let mut key_entries = Vec::new();
        for (n, rev) in (first..=self.revision).enumerate() {
            let name = format!("/registry/kiln/{n:06}");
            let value = fill(self.value_len, rev);
            key_entries.push(Entry {
                key: revision_key(rev, 0).to_vec(),
                value: key_value(name.as_bytes(), rev, &value),
                bucket: false,
            });
        }
        let mut meta_entries = vec![
            Entry::plain(b"consistent_index", &self.consistent_index.to_be_bytes()),
            Entry::plain(b"term", &self.term.to_be_bytes()),
        ];
        if first > 1 {
            let compacted = revision_key(first - 1, 0);
            meta_entries.push(Entry::plain(b"finishedCompactRev", &compacted));
            meta_entries.push(Entry::plain(b"scheduledCompactRev", &compacted));
        }
        meta_entries.sort_by(|a, b| a.key.cmp(&b.key));
        let mut members = Vec::new();
        if let Some((id, json)) = &self.member {
            members.push(Entry::plain(format!("{id:x}").as_bytes(), json.as_bytes()));
        }
        let cluster = vec![Entry::plain(b"clusterVersion", b"3.5.0")];

        // Pages 0 and 1: meta; 2: the (empty) freelist; then the buckets too large to inline, and
        // the root bucket last.
        let mut out = Pages {
            ps,
            pages: vec![vec![0u8; ps]; 3],
        };
        let mut buckets: Vec<(&[u8], Vec<Entry>)> = vec![
            (b"alarm", vec![]),
            (b"auth", vec![]),
            (b"authRoles", vec![]),
            (b"authUsers", vec![]),
            (b"cluster", cluster),
            (b"key", key_entries),
            (b"lease", vec![]),
            (b"members", members),
            (b"members_removed", vec![]),
            (b"meta", meta_entries),
        ];
        let mut root_entries = Vec::new();
        for (name, entries) in buckets.drain(..) {
            let value = out.bucket(entries);
            root_entries.push(Entry {
                key: name.to_vec(),
                value,
                bucket: true,
            });
        }
        let root = out.tree(&root_entries);
        let mut freelist = page_header(2, FREELIST, 0, 0);
        freelist.resize(ps, 0);
        out.pages[2] = freelist;

        let pgid = out.pages.len() as u64;
        let txid = (self.revision as u64).max(2);
        for (id, tx) in [(0u64, txid), (1, txid - 1)] {
            let mut page = page_header(id, META, 0, 0);
            let mut m = Vec::with_capacity(META_LEN);
            m.extend_from_slice(&MAGIC.to_le_bytes());
            m.extend_from_slice(&VERSION.to_le_bytes());
            m.extend_from_slice(&self.page_size.to_le_bytes());
            m.extend_from_slice(&0u32.to_le_bytes());
            m.extend_from_slice(&root.to_le_bytes());
            m.extend_from_slice(&0u64.to_le_bytes());
            m.extend_from_slice(&2u64.to_le_bytes());
            m.extend_from_slice(&pgid.to_le_bytes());
            m.extend_from_slice(&tx.to_le_bytes());
            let sum = fnv64a(&m);
            m.extend_from_slice(&sum.to_le_bytes());
            page.extend_from_slice(&m);
            page.resize(ps, 0);
            out.pages[id as usize] = page;
        }
        out.pages.concat()
    }
}

struct Entry {
    key: Vec<u8>,
    value: Vec<u8>,
    bucket: bool,
}

impl Entry {
    fn plain(key: &[u8], value: &[u8]) -> Self {
        Self {
            key: key.to_vec(),
            value: value.to_vec(),
            bucket: false,
        }
    }
}

struct Pages {
    ps: usize,
    pages: Vec<Vec<u8>>,
}

impl Pages {
    /// Writes a bucket and returns its value in the parent: inline when its leaf fits a quarter
    /// page, as bbolt's `Bucket.inlineable` decides (`bucket.go`), else a tree of pages.
    fn bucket(&mut self, entries: Vec<Entry>) -> Vec<u8> {
        let inline = leaf_node(&entries, 0);
        if inline.len() <= self.ps / 4 {
            let mut v = vec![0u8; BUCKET_HEADER];
            v.extend_from_slice(&inline);
            return v;
        }
        let root = self.tree(&entries);
        let mut v = root.to_le_bytes().to_vec();
        v.extend_from_slice(&0u64.to_le_bytes());
        v
    }

    /// Packs entries into leaves, then branch levels until one root; returns the root's page id.
    fn tree(&mut self, entries: &[Entry]) -> u64 {
        let mut level: Vec<(Vec<u8>, u64)> = Vec::new();
        for group in pack(entries.iter().map(|e| e.key.len() + e.value.len()), self.ps) {
            let node = &entries[group];
            let id = self.alloc(|id| leaf_node(node, id));
            level.push((node[0].key.clone(), id));
        }
        while level.len() > 1 {
            let mut up = Vec::new();
            for group in pack(level.iter().map(|(k, _)| k.len()), self.ps) {
                let children = &level[group];
                let id = self.alloc(|id| branch_node(children, id));
                up.push((children[0].0.clone(), id));
            }
            level = up;
        }
        level[0].1
    }

    fn alloc(&mut self, node: impl FnOnce(u64) -> Vec<u8>) -> u64 {
        let id = self.pages.len() as u64;
        let mut bytes = node(id);
        let n = bytes.len().div_ceil(self.ps).max(1);
        let overflow = (n - 1) as u32;
        bytes[12..16].copy_from_slice(&overflow.to_le_bytes());
        bytes.resize(n * self.ps, 0);
        for chunk in bytes.chunks(self.ps) {
            self.pages.push(chunk.to_vec());
        }
        id
    }
}

/// Groups consecutive elements so each node fits a page (an element larger than a page gets a
/// node of its own, spanning overflow pages).
fn pack(sizes: impl Iterator<Item = usize>, ps: usize) -> Vec<std::ops::Range<usize>> {
    let mut groups = Vec::new();
    let mut start = 0;
    let mut size = PAGE_HEADER;
    let mut end = 0;
    for (i, s) in sizes.enumerate() {
        let add = ELEMENT + s;
        if i > start && size + add > ps {
            groups.push(start..i);
            start = i;
            size = PAGE_HEADER;
        }
        size += add;
        end = i + 1;
    }
    if end > start {
        groups.push(start..end);
    }
    groups
}

fn page_header(id: u64, flags: u16, count: u16, overflow: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(PAGE_HEADER);
    h.extend_from_slice(&id.to_le_bytes());
    h.extend_from_slice(&flags.to_le_bytes());
    h.extend_from_slice(&count.to_le_bytes());
    h.extend_from_slice(&overflow.to_le_bytes());
    h
}

/// A leaf node: header, elements, then each key and value (bbolt `node.go` `write`).
fn leaf_node(entries: &[Entry], id: u64) -> Vec<u8> {
    let count = u16::try_from(entries.len()).expect("a leaf holds under 65536 elements");
    let mut node = page_header(id, LEAF, count, 0);
    let mut data = Vec::new();
    let data_start = PAGE_HEADER + entries.len() * ELEMENT;
    for (i, e) in entries.iter().enumerate() {
        let elem = PAGE_HEADER + i * ELEMENT;
        let pos = (data_start + data.len() - elem) as u32;
        let flags = if e.bucket { BUCKET_LEAF } else { 0 };
        node.extend_from_slice(&flags.to_le_bytes());
        node.extend_from_slice(&pos.to_le_bytes());
        node.extend_from_slice(&(e.key.len() as u32).to_le_bytes());
        node.extend_from_slice(&(e.value.len() as u32).to_le_bytes());
        data.extend_from_slice(&e.key);
        data.extend_from_slice(&e.value);
    }
    node.extend_from_slice(&data);
    node
}

/// A branch node: each child's first key and page id.
fn branch_node(children: &[(Vec<u8>, u64)], id: u64) -> Vec<u8> {
    let count = u16::try_from(children.len()).expect("a branch holds under 65536 elements");
    let mut node = page_header(id, BRANCH, count, 0);
    let mut data = Vec::new();
    let data_start = PAGE_HEADER + children.len() * ELEMENT;
    for (i, (key, child)) in children.iter().enumerate() {
        let elem = PAGE_HEADER + i * ELEMENT;
        let pos = (data_start + data.len() - elem) as u32;
        node.extend_from_slice(&pos.to_le_bytes());
        node.extend_from_slice(&(key.len() as u32).to_le_bytes());
        node.extend_from_slice(&child.to_le_bytes());
        data.extend_from_slice(key);
    }
    node.extend_from_slice(&data);
    node
}

/// A value that differs per revision, so no two pages look alike.
fn fill(len: usize, rev: i64) -> Vec<u8> {
    let seed = format!("kiln-{rev}-");
    seed.bytes().cycle().take(len).collect()
}

/// `mvccpb.KeyValue` (etcd `api/mvccpb/kv.proto`): key=1, create_revision=2, mod_revision=3,
/// version=4, value=5, protobuf-encoded.
fn key_value(key: &[u8], rev: i64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let bytes_field = |out: &mut Vec<u8>, field: u8, b: &[u8]| {
        out.push(field << 3 | 2);
        varint(out, b.len() as u64);
        out.extend_from_slice(b);
    };
    bytes_field(&mut out, 1, key);
    for (field, v) in [(2u8, rev as u64), (3, rev as u64), (4, 1)] {
        out.push(field << 3);
        varint(&mut out, v);
    }
    if !value.is_empty() {
        bytes_field(&mut out, 5, value);
    }
    out
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_in(bytes: &[u8], chunk: usize) -> Result<SnapshotFacts, BboltError> {
        let mut c = SnapshotCheck::new();
        for part in bytes.chunks(chunk) {
            c.feed(part)?;
        }
        c.finish()
    }

    #[test]
    fn built_databases_read_back_at_their_revision() {
        for (rev, keys, value_len, ps) in [
            (1, 1, 8, 4096),
            (2, 2, 0, 4096),
            (17, 8, 64, 4096),
            (500, 300, 64, 4096),
            (5_000, 2_000, 100, 1024),
            (70_000, 1_500, 5_000, 4096),
            (123_456, 4_000, 40, 512),
        ] {
            let b = EtcdDbBuilder::new(rev)
                .keys(keys)
                .value_len(value_len)
                .page_size(ps);
            let snap = b.build();
            for chunk in [1024, 32 * 1024, 4093, snap.len()] {
                let facts = feed_in(&snap, chunk)
                    .unwrap_or_else(|e| panic!("rev {rev} ps {ps} chunk {chunk}: {e}"));
                assert_eq!(facts.revision, rev, "rev {rev} ps {ps}");
                assert_eq!(facts.key_count, keys);
                assert!(facts.has_hash_trailer);
                assert_eq!(facts.size, snap.len() as u64);
                assert_eq!(facts.db_size + 32, snap.len() as u64);
                assert_eq!(facts.page_size, ps);
            }
            let db = b.build_db();
            let facts = check(&db).unwrap();
            assert!(!facts.has_hash_trailer);
            assert_eq!(facts.revision, rev);
            assert_eq!(facts.db_sha256[..], snap[db.len()..]);
        }
    }

    #[test]
    fn large_databases_have_branch_pages_and_overflow() {
        let db = EtcdDbBuilder::new(20_000)
            .keys(3_000)
            .page_size(1024)
            .build_db();
        let ps = 1024;
        let mut flags = HashSet::new();
        let mut overflowed = false;
        let big = EtcdDbBuilder::new(99).keys(20).value_len(5_000).build_db();
        for page in big.chunks(4096) {
            overflowed |= u32_at(page, 12) > 0 && u16_at(page, 8) == LEAF;
        }
        for page in db.chunks(ps) {
            flags.insert(u16_at(page, 8));
        }
        assert!(flags.contains(&BRANCH), "{flags:?}");
        assert!(overflowed);
    }

    #[test]
    fn every_truncation_point_is_rejected() {
        let snap = EtcdDbBuilder::new(300).keys(60).page_size(512).build();
        let db_len = snap.len() - HASH_TRAILER_LEN;
        for cut in 0..snap.len() {
            // Cutting exactly the trailer off leaves a whole database without one.
            if cut == db_len {
                continue;
            }
            let r = check(&snap[..cut]);
            assert!(r.is_err(), "cut at {cut} of {} accepted: {r:?}", snap.len());
        }
        assert_eq!(check(&snap[..db_len]).unwrap().revision, 300);
    }

    #[test]
    fn a_flipped_byte_in_either_meta_page_is_rejected_even_without_the_trailer() {
        let db = EtcdDbBuilder::new(40).build_db();
        for page in [0usize, 1] {
            for at in [
                PAGE_HEADER + 8,
                PAGE_HEADER + 40,
                PAGE_HEADER + 48,
                PAGE_HEADER + 60,
            ] {
                let mut bad = db.clone();
                bad[page * 4096 + at] ^= 0x01;
                let err = check(&bad).unwrap_err();
                assert!(
                    matches!(err, BboltError::BadMeta { page: p, .. } if p == page as u64)
                        || matches!(err, BboltError::PageSize(_)),
                    "page {page} byte {at}: {err}"
                );
            }
        }
    }

    #[test]
    fn a_flipped_data_byte_breaks_the_trailer() {
        let mut snap = EtcdDbBuilder::new(40).build();
        let at = snap.len() - HASH_TRAILER_LEN - 100;
        snap[at] ^= 0x80;
        assert!(matches!(check(&snap), Err(BboltError::HashMismatch { .. })));
    }

    #[test]
    fn not_a_bbolt_file_fails_on_its_first_chunk() {
        for junk in [
            &b"-----BEGIN AGE ENCRYPTED FILE-----\n"[..],
            &[0u8; 4096][..],
            b"SQLite format 3\0",
        ] {
            let mut c = SnapshotCheck::new();
            let err = c.feed(junk).unwrap_err();
            assert!(matches!(err, BboltError::NotBbolt(_)), "{err}");
            assert_eq!(c.feed(b"more").unwrap_err(), err, "an error is final");
        }
        assert!(matches!(check(b""), Err(BboltError::NotBbolt(_))));
    }

    #[test]
    fn a_missing_page_in_the_tree_is_found() {
        let mut db = EtcdDbBuilder::new(900).keys(600).page_size(1024).build_db();
        // Wipe the header of the last page (a key-bucket node): the tree points at a page that is
        // no node.
        let last = db.len() - 1024;
        db[last..last + PAGE_HEADER].fill(0);
        let err = check(&db).unwrap_err();
        assert!(matches!(err, BboltError::BadPage { .. }), "{err}");
    }

    #[test]
    fn a_stream_longer_than_the_meta_says_is_rejected() {
        let mut db = EtcdDbBuilder::new(10).build_db();
        db.extend_from_slice(&[0u8; 4096]);
        assert!(matches!(check(&db), Err(BboltError::TooLong { .. })));
    }

    #[test]
    fn revision_keys_round_trip() {
        assert_eq!(revision_of(&revision_key(77, 3)), Some(77));
        let mut tomb = revision_key(9, 0).to_vec();
        tomb.push(b't');
        assert_eq!(revision_of(&tomb), Some(9));
        assert_eq!(revision_of(b"consistent_index"), None);
    }

    #[test]
    fn fnv64a_matches_gos_hash_fnv() {
        // Go: fnv.New64a() over "" and "a" (hash/fnv's test vectors).
        assert_eq!(fnv64a(b""), 0xcbf29ce484222325);
        assert_eq!(fnv64a(b"a"), 0xaf63dc4c8601ec8c);
    }
}
