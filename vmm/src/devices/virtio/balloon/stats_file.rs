//! The balloon's counters in a file the daemon reads (`--balloon-stats-file`).
//!
//! The VMM creates the file before its seccomp filters, maps one page of it
//! shared and writes the counters into the mapping after every batch: no
//! system call on the devices thread. The daemon (which never links the
//! VMM) reads the file with plain `read` (`daemon/src/vm_env/balloon.rs`).
//!
//! Layout, little-endian `u64`s: [`MAGIC`], the version `done`, the
//! [`COUNTERS`] counters in that order, the version `started`. The writer
//! stores `started = v`, then the counters, then `done = v`; a reader that
//! copies the bytes in address order and finds `done == started` has seen
//! one whole update (`done` is read before the counters, `started` after).

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::BalloonStats;

/// First word of the file: `SILOBAL1`.
pub const MAGIC: u64 = u64::from_le_bytes(*b"SILOBAL1");
/// The counters, in file order (names as the daemon reports them).
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

fn values(s: &BalloonStats) -> [u64; COUNTERS.len()] {
    [
        s.reports,
        s.ranges,
        s.pages_reported,
        s.discards,
        s.discarded_bytes,
        s.kept_bytes,
        s.bad_ranges,
        s.skipped_ranges,
        s.discard_errors,
        s.ignored_chains,
    ]
}

/// One shared page of the stats file, mapped read-write.
pub struct StatsFile {
    words: *const AtomicU64,
}

// SAFETY: the mapping is owned by this value alone (unmapped on drop) and
// only accessed through atomics.
unsafe impl Send for StatsFile {}

impl StatsFile {
    /// Creates (or truncates) `path`, never following a symbolic link, and
    /// maps it. Call before the seccomp filters (open, ftruncate, mmap).
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)?;
        file.set_len(FILE_SIZE as u64)?;
        // SAFETY: a fresh shared mapping of the file's one page, not fixed:
        // it aliases nothing this process owns. The file may be shrunk by
        // another process only with the VM's uid (a SIGBUS then ends only
        // this VM); the fd may close after mmap.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                FILE_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let f = Self { words: raw.cast() };
        f.word(0).store(MAGIC, Ordering::SeqCst);
        Ok(f)
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        assert!(i < WORDS);
        // SAFETY: `words` points at a live, page-aligned mapping of
        // FILE_SIZE bytes (> WORDS * 8), so word `i` is in bounds and
        // 8-aligned; it is only ever accessed atomically.
        unsafe { &*self.words.add(i) }
    }

    /// Writes `stats` (little-endian on x86_64, the only target).
    pub fn publish(&self, stats: &BalloonStats) {
        // The version lives in the `started` word; only this writer
        // changes it.
        let v = self.word(WORDS - 1).load(Ordering::SeqCst).wrapping_add(1);
        self.word(WORDS - 1).store(v, Ordering::SeqCst);
        for (i, x) in values(stats).into_iter().enumerate() {
            self.word(2 + i).store(x, Ordering::SeqCst);
        }
        self.word(1).store(v, Ordering::SeqCst);
    }
}

impl Drop for StatsFile {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `create`, unmapped once.
        unsafe {
            libc::munmap(self.words as *mut libc::c_void, FILE_SIZE);
        }
    }
}

/// Reads the counters back from the file's bytes (as the daemon does):
/// `None` if the magic is wrong, the file is short or an update was half
/// written.
pub fn decode(bytes: &[u8]) -> Option<[u64; COUNTERS.len()]> {
    let word = |i: usize| {
        bytes
            .get(i * 8..i * 8 + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    if word(0)? != MAGIC || word(1)? != word(WORDS - 1)? {
        return None;
    }
    let mut out = [0; COUNTERS.len()];
    for (i, o) in out.iter_mut().enumerate() {
        *o = word(2 + i)?;
    }
    Some(out)
}
