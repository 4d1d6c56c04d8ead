//! Reading the store back: log groups, streams and events, for the tenants
//! a caller may see ([`Scope`]). The scope picks which tenant directories
//! are opened at all; a filter pattern only narrows what they hold, so no
//! request a tenant key signs can reach another tenant's lines.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::pattern::{Event, Pattern};
use super::prefilter::RawFilter;
use super::store::{
    read_segment_where, retention_days, segment_path, segments, tenant_key, Stored,
};

/// Whose events a caller may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every tenant's, and those of functions without tenants.
    All,
    /// These tenants' only.
    Tenants(HashSet<String>),
}

impl Scope {
    /// Narrowed to `tenant` (a caller's own choice): a tenant outside the
    /// scope leaves nothing.
    pub fn narrowed(&self, tenant: Option<&str>) -> Scope {
        match (self, tenant) {
            (s, None) => s.clone(),
            (Scope::All, Some(t)) => Scope::Tenants([t.to_string()].into()),
            (Scope::Tenants(ts), Some(t)) => {
                Scope::Tenants(ts.iter().filter(|x| *x == t).cloned().collect())
            }
        }
    }

    /// The tenant directories of `group` this scope opens.
    fn dirs(&self, group: &Path) -> Vec<(String, PathBuf)> {
        match self {
            Scope::All => std::fs::read_dir(group)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .collect(),
            Scope::Tenants(ts) => ts
                .iter()
                .map(|t| tenant_key(Some(t)))
                .map(|k| (k.clone(), group.join(k)))
                .filter(|(_, p)| p.is_dir())
                .collect(),
        }
    }
}

/// A log group as listed.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupInfo {
    /// The function.
    pub function: String,
    /// Bytes stored (of the scope's tenants).
    pub stored_bytes: u64,
    /// `RetentionInDays`, if set.
    pub retention_days: Option<u32>,
    /// When its directory was made, ms since the epoch.
    pub created_ms: u64,
}

fn ms_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// The log groups holding events of the scope (every group for
/// [`Scope::All`]), by function name.
pub fn groups(root: &Path, scope: &Scope) -> Vec<GroupInfo> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let function = e.file_name().to_string_lossy().into_owned();
        if !e.path().is_dir() || !super::store::valid_function(&function) {
            continue;
        }
        let dirs = scope.dirs(&e.path());
        if dirs.is_empty() && *scope != Scope::All {
            continue;
        }
        let stored_bytes = dirs
            .iter()
            .flat_map(|(_, d)| segments(d))
            .map(|s| s.1)
            .sum();
        let created_ms = e
            .metadata()
            .ok()
            .and_then(|m| m.created().or_else(|_| m.modified()).ok())
            .map_or(0, ms_of);
        out.push(GroupInfo {
            retention_days: retention_days(root, &function),
            function,
            stored_bytes,
            created_ms,
        });
    }
    out.sort_by(|a, b| a.function.cmp(&b.function));
    out
}

/// A log stream as listed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamInfo {
    /// Its name.
    pub name: String,
    /// First event's time.
    pub first_ms: u64,
    /// Last event's time.
    pub last_ms: u64,
    /// Last ingestion time.
    pub last_ingest_ms: u64,
    /// Bytes of its events.
    pub bytes: u64,
}

/// The earliest event time retention keeps for `function`.
fn kept_from(root: &Path, function: &str) -> u64 {
    retention_days(root, function).map_or(0, |d| {
        ms_of(SystemTime::now()).saturating_sub(u64::from(d) * 86_400_000)
    })
}

/// Calls `each` with every event of `function` the scope may read, tenant
/// by tenant, each tenant's in the order written; `each` returns false to
/// stop with that tenant.
fn scan(
    root: &Path,
    function: &str,
    scope: &Scope,
    pre: &dyn Fn(&str) -> bool,
    mut each: impl FnMut(&str, u64, u64, Stored) -> bool,
) {
    if !super::store::valid_function(function) {
        return;
    }
    let from = kept_from(root, function);
    for (key, dir) in scope.dirs(&root.join(function)) {
        'tenant: for (seq, _, _) in segments(&dir) {
            let mut go = true;
            read_segment_where(&segment_path(&dir, seq), pre, |off, s| {
                if go && s.t >= from {
                    go = each(&key, seq, off, s);
                }
            });
            if !go {
                break 'tenant;
            }
        }
    }
}

/// The streams of `function` holding events of the scope, by name.
pub fn streams(root: &Path, function: &str, scope: &Scope, prefix: &str) -> Vec<StreamInfo> {
    let mut by: BTreeMap<String, StreamInfo> = BTreeMap::new();
    scan(root, function, scope, &|_| true, |_, _, _, s| {
        if s.s.starts_with(prefix) {
            let i = by.entry(s.s.clone()).or_insert_with(|| StreamInfo {
                name: s.s.clone(),
                first_ms: s.t,
                ..StreamInfo::default()
            });
            i.first_ms = i.first_ms.min(s.t);
            i.last_ms = i.last_ms.max(s.t);
            i.last_ingest_ms = i.last_ingest_ms.max(s.i);
            i.bytes += s.m.len() as u64;
        }
        true
    });
    by.into_values().collect()
}

/// Where an event is: its order among the scope's events.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    /// Event time.
    pub t: u64,
    /// Tenant directory.
    pub key: String,
    /// Segment.
    pub seq: u64,
    /// Byte offset in it.
    pub off: u64,
}

impl Cursor {
    /// Its text form (`nextToken`, `eventId`).
    pub fn token(&self) -> String {
        format!("{}_{}_{}_{}", self.t, self.key, self.seq, self.off)
    }

    /// Parses [`Cursor::token`]'s form.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s
            .strip_prefix("f/")
            .or_else(|| s.strip_prefix("b/"))
            .unwrap_or(s);
        let mut p = s.split('_');
        let c = Self {
            t: p.next()?.parse().ok()?,
            key: p.next()?.to_string(),
            seq: p.next()?.parse().ok()?,
            off: p.next()?.parse().ok()?,
        };
        p.next().is_none().then_some(c)
    }
}

/// One event found.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// Where it is.
    pub cursor: Cursor,
    /// The event.
    pub event: Stored,
}

/// What to look for.
#[derive(Debug, Clone)]
pub struct EventQuery<'a> {
    /// The function (log group).
    pub function: &'a str,
    /// Whose events.
    pub scope: &'a Scope,
    /// Only these streams (empty: all).
    pub streams: &'a [String],
    /// Only streams starting with this.
    pub stream_prefix: &'a str,
    /// From this time on (inclusive).
    pub start_ms: Option<u64>,
    /// Before this time (exclusive).
    pub end_ms: Option<u64>,
    /// The filter pattern.
    pub pattern: &'a Pattern,
    /// Most events returned.
    pub limit: usize,
    /// Only events after this one (pagination).
    pub after: Option<&'a Cursor>,
}

/// The first `q.limit` matching events after `q.after`, in time order,
/// and whether there may be more.
pub fn events(root: &Path, q: &EventQuery<'_>) -> (Vec<Found>, bool) {
    let mut found: Vec<Found> = Vec::new();
    let mut more = false;
    let mut per_tenant = 0usize;
    let mut current = String::new();
    // A pattern naming one tenant opens only that tenant's directory (if
    // the scope has it); a line the pattern cannot match, as its raw text
    // shows, is not parsed at all ([`RawFilter`]).
    let narrowed = q
        .pattern
        .required_tenant()
        .map(|t| q.scope.narrowed(Some(t)));
    let scope = narrowed.as_ref().unwrap_or(q.scope);
    let raw = RawFilter::new(q.pattern);
    let pre = |line: &str| raw.could_match(line);
    scan(root, q.function, scope, &pre, |key, seq, off, s| {
        if key != current {
            current = key.to_string();
            per_tenant = 0;
        }
        if q.start_ms.is_some_and(|t| s.t < t)
            || q.end_ms.is_some_and(|t| s.t >= t)
            || (!q.streams.is_empty() && !q.streams.contains(&s.s))
            || !s.s.starts_with(q.stream_prefix)
        {
            return true;
        }
        let cursor = Cursor {
            t: s.t,
            key: key.to_string(),
            seq,
            off,
        };
        if q.after.is_some_and(|a| cursor <= *a) {
            return true;
        }
        if !q.pattern.matches(&Event {
            message: &s.m,
            tenant: s.n.as_deref(),
        }) {
            return true;
        }
        if per_tenant == q.limit {
            more = true;
            return false;
        }
        per_tenant += 1;
        found.push(Found { cursor, event: s });
        true
    });
    found.sort_by(|a, b| a.cursor.cmp(&b.cursor));
    if found.len() > q.limit {
        found.truncate(q.limit);
        more = true;
    }
    (found, more)
}

/// The last `limit` events of `stream` the scope may read, before
/// `before` if given (GetLogEvents from the tail).
pub fn last_events(
    root: &Path,
    function: &str,
    scope: &Scope,
    stream: &str,
    limit: usize,
    before: Option<&Cursor>,
) -> Vec<Found> {
    let mut found = Vec::new();
    scan(root, function, scope, &|_| true, |key, seq, off, s| {
        if s.s == stream {
            let cursor = Cursor {
                t: s.t,
                key: key.to_string(),
                seq,
                off,
            };
            if before.is_none_or(|b| cursor < *b) {
                found.push(Found { cursor, event: s });
            }
        }
        true
    });
    found.sort_by(|a, b| a.cursor.cmp(&b.cursor));
    let n = found.len().saturating_sub(limit);
    found.split_off(n)
}
