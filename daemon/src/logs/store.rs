//! The log store on disk, under `<data_dir>/logs/`:
//!
//! ```text
//! logs/<function>/retention            RetentionInDays, if set
//! logs/<function>/<tenant key>/<seq>.jsonl
//! ```
//!
//! One directory per function (its log group) and one per tenant in it
//! (`-` for a function without tenants; else `t-` and 32 hex digits of the
//! tenant id's SHA-256, so no tenant id is ever part of a path). A tenant's
//! lines are append-only segments of JSON lines ([`Stored`]), numbered in
//! order; eviction and retention delete whole segments, oldest first.
//!
//! Bounds: each tenant keeps at most its share (`max_tenant_bytes`) and the
//! function at most `max_function_bytes`; when the function is over, the
//! tenant holding the most gives up its oldest segment. So a flooding
//! tenant evicts its own lines, never another tenant's while it holds more.
//!
//! Plain files rather than an embedded database: per-tenant eviction is a
//! file deletion, appends are sequential writes, a crash loses at most a
//! half-written last line (readers skip it), and nothing new is linked.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One stored event, one JSON line in a segment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Stored {
    /// Event time, ms since the epoch.
    pub t: u64,
    /// Ingestion time (when written to disk), ms since the epoch.
    pub i: u64,
    /// The log stream (the environment).
    pub s: String,
    /// The tenant, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// The message, in the function's format.
    pub m: String,
}

/// The directory name of a tenant (`None`: a function without tenants).
pub fn tenant_key(tenant: Option<&str>) -> String {
    match tenant {
        None => "-".into(),
        Some(t) => format!("t-{}", &hex::encode(Sha256::digest(t.as_bytes()))[..32]),
    }
}

/// Whether `name` may name a function's directory (Lambda's function
/// names: letters, digits, `-`, `_`).
pub fn valid_function(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The segments of a tenant directory, oldest first: (number, bytes,
/// last modified).
pub fn segments(dir: &Path) -> Vec<(u64, u64, SystemTime)> {
    let mut v: Vec<(u64, u64, SystemTime)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let seq = name.to_str()?.strip_suffix(".jsonl")?.parse().ok()?;
            let m = e.metadata().ok()?;
            Some((seq, m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)))
        })
        .collect();
    v.sort_by_key(|s| s.0);
    v
}

/// A segment's file.
pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:012}.jsonl"))
}

/// Reads a segment's events with their byte offsets (a torn last line,
/// or any line that does not parse, is skipped).
pub fn read_segment(path: &Path, each: impl FnMut(u64, Stored)) {
    read_segment_where(path, &|_| true, each)
}

/// [`read_segment`] for the lines whose raw text passes `pre` (a cheap
/// test that spares parsing the lines that cannot match).
pub fn read_segment_where(
    path: &Path,
    pre: &dyn Fn(&str) -> bool,
    mut each: impl FnMut(u64, Stored),
) {
    let Ok(f) = File::open(path) else { return };
    let mut r = BufReader::with_capacity(256 * 1024, f);
    let mut line = Vec::new();
    let mut offset = 0u64;
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let raw = std::str::from_utf8(&line).unwrap_or("");
                if raw.ends_with('\n') && pre(raw) {
                    if let Ok(s) = serde_json::from_str::<Stored>(raw) {
                        each(offset, s);
                    }
                }
                offset += n as u64;
            }
        }
    }
}

/// A function's `RetentionInDays`, if set.
pub fn retention_days(root: &Path, function: &str) -> Option<u32> {
    fs::read_to_string(root.join(function).join("retention"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// Sets (or with `None` removes) a function's `RetentionInDays`.
pub fn set_retention_days(root: &Path, function: &str, days: Option<u32>) -> std::io::Result<()> {
    let dir = root.join(function);
    fs::create_dir_all(&dir)?;
    let path = dir.join("retention");
    match days {
        Some(d) => fs::write(path, d.to_string()),
        None => match fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        },
    }
}

/// The length of the longest prefix of `buf` that ends at a line end and
/// is at most `room` bytes; `None` if its first line is longer.
fn whole_lines_within(buf: &[u8], room: u64) -> Option<usize> {
    let limit = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
    buf[..limit]
        .iter()
        .rposition(|&b| b == b'\n')
        .map(|i| i + 1)
}

/// The store's bounds.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Most bytes one function keeps.
    pub max_function_bytes: u64,
    /// Most bytes one tenant keeps of one function.
    pub max_tenant_bytes: u64,
}

impl Bounds {
    /// Segment size: an eighth of a tenant's share, 64 KiB to 4 MiB.
    fn segment_bytes(&self) -> u64 {
        (self.max_tenant_bytes / 8).clamp(64 * 1024, 4 * 1024 * 1024)
    }
}

#[derive(Default)]
struct TenantLog {
    /// (number, bytes), oldest first; the last is written to.
    segments: VecDeque<(u64, u64)>,
    bytes: u64,
}

#[derive(Default)]
struct Group {
    tenants: HashMap<String, TenantLog>,
    bytes: u64,
}

/// The writer's side of the store (one thread owns it).
pub struct StoreWriter {
    root: PathBuf,
    bounds: Bounds,
    groups: HashMap<String, Group>,
    /// Segments deleted to keep the bounds.
    pub evicted_segments: u64,
}

impl StoreWriter {
    /// The writer of the store at `root` (made if missing).
    pub fn new(root: PathBuf, bounds: Bounds) -> Self {
        let _ = fs::create_dir_all(&root);
        Self {
            root,
            bounds,
            groups: HashMap::new(),
            evicted_segments: 0,
        }
    }

    fn group(&mut self, function: &str) -> &mut Group {
        if !self.groups.contains_key(function) {
            // First write since the start: what is on disk counts.
            let mut g = Group::default();
            for e in fs::read_dir(self.root.join(function))
                .into_iter()
                .flatten()
                .flatten()
            {
                if !e.path().is_dir() {
                    continue;
                }
                let mut t = TenantLog::default();
                for (seq, bytes, _) in segments(&e.path()) {
                    t.segments.push_back((seq, bytes));
                    t.bytes += bytes;
                }
                g.bytes += t.bytes;
                g.tenants
                    .insert(e.file_name().to_string_lossy().into_owned(), t);
            }
            self.groups.insert(function.to_string(), g);
        }
        self.groups.get_mut(function).expect("inserted above")
    }

    /// Appends `lines` (already serialized, each ending in a newline) to
    /// `function`'s log of tenant `key`, keeping the bounds: the lines are
    /// cut at line ends into the segments they fill (however many lines
    /// one write brings), so no segment grows past the segment size but by
    /// a single line longer than it, and older segments are evicted as new
    /// ones fill.
    pub fn append(&mut self, function: &str, key: &str, lines: &[u8]) -> std::io::Result<()> {
        if !valid_function(function) || lines.is_empty() {
            return Ok(());
        }
        let segment = self.bounds.segment_bytes();
        let mut rest = lines;
        while !rest.is_empty() {
            let used = self
                .group(function)
                .tenants
                .get(key)
                .and_then(|t| t.segments.back())
                .map_or(segment, |&(_, bytes)| bytes);
            // Room in the segment written to; a full one (or none) rolls.
            let (room, roll) = if used < segment {
                (segment - used, false)
            } else {
                (segment, true)
            };
            let cut = whole_lines_within(rest, room)
                .filter(|&n| n > 0)
                .unwrap_or_else(|| {
                    if roll || used == 0 {
                        // A line longer than a segment goes alone.
                        rest.iter()
                            .position(|&b| b == b'\n')
                            .map_or(rest.len(), |i| i + 1)
                    } else {
                        0
                    }
                });
            if cut == 0 {
                // The next line does not fit what is left: a new segment.
                self.write_chunk(function, key, &[], true)?;
                continue;
            }
            self.write_chunk(function, key, &rest[..cut], roll)?;
            rest = &rest[cut..];
        }
        Ok(())
    }

    /// Writes `chunk` to the tenant's last segment (a new one if `roll` or
    /// none yet; an empty chunk with `roll` only starts one), then keeps
    /// the bounds.
    fn write_chunk(
        &mut self,
        function: &str,
        key: &str,
        chunk: &[u8],
        roll: bool,
    ) -> std::io::Result<()> {
        let dir = self.root.join(function).join(key);
        let g = self.group(function);
        let t = g.tenants.entry(key.to_string()).or_default();
        let seq = match t.segments.back() {
            Some(&(seq, _)) if !roll => seq,
            Some(&(seq, _)) => {
                t.segments.push_back((seq + 1, 0));
                seq + 1
            }
            None => {
                fs::create_dir_all(&dir)?;
                t.segments.push_back((1, 0));
                1
            }
        };
        if chunk.is_empty() {
            return Ok(());
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(&dir, seq))?;
        f.write_all(chunk)?;
        let n = chunk.len() as u64;
        if let Some(last) = t.segments.back_mut() {
            last.1 += n;
        }
        t.bytes += n;
        g.bytes += n;
        self.keep_bounds(function, key);
        Ok(())
    }

    fn keep_bounds(&mut self, function: &str, key: &str) {
        let (root, bounds) = (self.root.join(function), self.bounds);
        let Some(g) = self.groups.get_mut(function) else {
            return;
        };
        let mut evicted = 0;
        // The tenant's own share first.
        if let Some(t) = g.tenants.get_mut(key) {
            while t.bytes > bounds.max_tenant_bytes && t.segments.len() > 1 {
                let (seq, bytes) = t.segments.pop_front().expect("len > 1");
                let _ = fs::remove_file(segment_path(&root.join(key), seq));
                t.bytes -= bytes;
                g.bytes -= bytes;
                evicted += 1;
            }
        }
        // Then the function's: the largest tenant gives up its oldest.
        while g.bytes > bounds.max_function_bytes {
            let Some((k, t)) = g
                .tenants
                .iter_mut()
                .filter(|(_, t)| t.segments.len() > 1)
                .max_by_key(|(_, t)| t.bytes)
            else {
                break;
            };
            let (seq, bytes) = t.segments.pop_front().expect("len > 1");
            let _ = fs::remove_file(segment_path(&root.join(k), seq));
            t.bytes -= bytes;
            g.bytes -= bytes;
            evicted += 1;
        }
        self.evicted_segments += evicted;
    }

    /// Deletes the segments last written more than their function's
    /// retention ago; forgets what it knew of functions whose directory
    /// is gone.
    pub fn sweep_retention(&mut self, now: SystemTime) {
        for e in fs::read_dir(&self.root).into_iter().flatten().flatten() {
            let function = e.file_name().to_string_lossy().into_owned();
            let Some(days) = retention_days(&self.root, &function) else {
                continue;
            };
            let Some(cutoff) = now.checked_sub(Duration::from_secs(u64::from(days) * 86_400))
            else {
                continue;
            };
            let mut removed = false;
            for t in fs::read_dir(e.path()).into_iter().flatten().flatten() {
                for (seq, _, modified) in segments(&t.path()) {
                    if modified < cutoff {
                        let _ = fs::remove_file(segment_path(&t.path(), seq));
                        removed = true;
                    }
                }
            }
            if removed {
                // Recounted from disk at its next write.
                self.groups.remove(&function);
            }
        }
    }

    /// Bytes the function `function` holds, by tenant key (for tests and
    /// figures).
    pub fn usage(&mut self, function: &str) -> (u64, HashMap<String, u64>) {
        let g = self.group(function);
        (
            g.bytes,
            g.tenants
                .iter()
                .map(|(k, t)| (k.clone(), t.bytes))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(tenant: &str, i: usize) -> Vec<u8> {
        let mut v = serde_json::to_vec(&Stored {
            t: i as u64,
            i: i as u64,
            s: "stream".into(),
            n: Some(tenant.into()),
            m: format!("{tenant} line {i} {}", "x".repeat(200)),
        })
        .unwrap();
        v.push(b'\n');
        v
    }

    /// A tenant flooding its function's log evicts its own oldest lines,
    /// never the other tenant's, and the store stays within its bounds;
    /// a new writer (a restarted daemon) counts what is on disk.
    #[test]
    fn a_flooding_tenant_evicts_only_its_own_lines() {
        let dir = std::env::temp_dir().join(format!("silo-logs-store-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let bounds = Bounds {
            max_function_bytes: 2 << 20,
            max_tenant_bytes: 1 << 20,
        };
        let mut w = StoreWriter::new(dir.clone(), bounds);
        let (a, b) = (tenant_key(Some("quiet")), tenant_key(Some("flood")));
        for i in 0..100 {
            w.append("f", &a, &line("quiet", i)).unwrap();
        }
        for i in 0..50_000 {
            w.append("f", &b, &line("flood", i)).unwrap();
        }
        let (total, by) = w.usage("f");
        assert!(total <= bounds.max_function_bytes, "{total}");
        assert!(by[&b] <= bounds.max_tenant_bytes, "{}", by[&b]);
        let mut quiet = 0;
        for (seq, _, _) in segments(&dir.join("f").join(&a)) {
            read_segment(&segment_path(&dir.join("f").join(&a), seq), |_, s| {
                assert_eq!(s.n.as_deref(), Some("quiet"));
                quiet += 1;
            });
        }
        assert_eq!(quiet, 100);
        let mut again = StoreWriter::new(dir.clone(), bounds);
        assert_eq!(again.usage("f").0, total);
        let _ = fs::remove_dir_all(&dir);
    }

    /// One write of many segments' worth of lines (the writer's batch of a
    /// flood) is cut at line ends into segments of at most the segment
    /// size, so the tenant stays within its share plus the segment being
    /// written, and every line is whole; a line longer than a segment goes
    /// alone.
    #[test]
    fn a_large_batch_fills_segments_and_keeps_the_share() {
        let dir = std::env::temp_dir().join(format!("silo-logs-batch-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let bounds = Bounds {
            max_function_bytes: 1 << 20,
            max_tenant_bytes: 128 << 10,
        };
        let seg = bounds.segment_bytes();
        let mut w = StoreWriter::new(dir.clone(), bounds);
        let k = tenant_key(Some("flood"));
        let batch: Vec<u8> = (0..2_000).flat_map(|i| line("flood", i)).collect();
        assert!(batch.len() as u64 > 4 * bounds.max_tenant_bytes);
        w.append("f", &k, &batch).unwrap();
        let tdir = dir.join("f").join(&k);
        let mut total = 0;
        let mut last_i = None;
        for (seq, bytes, _) in segments(&tdir) {
            assert!(bytes <= seg, "segment {seq}: {bytes} bytes over {seg}");
            total += bytes;
            read_segment(&segment_path(&tdir, seq), |_, s| last_i = Some(s.t));
        }
        assert!(total <= bounds.max_tenant_bytes + seg, "{total}");
        assert_eq!(last_i, Some(1_999), "the newest lines kept, whole");
        // A line longer than a segment is written whole, alone.
        let mut long = serde_json::to_vec(&Stored {
            t: 5_000,
            i: 5_000,
            s: "stream".into(),
            n: Some("flood".into()),
            m: "y".repeat(seg as usize + 10),
        })
        .unwrap();
        long.push(b'\n');
        w.append("f", &k, &[line("flood", 4_999), long].concat())
            .unwrap();
        let (seq, _, _) = segments(&tdir).into_iter().last().unwrap();
        let mut in_last = Vec::new();
        read_segment(&segment_path(&tdir, seq), |_, s| in_last.push(s.t));
        assert_eq!(in_last, vec![5_000], "the long line alone in its segment");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn tenant_ids_never_become_paths() {
        for t in ["../x", "a/b", "..", "tenant A"] {
            let k = tenant_key(Some(t));
            assert!(k.starts_with("t-") && k.len() == 34, "{k}");
            assert!(k[2..].bytes().all(|b| b.is_ascii_hexdigit()));
        }
        assert!(!valid_function("../x"));
    }
}
