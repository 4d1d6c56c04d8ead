//! The VM's balloon: how its guest memory is given back (the VMM's flags)
//! and the device's counters, read from the file the VMM publishes them to
//! (`balloon.stats` in the VM's directory; the layout is
//! `silo_vmm_abi::balloon_stats`, the VMM's writer's too).

use std::path::Path;

/// File name of the counters in the VM's directory.
pub const STATS_FILE: &str = "balloon.stats";

pub use silo_vmm_abi::balloon_stats::{decode, BalloonCounters};

/// The guest's page reporting order by default: free blocks of 32 pages
/// (128 KiB). Linux reports a zone only while it holds 32 free blocks of
/// the order above its low watermark: at order 5 that is 4 MiB, where the
/// kernel's own order (10 on silo's kernel, 4 MiB blocks) needs 128 MiB
/// and a 128 MiB guest never reported.
pub const DEFAULT_REPORT_ORDER: u8 = 5;

/// How a VM's guest memory is backed and given back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestMemoryMode {
    /// Back guest RAM with 4 KiB host pages (`--small-pages`): an idle VM
    /// holds only the pages its guest touched, and every free 4 KiB page
    /// the guest reports goes back; boots take more, smaller nested page
    /// faults. Off: transparent huge pages, given back in whole 2 MiB
    /// blocks only.
    pub small_pages: bool,
    /// The guest's free page reporting order (`--balloon-report-order`):
    /// free blocks of 2^N pages are reported. `None`: the kernel's (10
    /// on silo's kernel, which has no hugetlbfs).
    pub report_order: Option<u8>,
}

impl Default for GuestMemoryMode {
    /// Huge pages, reporting order [`DEFAULT_REPORT_ORDER`].
    fn default() -> Self {
        Self {
            small_pages: false,
            report_order: Some(DEFAULT_REPORT_ORDER),
        }
    }
}

impl GuestMemoryMode {
    /// The VMM flags for this mode (besides `--balloon`).
    pub fn vmm_args(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.small_pages {
            v.push("--small-pages".to_string());
        }
        if let Some(n) = self.report_order {
            v.push("--balloon-report-order".to_string());
            v.push(n.to_string());
        }
        v
    }
}

impl super::VmEnv {
    /// Where the host memory this VM holds is read: its cgroup when
    /// jailed, else its VMM process.
    pub fn memory_source(&self) -> crate::vm_memory::MemorySource {
        use crate::vm_memory::MemorySource;
        match (&self.jail, self.child.id()) {
            (Some(lease), _) => MemorySource::Cgroup(lease.cgroup().to_path_buf()),
            (None, Some(pid)) => MemorySource::Pid(pid),
            (None, None) => MemorySource::None,
        }
    }

    /// The VM's directory (its balloon's counters are there).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Reads the counters of the VM whose directory is `dir` (a few tries if
/// an update was being written).
pub fn read_counters(dir: &Path) -> Option<BalloonCounters> {
    let path = dir.join(STATS_FILE);
    (0..5).find_map(|_| {
        super::timeline::read_small_regular_file(&path, 4096).and_then(|b| decode(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use silo_vmm::devices::virtio::balloon::{stats_file, BalloonStats};

    #[test]
    fn modes_become_the_vmm_flags_it_parses() {
        assert_eq!(
            GuestMemoryMode::default().vmm_args(),
            ["--balloon-report-order", "5"]
        );
        let small = GuestMemoryMode {
            small_pages: true,
            report_order: None,
        };
        assert_eq!(small.vmm_args(), ["--small-pages"]);
        let mut args = vec!["--kernel", "/k", "--balloon"];
        let all = GuestMemoryMode {
            small_pages: true,
            ..Default::default()
        }
        .vmm_args();
        args.extend(all.iter().map(String::as_str));
        match silo_vmm::cli::parse(args.iter().map(std::ffi::OsString::from)) {
            Ok(silo_vmm::cli::Command::Run(a)) => {
                assert!(a.small_pages);
                assert_eq!(a.balloon_report_order, Some(DEFAULT_REPORT_ORDER));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reads_what_the_vmm_writes() {
        let dir = std::env::temp_dir().join(format!("silo-balloon-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = stats_file::StatsFile::create(&dir.join(STATS_FILE)).unwrap();
        f.publish(&BalloonStats::default());
        assert_eq!(
            read_counters(dir.as_path()),
            Some(BalloonCounters::default())
        );
        let s = BalloonStats::from_words([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        f.publish(&s);
        assert_eq!(read_counters(dir.as_path()), Some(s));
        let bytes = std::fs::read(dir.as_path().join(STATS_FILE)).unwrap();
        assert_eq!(
            stats_file::decode(&bytes).map(|c| c.ignored_chains),
            Some(10)
        );
        // A half-written update, a short file and a wrong magic are refused.
        let mut torn = bytes.clone();
        torn[8] ^= 1;
        assert_eq!(decode(&torn), None);
        assert_eq!(decode(&bytes[..40]), None);
        assert_eq!(decode(&[0u8; 4096]), None);
        drop(f);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
