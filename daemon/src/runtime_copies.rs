//! Managed runtimes' images as VMs map them: by default a tenant's VMs map
//! a copy of the runtime's image that no other tenant's VM maps.
//!
//! A virtio-pmem image is mapped `MAP_SHARED` into the VMM and mounted with
//! DAX in the guest, so every VM that maps the same *file* executes from the
//! same host page-cache pages: one tenant's function could time another's
//! accesses to them (Flush+Reload on `libpython`, `node`, `libcrypto`) or
//! evict them. Page cache is per inode, so separate files share no page,
//! even when their blocks are shared on disk (a reflink).
//!
//! With [`RuntimeSharing::Tenant`] (the default) each VM maps:
//! - a VM bound to a tenant: that tenant's copy, made when its first VM
//!   boots and removed when its last one is gone (its VMs may share pages,
//!   no other tenant's VM does);
//! - a VM of a function that is not `PER_TENANT` (one binding for all its
//!   callers): one copy per function;
//! - a pooled VM (booted before any tenant is known, bound at its first
//!   invoke): a copy of its own, removed with it.
//!
//! Copies live in one directory under the run directory, named by a counter
//! (never by a tenant id); the directory is emptied when the daemon starts,
//! so copies left by a crashed daemon are swept. A copy is made with
//! `copy_file_range` (a reflink where the filesystem can: btrfs, XFS, with
//! the runtime images on the same filesystem as the run directory), written
//! back and dropped from the page cache, so a tenant costs memory only for
//! the pages its VMs touch (on tmpfs the copy stays in memory in full).
//! [`RuntimeSharing::Host`] maps the one image into every VM (the explicit,
//! logged opt-in to share pages between tenants).

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use serde::Deserialize;

/// Which VMs may map the same runtime image pages (`runtime_sharing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeSharing {
    /// Only the VMs of one tenant (of one function that is not
    /// `PER_TENANT`); a pooled VM maps a copy of its own.
    #[default]
    Tenant,
    /// Every VM of the host maps the one image: tenants share page-cache
    /// pages (a side channel, and one tenant's memory pressure evicts
    /// another's pages). An explicit opt-in.
    Host,
}

/// Logs, once at start, which VMs share runtime image pages: a warning
/// when tenants do (the opt-in).
pub fn log_sharing(sharing: RuntimeSharing) {
    match sharing {
        RuntimeSharing::Tenant => tracing::info!(
            runtime_sharing = "tenant",
            "managed runtimes' pmem images: each tenant's VMs map a copy of their own \
             (pooled VMs one each); no page is shared between tenants"
        ),
        RuntimeSharing::Host => tracing::warn!(
            runtime_sharing = "host",
            "managed runtimes' pmem images are shared by EVERY VM: tenants' VMs map the \
             same host pages (cache side channels, shared eviction); see docs/SECURITY.md"
        ),
    }
}

/// Whose VM maps the image.
#[derive(Debug, Clone, Copy)]
pub enum ImageUser<'a> {
    /// A VM bound to this tenant.
    Tenant(&'a str),
    /// A VM of this function, which is not `PER_TENANT`.
    Function(&'a str),
    /// A VM that shares its image with no other (a pooled VM).
    Private,
}

/// Why an image copy could not be made.
#[derive(Debug, thiserror::Error)]
#[error("copying the runtime image {} to {}: {source}", from.display(), to.display())]
pub struct CopyError {
    from: PathBuf,
    to: PathBuf,
    source: std::io::Error,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Owner {
    Tenant(String),
    Function(String),
}

type Key = (PathBuf, Owner);
type Live = Arc<Mutex<HashMap<Key, Weak<Copy>>>>;

/// One copy of an image; the file goes when the last lease is dropped.
#[derive(Debug)]
struct Copy {
    path: PathBuf,
    made: tokio::sync::OnceCell<()>,
    key: Option<Key>,
    live: Live,
}

impl Drop for Copy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(key) = &self.key {
            let mut live = self.live.lock().expect("runtime copies lock");
            if live.get(key).is_some_and(|w| w.strong_count() == 0) {
                live.remove(key);
            }
        }
    }
}

/// The image one VM maps, held for as long as the VM lives.
#[derive(Debug)]
pub struct ImageLease {
    path: PathBuf,
    _copy: Option<Arc<Copy>>,
}

impl ImageLease {
    /// The file to give the VMM (`--pmem`).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The copies of managed runtimes' images in use.
#[derive(Debug)]
pub struct RuntimeCopies {
    dir: PathBuf,
    sharing: RuntimeSharing,
    next: AtomicU64,
    live: Live,
}

impl RuntimeCopies {
    /// Copies kept in `dir` (made when first needed).
    pub fn new(dir: PathBuf, sharing: RuntimeSharing) -> Self {
        Self {
            dir,
            sharing,
            next: AtomicU64::new(0),
            live: Live::default(),
        }
    }

    /// [`RuntimeCopies::new`] after emptying `dir`: copies a previous
    /// daemon left behind (it crashed, or was killed) are removed.
    pub fn swept(dir: PathBuf, sharing: RuntimeSharing) -> Self {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove leftover runtime image copies");
            }
        }
        Self::new(dir, sharing)
    }

    /// The sharing in force.
    pub fn sharing(&self) -> RuntimeSharing {
        self.sharing
    }

    /// Copies alive now (for tests and metrics).
    pub fn live_copies(&self) -> usize {
        self.live
            .lock()
            .expect("runtime copies lock")
            .values()
            .filter(|w| w.strong_count() > 0)
            .count()
    }

    /// The image `user`'s VM maps instead of `source`: the source itself
    /// when sharing is host-wide, else the user's copy, made now if it has
    /// none (every waiter for the same copy waits for the one copying).
    pub async fn image_for(
        &self,
        source: &Path,
        user: ImageUser<'_>,
    ) -> Result<ImageLease, CopyError> {
        if self.sharing == RuntimeSharing::Host {
            return Ok(ImageLease {
                path: source.to_path_buf(),
                _copy: None,
            });
        }
        let shared_by = match user {
            ImageUser::Tenant(_) => "one tenant's VMs",
            ImageUser::Function(_) => "one function's VMs (not PER_TENANT)",
            ImageUser::Private => "one pooled VM",
        };
        let owner = match user {
            ImageUser::Tenant(t) => Some(Owner::Tenant(t.to_string())),
            ImageUser::Function(f) => Some(Owner::Function(f.to_string())),
            ImageUser::Private => None,
        };
        let copy = {
            let mut live = self.live.lock().expect("runtime copies lock");
            let key = owner.map(|o| (source.to_path_buf(), o));
            match key
                .as_ref()
                .and_then(|k| live.get(k))
                .and_then(Weak::upgrade)
            {
                Some(copy) => copy,
                None => {
                    let n = self.next.fetch_add(1, Ordering::Relaxed);
                    let name = source
                        .file_name()
                        .map_or_else(|| "image".into(), |s| s.to_string_lossy().into_owned());
                    let copy = Arc::new(Copy {
                        path: self.dir.join(format!("{n}-{name}")),
                        made: tokio::sync::OnceCell::new(),
                        key: key.clone(),
                        live: self.live.clone(),
                    });
                    if let Some(key) = key {
                        live.insert(key, Arc::downgrade(&copy));
                    }
                    copy
                }
            }
        };
        copy.made
            .get_or_try_init(|| {
                let (dir, from, to) = (self.dir.clone(), source.to_path_buf(), copy.path.clone());
                // The copying thread holds the copy too: if this boot is
                // given up meanwhile, the file is removed once written.
                let held = copy.clone();
                async move {
                    let to2 = to.clone();
                    let started = Instant::now();
                    let r = tokio::task::spawn_blocking(move || {
                        let r = copy_image(&dir, &from, &to2);
                        drop(held);
                        r
                    })
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
                    if r.is_ok() {
                        tracing::info!(
                            image = %to.display(),
                            shared_by,
                            copy_ms = started.elapsed().as_secs_f64() * 1e3,
                            "copied a runtime image"
                        );
                    }
                    r
                }
            })
            .await
            .map_err(|e| CopyError {
                from: source.to_path_buf(),
                to: copy.path.clone(),
                source: e,
            })?;
        Ok(ImageLease {
            path: copy.path.clone(),
            _copy: Some(copy),
        })
    }
}

/// Copies `from` to a new file `to` in `dir` (created `0700` if missing):
/// `copy_file_range` (which reflinks where the filesystem can), then the
/// copy is written back and its pages dropped from the page cache, so only
/// the pages VMs touch come back into memory.
fn copy_image(dir: &Path, from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let _ = std::fs::remove_file(to);
    let mut src = std::fs::File::open(from)?;
    // Read-only for everyone but the daemon: a jailed VMM opens it as its
    // own uid through its read-only bind.
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(to)?;
    let result = (|| {
        // std's copy between two files is copy_file_range(2) on Linux.
        std::io::copy(&mut src, &mut dst)?;
        dst.sync_data()?;
        // SAFETY: posix_fadvise on a descriptor this function owns; it only
        // advises the kernel about the file's cached pages.
        let rc = unsafe { libc::posix_fadvise(dst.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if rc != 0 {
            tracing::debug!(
                error = rc,
                "posix_fadvise(DONTNEED) of a runtime copy failed"
            );
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(to);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("silo-rtcopies-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn image(dir: &Path) -> PathBuf {
        let p = dir.join("rt.img");
        let data: Vec<u8> = (0..3 * 4096 + 17).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&p, data).unwrap();
        p
    }

    fn inode(p: &Path) -> u64 {
        std::fs::metadata(p).unwrap().ino()
    }

    /// Two tenants map different files (different inodes, so no page-cache
    /// page in common) with the image's bytes; a tenant's second VM maps
    /// its first one's; a function that is not PER_TENANT has one of its
    /// own; pooled VMs have one each; each file goes with its last VM.
    #[tokio::test]
    async fn each_tenant_gets_its_own_copy_removed_with_its_last_vm() {
        let d = scratch("tenant");
        let src = image(&d);
        let copies = RuntimeCopies::new(d.join("copies"), RuntimeSharing::Tenant);
        let a1 = copies
            .image_for(&src, ImageUser::Tenant("tenant A"))
            .await
            .unwrap();
        let a2 = copies
            .image_for(&src, ImageUser::Tenant("tenant A"))
            .await
            .unwrap();
        let b = copies
            .image_for(&src, ImageUser::Tenant("../B"))
            .await
            .unwrap();
        let f = copies
            .image_for(&src, ImageUser::Function("counter"))
            .await
            .unwrap();
        let p1 = copies.image_for(&src, ImageUser::Private).await.unwrap();
        let p2 = copies.image_for(&src, ImageUser::Private).await.unwrap();
        assert_eq!(a1.path(), a2.path());
        let all = [&a1, &b, &f, &p1, &p2];
        let mut inodes: Vec<u64> = all.iter().map(|l| inode(l.path())).collect();
        inodes.push(inode(&src));
        inodes.sort_unstable();
        inodes.dedup();
        assert_eq!(
            inodes.len(),
            6,
            "every user but tenant A's second VM has its own file"
        );
        for l in all {
            assert_eq!(
                std::fs::read(l.path()).unwrap(),
                std::fs::read(&src).unwrap()
            );
            assert_eq!(l.path().parent(), Some(d.join("copies").as_path()));
            let name = l.path().file_name().unwrap().to_str().unwrap();
            assert!(!name.contains("tenant") && !name.contains('B'), "{name}");
        }
        assert_eq!(copies.live_copies(), 3);
        let a_path = a1.path().to_path_buf();
        drop(a1);
        assert!(a_path.exists(), "tenant A's second VM still maps it");
        drop(a2);
        assert!(!a_path.exists(), "tenant A's last VM is gone");
        let a3 = copies
            .image_for(&src, ImageUser::Tenant("tenant A"))
            .await
            .unwrap();
        assert_ne!(a3.path(), a_path.as_path(), "a new copy, under a new name");
        let p1_path = p1.path().to_path_buf();
        drop(p1);
        assert!(!p1_path.exists());
        drop((b, f, p2, a3));
        assert_eq!(std::fs::read_dir(d.join("copies")).unwrap().count(), 0);
        assert_eq!(copies.live_copies(), 0);
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// Pages of `path` in the page cache (mincore over a read-only map).
    fn resident_pages(path: &Path) -> usize {
        let f = std::fs::File::open(path).unwrap();
        let len = f.metadata().unwrap().len() as usize;
        // SAFETY: a fresh read-only shared mapping of a file this test
        // opened, never dereferenced; unmapped below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        let mut vec = vec![0u8; len.div_ceil(4096)];
        // SAFETY: `vec` has one byte per page of the mapping `addr..len`.
        let rc = unsafe { libc::mincore(addr, len, vec.as_mut_ptr()) };
        assert_eq!(rc, 0);
        // SAFETY: the mapping made above, no longer used.
        unsafe { libc::munmap(addr, len) };
        vec.iter().filter(|b| *b & 1 == 1).count()
    }

    /// A fresh copy takes no page-cache memory until a VM touches it
    /// (where the file system has a page cache to drop from: not tmpfs).
    #[tokio::test]
    async fn a_fresh_copy_is_not_in_the_page_cache() {
        let d = scratch("cache");
        let src = d.join("big.img");
        let data: Vec<u8> = (0..8 << 20)
            .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(&src, data).unwrap();
        let copies = RuntimeCopies::new(d.join("copies"), RuntimeSharing::Tenant);
        let l = copies
            .image_for(&src, ImageUser::Tenant("A"))
            .await
            .unwrap();
        // SAFETY: statfs into a zeroed struct with a NUL-terminated path.
        let fs_type = unsafe {
            let mut st: libc::statfs = std::mem::zeroed();
            let c = std::ffi::CString::new(d.as_os_str().as_encoded_bytes()).unwrap();
            assert_eq!(libc::statfs(c.as_ptr(), &mut st), 0);
            st.f_type
        };
        if fs_type == libc::TMPFS_MAGIC {
            eprintln!("{} is on tmpfs: a copy is its memory", d.display());
        } else {
            assert_eq!(
                resident_pages(l.path()),
                0,
                "the copy's pages stayed cached"
            );
        }
        drop(l);
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// VMs of one tenant booting at once wait for one copy.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_first_vms_of_a_tenant_share_one_copy() {
        let d = scratch("concurrent");
        let src = image(&d);
        let copies = Arc::new(RuntimeCopies::new(d.join("copies"), RuntimeSharing::Tenant));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (copies, src) = (copies.clone(), src.clone());
                tokio::spawn(async move {
                    copies
                        .image_for(&src, ImageUser::Tenant("A"))
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut leases = Vec::new();
        for t in tasks {
            leases.push(t.await.unwrap());
        }
        assert!(leases.iter().all(|l| l.path() == leases[0].path()));
        assert_eq!(std::fs::read_dir(d.join("copies")).unwrap().count(), 1);
        drop(leases);
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// Host-wide sharing (the opt-in) maps the image itself; a daemon's
    /// start removes copies a previous one left behind.
    #[tokio::test]
    async fn host_sharing_maps_the_image_and_start_sweeps_leftovers() {
        let d = scratch("host");
        let src = image(&d);
        let copies = RuntimeCopies::new(d.join("copies"), RuntimeSharing::Host);
        let l = copies
            .image_for(&src, ImageUser::Tenant("A"))
            .await
            .unwrap();
        assert_eq!(l.path(), src.as_path());
        std::fs::create_dir_all(d.join("copies")).unwrap();
        std::fs::write(d.join("copies/7-rt.img"), b"left by a crashed daemon").unwrap();
        let _fresh = RuntimeCopies::swept(d.join("copies"), RuntimeSharing::Tenant);
        assert!(!d.join("copies/7-rt.img").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// `runtime_sharing` in the configuration: per tenant unless "host"
    /// is written out; anything else is refused.
    #[test]
    fn the_configuration_shares_per_tenant_unless_told_host() {
        use crate::config::DaemonConfig;
        let parse = |t: &str| toml::from_str::<DaemonConfig>(t).map(|c| c.runtime_sharing);
        assert_eq!(parse("").unwrap(), RuntimeSharing::Tenant);
        assert_eq!(
            parse("runtime_sharing = \"tenant\"").unwrap(),
            RuntimeSharing::Tenant
        );
        assert_eq!(
            parse("runtime_sharing = \"host\"").unwrap(),
            RuntimeSharing::Host
        );
        assert!(parse("runtime_sharing = \"all\"").is_err());
    }

    /// A boot given up while its copy is being made leaves no file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_boot_given_up_mid_copy_leaves_no_file() {
        let d = scratch("abort");
        let src = d.join("big.img");
        std::fs::write(&src, vec![7u8; 32 << 20]).unwrap();
        let copies = Arc::new(RuntimeCopies::new(d.join("copies"), RuntimeSharing::Tenant));
        for delay_ms in [0, 1, 5, 20] {
            let (c, s) = (copies.clone(), src.clone());
            let task =
                tokio::spawn(
                    async move { c.image_for(&s, ImageUser::Tenant("A")).await.map(drop) },
                );
            tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
            task.abort();
            let _ = task.await;
            let until = Instant::now() + std::time::Duration::from_secs(20);
            // The copying thread may not have started yet (its file not
            // made): wait for it to let go of the copy, then for the file.
            while copies.live_copies() > 0
                || std::fs::read_dir(d.join("copies")).map_or(0, |r| r.count()) > 0
            {
                assert!(
                    Instant::now() < until,
                    "a copy was left behind (abort after {delay_ms} ms)"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        assert_eq!(copies.live_copies(), 0);
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// A copy that cannot be made fails that VM's boot, names both files,
    /// and leaves nothing behind; the next boot tries again.
    #[tokio::test]
    async fn a_failed_copy_is_an_error_and_retried() {
        let d = scratch("fail");
        let copies = RuntimeCopies::new(d.join("copies"), RuntimeSharing::Tenant);
        let missing = d.join("missing.img");
        let e = copies
            .image_for(&missing, ImageUser::Tenant("A"))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.img") && e.contains("copies"), "{e}");
        image(&d);
        std::fs::rename(d.join("rt.img"), &missing).unwrap();
        let l = copies
            .image_for(&missing, ImageUser::Tenant("A"))
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(l.path()).unwrap(),
            std::fs::read(&missing).unwrap()
        );
        drop(l);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
