//! The balloon's counters in a file the daemon reads (`--balloon-stats-file`).
//!
//! The VMM creates the file before its seccomp filters, maps one page of it
//! shared and writes the counters into the mapping after every batch: no
//! system call on the devices thread. The daemon (which never links the
//! VMM) reads the file with plain `read` (`daemon/src/vm_env/balloon.rs`).
//!
//! The layout is `silo_vmm_abi::balloon_stats` (one definition for this
//! writer and the daemon's reader).

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::BalloonStats;

pub use silo_vmm_abi::balloon_stats::{decode, COUNTERS, FILE_SIZE, MAGIC, WORDS};

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
        for (i, x) in stats.to_words().into_iter().enumerate() {
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
