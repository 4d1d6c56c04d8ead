//! The balloon's counters file (`--balloon-stats-file`, `balloon.stats` in
//! the VM's directory): one page the VMM maps shared and updates after
//! every batch, read by the daemon with a plain `read`.
//!
//! Layout, little-endian `u64`s: [`MAGIC`], the version `done`, the
//! [`COUNTERS`] in that order, the version `started`. The writer stores
//! `started = v`, then the counters, then `done = v`; a reader that copies
//! the bytes in address order and finds `done == started` has seen one
//! whole update ([`decode`]).

/// First word of the file: `SILOBAL1`.
pub const MAGIC: u64 = u64::from_le_bytes(*b"SILOBAL1");
/// The counters' names, in file order.
pub const COUNTERS: [&str; 10] = [
    "reports",
    "ranges",
    "pages_reported",
    "discards",
    "discarded_bytes",
    "kept_bytes",
    "bad_ranges",
    "skipped_ranges",
    "discard_errors",
    "ignored_chains",
];
/// Words in the file: magic, done, counters, started.
pub const WORDS: usize = COUNTERS.len() + 3;
/// Size of the file (one page).
pub const FILE_SIZE: usize = 4096;

/// What a VM's balloon did so far. Read by the daemon, these are numbers
/// the VMM wrote: as trustworthy as that VM's VMM (metrics and tests only).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct BalloonCounters {
    /// Reporting chains served.
    pub reports: u64,
    /// Ranges found valid (inside one RAM region, page-aligned).
    pub ranges: u64,
    /// 4 KiB pages in the valid ranges.
    pub pages_reported: u64,
    /// `madvise` calls that gave something back (one per valid range with
    /// at least one whole granule).
    pub discards: u64,
    /// Bytes given back to the host (whole granules: 2 MiB blocks, or
    /// 4 KiB pages with `--small-pages`).
    pub discarded_bytes: u64,
    /// Bytes of valid ranges kept (the parts outside whole granules).
    pub kept_bytes: u64,
    /// Ranges refused: unaligned, empty, overflowing or outside RAM.
    pub bad_ranges: u64,
    /// Descriptors past the device's per-chain limit, skipped.
    pub skipped_ranges: u64,
    /// `madvise` calls that failed.
    pub discard_errors: u64,
    /// Chains on the inflate and deflate queues (returned unused).
    pub ignored_chains: u64,
}

impl BalloonCounters {
    /// The counters in file order ([`COUNTERS`]).
    pub fn to_words(&self) -> [u64; COUNTERS.len()] {
        [
            self.reports,
            self.ranges,
            self.pages_reported,
            self.discards,
            self.discarded_bytes,
            self.kept_bytes,
            self.bad_ranges,
            self.skipped_ranges,
            self.discard_errors,
            self.ignored_chains,
        ]
    }

    /// The counters from words in file order.
    pub fn from_words(w: [u64; COUNTERS.len()]) -> Self {
        let [reports, ranges, pages_reported, discards, discarded_bytes, kept_bytes, bad_ranges, skipped_ranges, discard_errors, ignored_chains] =
            w;
        Self {
            reports,
            ranges,
            pages_reported,
            discards,
            discarded_bytes,
            kept_bytes,
            bad_ranges,
            skipped_ranges,
            discard_errors,
            ignored_chains,
        }
    }
}

/// Reads the counters from the file's bytes: `None` if the magic is wrong,
/// the file is short or an update was half written.
pub fn decode(bytes: &[u8]) -> Option<BalloonCounters> {
    let word = |i: usize| {
        let b: [u8; 8] = bytes.get(i * 8..i * 8 + 8)?.try_into().ok()?;
        Some(u64::from_le_bytes(b))
    };
    if word(0)? != MAGIC || word(1)? != word(WORDS - 1)? {
        return None;
    }
    let mut w = [0; COUNTERS.len()];
    for (i, o) in w.iter_mut().enumerate() {
        *o = word(2 + i)?;
    }
    Some(BalloonCounters::from_words(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes as the VMM's writer lays the page out.
    fn page(c: &BalloonCounters, done: u64, started: u64) -> Vec<u8> {
        let mut words = vec![MAGIC, done];
        words.extend(c.to_words());
        words.push(started);
        let mut b: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        b.resize(FILE_SIZE, 0);
        b
    }

    #[test]
    fn whole_updates_decode_and_torn_short_or_foreign_pages_do_not() {
        let c = BalloonCounters::from_words([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(c.ignored_chains, 10);
        assert_eq!(c.reports, 1);
        assert_eq!(decode(&page(&c, 3, 3)), Some(c));
        assert_eq!(decode(&page(&c, 2, 3)), None, "half written");
        assert_eq!(decode(&page(&c, 3, 3)[..40]), None, "short");
        assert_eq!(decode(&[0u8; FILE_SIZE]), None, "no magic");
    }
}
