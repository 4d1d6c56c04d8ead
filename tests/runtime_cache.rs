//! The daemon takes a managed runtime only as it was built, and never
//! builds one: a `[runtimes]` entry whose shared image changed after the
//! build (one byte) makes CreateFunction fail, the daemon's log naming the
//! file; the same entry untouched is taken; with no built entry at all the
//! function is refused, saying to run `silo images build`, and nothing is
//! built. No VM boots (creation only), so the daemon runs here.

mod common;

use common::daemon::{config, scratch, TestDaemon};
use serde_json::json;

/// A copy of the python3.11 runtime's files the daemon may use (as an
/// operator's `[runtimes]` entry), one byte of its shared image changed if
/// `tamper`.
fn runtime_copy(tamper: bool) -> std::path::PathBuf {
    let built = silo_images::runtime::runtime_image("python3.11").expect("python3.11 runtime");
    let dir = scratch("runtime-copy");
    for f in ["rt.img", "rt.cpio", "MANIFEST.sha256"] {
        if built.dir.join(f).is_file() {
            std::fs::copy(built.dir.join(f), dir.join(f)).unwrap();
        }
    }
    if tamper {
        let img = dir.join("rt.img");
        let mut bytes = std::fs::read(&img).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        std::fs::write(&img, bytes).unwrap();
    }
    dir
}

/// Creates a python3.11 function on a daemon whose `[runtimes]` names
/// `runtime` (none: no `[runtimes]`), with `env`: the HTTP status, the body
/// and the daemon's log.
fn create_with(
    runtime: Option<&std::path::Path>,
    env: &[(&str, &std::path::Path)],
) -> (u16, String, String) {
    let runtimes = runtime.map_or(String::new(), |r| {
        format!("[runtimes]\n\"python3.11\" = \"{}\"\n", r.display())
    });
    let cfg = format!("runtime_delivery = \"pmem\"\n{}\n{runtimes}", config(""));
    let data = scratch("runtime-cache-data");
    let mut d = TestDaemon::on_host_with_env(&cfg, &data, &[], env);
    let admin = d.admin();
    let zip = silo_initramfs::package::make_zip(&[(
        "lambda_function.py",
        0o644,
        b"def handler(event, context):\n    return 1\n",
    )]);
    let r = admin
        .create_function(
            "py",
            &zip,
            false,
            json!({"Runtime": "python3.11", "Handler": "lambda_function.handler"}),
        )
        .unwrap();
    let logs = d.stop();
    let _ = std::fs::remove_dir_all(data);
    (r.status, r.text(), logs)
}

#[test]
fn a_runtime_image_changed_after_its_build_is_refused_naming_the_file() {
    let good = runtime_copy(false);
    let (status, body, logs) = create_with(Some(&good), &[]);
    assert_eq!(
        status, 201,
        "the untouched runtime was refused: {body}\n{logs}"
    );

    let bad = runtime_copy(true);
    let (status, body, logs) = create_with(Some(&bad), &[]);
    assert_ne!(status, 201, "a changed runtime image was taken:\n{logs}");
    let img = bad.join("rt.img").display().to_string();
    assert!(
        logs.contains(&img) && logs.contains("changed"),
        "the daemon's log does not name {img}: {body}\n{logs}"
    );

    // Nothing built where the daemon looks (a cache of its own, empty): the
    // function is refused at once and the cache stays empty.
    let empty = scratch("empty-cache");
    let (status, body, logs) = create_with(None, &[("SILO_CACHE_DIR", &empty)]);
    assert_ne!(
        status, 201,
        "the daemon took a runtime it had to build:\n{logs}"
    );
    assert!(body.contains("silo images build"), "{body}\n{logs}");
    assert!(logs.contains("managed runtime not built"), "{logs}");
    // (Only the recipes the binary carries are written out there, to look
    // the runtime up with.)
    let built: Vec<_> = std::fs::read_dir(&empty)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "recipes")
        .collect();
    assert!(built.is_empty(), "the daemon built {built:?}");
    for d in [good, bad, empty] {
        let _ = std::fs::remove_dir_all(d);
    }
}
