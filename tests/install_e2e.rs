//! An install that stands on its own: `silo` and `silo-vmm` copied into a
//! prefix of their own (`bin/silo`, `bin/silo-vmm`, `lib/silo/silo-guest-agent`,
//! the Debian package's layout), with the source checkout they were built
//! in hidden from them, build the images and serve a Python invoke.
//!
//! 1. On this host, in a private mount namespace with an empty tmpfs
//!    mounted over the checkout (`unshare -m`), `<prefix>/bin/silo images
//!    build` runs from `/`. Its recipes come from the binary: the cache
//!    entries they key by content (`~/.cache/silo`, or `$SILO_CACHE_DIR`)
//!    are reused when already built by other tests or an earlier run (the
//!    guest kernel, the `python3.11` and `nodejs22.x` runtimes, the test
//!    host image); only a missing one is built. The recipes themselves are
//!    written out to `<cache>/recipes/<hash>`. The demo function, which
//!    only a checkout can build, is skipped.
//! 2. In the KVM test host (where no checkout exists at all), the same
//!    prefix serves: `silo serve` with no `--kernel` or `--agent` finds the
//!    kernel and the `python3.11` runtime `silo images build` printed in its
//!    own cache (those entries copied in: the kernel, the runtime's shared
//!    image, archive, descriptor and manifest) and the agent installed
//!    beside it; a Python function is created and invoked once.
//!
//! On the code before the recipes travelled in the binary, step 1 failed:
//! `silo images build` ran `<build path>/images/kernel/build.sh`, hidden.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use silo_images::testhost::TestHost;

/// Where the prefix is installed inside the test host.
const PREFIX_IN_TEST_HOST: &str = "/opt/silo";

/// The path printed after `label` on a line of `silo images build`'s output.
fn printed(out: &str, label: &str) -> PathBuf {
    let line = out
        .lines()
        .find(|l| l.split_whitespace().next() == Some(label))
        .unwrap_or_else(|| panic!("`silo images build` printed no {label} line:\n{out}"));
    PathBuf::from(line.split_whitespace().nth(1).unwrap())
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copying {}: {e}", from.display()));
}

#[test]
fn a_copied_install_builds_its_images_and_serves_python_without_the_checkout() {
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The binaries under test, as a package would install them.
    let silo = PathBuf::from(env!("CARGO_BIN_EXE_silo"));
    let vmm = silo_images::artifacts::vmm().expect("static silo-vmm");
    let agent = silo_images::artifacts::guest_agent().expect("static guest agent");
    let prefix = common::daemon::scratch("install-prefix");
    assert!(
        !prefix.starts_with(checkout),
        "the prefix {} must lie outside the checkout it hides",
        prefix.display()
    );
    copy(&silo, &prefix.join("bin/silo"));
    copy(&vmm, &prefix.join("bin/silo-vmm"));
    copy(&agent, &prefix.join("lib/silo/silo-guest-agent"));

    // 1. `silo images build` from `/`, the checkout hidden under a tmpfs.
    let started = Instant::now();
    let hide_and_build = format!(
        "set -e; mount -t tmpfs -o size=1m,mode=0755 silo-hidden '{checkout}'; \
         [ -z \"$(ls -A '{checkout}')\" ] || {{ echo 'the checkout is still visible'; exit 9; }}; \
         cd /; exec '{silo}' images build",
        checkout = checkout.display(),
        silo = prefix.join("bin/silo").display()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(&hide_and_build)
        // Nothing points back at the checkout.
        .env_remove("CARGO_MANIFEST_DIR")
        .env_remove(silo_images::artifacts::SOURCE_DIR_ENV)
        .env_remove("SILO_VMM")
        .env_remove("SILO_STATIC_TARGET_DIR")
        .env_remove("CARGO")
        .output()
        .expect("run unshare (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    eprintln!(
        "silo images build without the checkout: {:.1?}\n{stdout}{stderr}",
        started.elapsed()
    );
    assert!(
        out.status.success(),
        "`silo images build` failed with the checkout hidden ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert_eq!(
        printed(&stdout, "agent"),
        prefix.join("lib/silo/silo-guest-agent"),
        "the installed agent is used"
    );
    assert_eq!(
        printed(&stdout, "vmm"),
        prefix.join("bin/silo-vmm"),
        "the installed silo-vmm is used"
    );
    assert!(
        stderr.contains("demo function: skipped"),
        "the demo function (built from a checkout) is skipped:\n{stderr}"
    );
    let kernel_dir = printed(&stdout, "kernel").parent().unwrap().to_path_buf();
    let python = printed(&stdout, "python3.11");

    // 2. The same prefix serves one Python invoke in the KVM test host.
    let zip = silo_initramfs::package::make_zip(&[(
        "lambda_function.py",
        0o644,
        b"import sys\n\ndef handler(event, context):\n    \
          return {'sum': event['a'] + event['b'], 'python': sys.version.split()[0]}\n",
    )]);
    let create = serde_json::json!({
        "FunctionName": "py",
        "Runtime": "python3.11",
        "Role": "arn:aws:iam::000000000000:role/silo-function",
        "Handler": "lambda_function.handler",
        "MemorySize": 256,
        "Timeout": 120,
        "Code": { "ZipFile": base64::engine::general_purpose::STANDARD.encode(&zip) },
    });
    let cache = "/work/cache";
    let in_cache = |entry: &Path, file: &str| {
        format!(
            "{cache}/{}/{file}",
            entry.file_name().unwrap().to_string_lossy()
        )
    };
    let mut host = TestHost::new()
        .timeout(Duration::from_secs(900))
        .memory_mib(3072)
        .binary_with_libs(
            prefix.join("bin/silo"),
            &format!("{PREFIX_IN_TEST_HOST}/bin/silo"),
        )
        .expect("include silo")
        // The recipes are bash scripts run under flock(1): busybox has
        // neither.
        .binary_with_libs("/usr/bin/bash", "/usr/bin/bash")
        .expect("include bash")
        .binary_with_libs("/usr/bin/flock", "/usr/bin/flock")
        .expect("include flock")
        .file(
            prefix.join("bin/silo-vmm"),
            &format!("{PREFIX_IN_TEST_HOST}/bin/silo-vmm"),
            0o755,
        )
        .file(
            prefix.join("lib/silo/silo-guest-agent"),
            &format!("{PREFIX_IN_TEST_HOST}/lib/silo/silo-guest-agent"),
            0o755,
        )
        .bytes(
            "/work/create.json",
            serde_json::to_vec(&create).unwrap(),
            0o644,
        )
        .bytes(
            "/work/silo.toml",
            b"[jail]\ncpu_full_at_mib = 0\n".to_vec(),
            0o644,
        );
    for f in ["vmlinux", "bzImage"] {
        host = host.file(kernel_dir.join(f), &in_cache(&kernel_dir, f), 0o644);
    }
    for f in [
        "rt.img",
        "rt.cpio",
        "MANIFEST.sha256",
        "rt/silo-runtime.json",
    ] {
        host = host.file(python.join(f), &in_cache(&python, f), 0o644);
    }
    let script = format!(
        r#"export SILO_CACHE_DIR={cache}
# The recipes start with `#!/usr/bin/env bash`, as any Linux host has it.
[ -e /usr/bin/env ] || ln -s /bin/busybox /usr/bin/env
cd /
SILO_LOG=info {PREFIX_IN_TEST_HOST}/bin/silo serve --config /work/silo.toml --allow-unauthenticated \
  --listen 127.0.0.1:9000 --data-dir /tmp/silo-data > /tmp/daemon.log 2>&1 &
daemon=$!
api=http://127.0.0.1:9000/2015-03-31/functions
i=0; until wget -qO- $api/none/configuration 2>&1 | grep -q 404; do
  i=$((i+1)); if [ $i -gt 600 ] || ! kill -0 $daemon 2>/dev/null; then echo NO_DAEMON; cat /tmp/daemon.log; exit 1; fi; sleep 0.2
done
echo CREATE_BEGIN
timeout 300 wget -qO- --header 'Content-Type: application/json' --post-file /work/create.json $api
echo
echo "CREATE_END $?"
echo INVOKE_BEGIN
timeout 600 wget -qO- --header 'Content-Type: application/json' --post-data '{{"a": 40, "b": 2}}' $api/py/invocations
echo
echo "INVOKE_END $?"
kill -TERM $daemon; wait $daemon
echo DAEMON_LOG_BEGIN; cat /tmp/daemon.log; echo DAEMON_LOG_END
"#
    );
    let started = Instant::now();
    let run = host.run(&script).expect("test host run");
    let out = run.output;
    eprintln!(
        "serving from the prefix in the test host: {:.1?} (boot {:.1?})",
        started.elapsed(),
        run.boot_time
    );
    let create = common::section(&out, "CREATE_BEGIN", "CREATE_END");
    assert!(
        out.contains("CREATE_END 0") && create.contains("\"Runtime\":\"python3.11\""),
        "CreateFunction for python3.11 failed on the installed silo:\n{out}"
    );
    let invoke = common::section(&out, "INVOKE_BEGIN", "INVOKE_END");
    let answer: serde_json::Value = serde_json::from_str(invoke.trim())
        .unwrap_or_else(|e| panic!("the invoke answered no JSON ({e}):\n{out}"));
    assert_eq!(answer["sum"], 42, "{out}");
    assert!(
        answer["python"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.11")),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&prefix);
}

/// What the Debian package installs is there and usable (no test host, no
/// cargo-deb: CI does not build the package, deploy/build-deb.sh does):
/// every asset `[package.metadata.deb]` names outside `target/`, the unit
/// cargo-deb's `systemd-units` picks up (`deploy/silo.service`), a
/// `maintainer-scripts` postinst with the `#DEBHELPER#` token cargo-deb
/// requires, and the default configuration (`/etc/silo/silo.toml`) loads
/// and passes the daemon's checks.
#[test]
fn the_debian_package_metadata_names_files_that_exist_and_a_configuration_that_loads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let deb = manifest
        .split("[package.metadata.deb]")
        .nth(1)
        .expect("a [package.metadata.deb] table")
        .split("\n[profile")
        .next()
        .unwrap();
    let assets: Vec<&str> = deb
        .lines()
        .filter_map(|l| l.trim().strip_prefix("[\""))
        .filter_map(|l| l.split('"').next())
        .collect();
    for wanted in [
        "target/release/silo",
        "target/release/silo-vmm",
        "deploy/silo.toml",
    ] {
        assert!(
            assets.contains(&wanted),
            "{wanted} is not packaged: {assets:?}"
        );
    }
    assert!(
        assets.iter().any(|a| a.ends_with("/silo-guest-agent")),
        "the guest agent is not packaged: {assets:?}"
    );
    for a in assets.iter().filter(|a| !a.starts_with("target/")) {
        assert!(root.join(a).is_file(), "packaged {a} does not exist");
    }
    assert!(
        deb.contains("unit-scripts = \"deploy\"") && root.join("deploy/silo.service").is_file()
    );
    let postinst = std::fs::read_to_string(root.join("deploy/debian/postinst")).unwrap();
    assert!(postinst.contains("#DEBHELPER#"));
    let unit = std::fs::read_to_string(root.join("deploy/silo.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/silo serve --config /etc/silo/silo.toml")
            && unit.contains("Environment=SILO_CACHE_DIR=/var/cache/silo")
            && unit.contains("CacheDirectory=silo"),
        "the unit does not run the packaged silo with the packaged configuration and cache"
    );
    let cfg = silo_daemon::config::DaemonConfig::load(&root.join("deploy/silo.toml"))
        .expect("deploy/silo.toml loads");
    cfg.check()
        .expect("deploy/silo.toml passes the daemon's checks");
    assert!(
        cfg.kernel.is_none() && cfg.agent.is_none(),
        "the packaged configuration leaves kernel and agent to silo"
    );
}
