//! A compressed swap (zram) in the test host, for what pages idle VMs out
//! (the daemon's `jail.idle_reclaim_after_s`, `bench-idle-memory`): the
//! modules `modules/swap.order` lists, to copy in, and the shell lines that
//! load them and turn the swap on.

use std::path::PathBuf;

use super::{image, TestHostError};
use crate::ImageError;

/// The zram swap's size (what it may hold uncompressed). zram uses memory
/// only for the pages stored in it, compressed.
pub const ZRAM_DISKSIZE: &str = "1G";

/// (host path, file name) of the zram modules and of `swap.order`, their
/// load order, to copy into one directory of the test host.
pub fn swap_files() -> Result<Vec<(PathBuf, String)>, TestHostError> {
    let dir = image()?.join("modules");
    let order = dir.join("swap.order");
    let text = std::fs::read_to_string(&order)
        .map_err(ImageError::io(format!("reading {}", order.display())))?;
    let mut files = vec![(order, "swap.order".to_string())];
    for m in text.split_whitespace() {
        files.push((dir.join(format!("{m}.ko")), format!("{m}.ko")));
    }
    Ok(files)
}

/// Shell lines (busybox) that, unless a swap is already on, load the
/// modules [`swap_files`] copied into `dir` and turn on `/dev/zram0` as
/// swap; they print `ZRAM_SWAP_ON` when a zram swap is on. The compressed
/// pool's size is then `/sys/block/zram0/mm_stat`'s third field
/// (`mem_used_total`).
pub fn zram_swap_script(dir: &str) -> String {
    format!(
        "if [ $(wc -l < /proc/swaps) -le 1 ]; then\n\
         for m in $(cat {dir}/swap.order); do insmod {dir}/$m.ko || echo \"[testhost] insmod $m failed\"; done\n\
         echo {ZRAM_DISKSIZE} > /sys/block/zram0/disksize && mkswap /dev/zram0 >/dev/null && swapon /dev/zram0\n\
         fi\n\
         grep -q zram0 /proc/swaps && echo ZRAM_SWAP_ON\n"
    )
}
