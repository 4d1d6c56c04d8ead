//! One test host at a time per machine: [`HostSlot`].

use std::time::Instant;

use super::TestHostError;
use crate::ImageError;

/// The right to run a test host: one at a time per machine (all
/// processes), since the test host's emulated CPU keeps a host core busy and
/// two of them on a 2-core machine halve each other's speed and make every
/// timeout a guess. Held as an exclusive `flock` on
/// `$TMPDIR/silo-testhost-slot.lock`; released on drop (or when the process
/// dies).
pub struct HostSlot {
    _file: std::fs::File,
}

impl HostSlot {
    /// Waits for the slot, saying so on stderr when another run holds it.
    pub fn acquire() -> Result<Self, TestHostError> {
        // Machine-wide (not per cache directory): two checkouts or CI runs
        // on one machine share its cores too.
        let path = std::env::temp_dir().join("silo-testhost-slot.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(ImageError::io(format!("opening {}", path.display())))?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let waited = Instant::now();
            eprintln!("[testhost] waiting for another test host to finish (one at a time)");
            // SAFETY: as above; blocks until the holder releases it.
            if unsafe { libc::flock(fd, libc::LOCK_EX) } != 0 {
                return Err(ImageError::io(format!("locking {}", path.display()))(
                    std::io::Error::last_os_error(),
                )
                .into());
            }
            eprintln!("[testhost] slot free after {:.1?}", waited.elapsed());
        }
        Ok(Self { _file: file })
    }
}
