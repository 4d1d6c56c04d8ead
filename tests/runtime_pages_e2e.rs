//! Issue 19, finding 2: two tenants' VMs of a `python3.11` function never
//! map the same host page of the runtime's image (virtio-pmem, DAX), read
//! from the host's page tables: `/proc/<vmm>/pagemap` over each jailed VMM's
//! pmem mapping (as root, where the daemon runs: in the KVM test host on
//! these machines). A tenant's own two VMs may share pages, and do: that
//! proves the reading sees shared pages when there are some. Pooled VMs
//! (booted before any tenant is known) share no page with any other VM.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use common::daemon::{config, scratch, TestDaemon};
use silo_client::InvokeOptions;

/// Prints `VMM <pid> <dev> <inode> <range>` for every `silo-vmm` process
/// (the jailed child, by its host pid) with a shared read-only file mapping
/// (its pmem image); with `QUERY_STRING=pfns`, each followed by the page
/// frame numbers (hex, the low 52 bits of each present pagemap entry).
const PAGEMAP_CGI: &str = r#"#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
if [ "$QUERY_STRING" = dmesg ]; then dmesg | tail -60; ps; echo END; exit 0; fi
for d in /proc/[0-9]*; do
  p=${d#/proc/}
  [ "$(cat $d/comm 2>/dev/null)" = silo-vmm ] || continue
  grep ' r--s ' $d/maps 2>/dev/null | while read range perms off dev inode path; do
    [ "$inode" = 0 ] && continue
    echo "VMM $p $dev $inode $range"
    [ "$QUERY_STRING" = pfns ] || continue
    s=$((0x${range%-*} / 4096)); e=$((0x${range#*-} / 4096))
    dd if=$d/pagemap bs=8 skip=$s count=$((e - s)) 2>/dev/null | od -An -v -tx8 -w8 \
      | grep '^ *[89a-f]' | sed 's/^ *...//'
  done
done
echo END
"#;

/// Touches more of the runtime than the bare interpreter: a few C
/// extensions (hashlib, zlib, decimal), and sleeps when asked so that a
/// second invoke needs a second VM.
const HANDLER: &str = r#"import hashlib, json, time, zlib, decimal

def handler(event, context):
    time.sleep(event.get("sleep", 0))
    digest = hashlib.sha256(zlib.compress(json.dumps(event).encode())).hexdigest()
    return {"tenant": context.tenant_id, "digest": digest, "d": str(decimal.Decimal(1) / 7)}
"#;

/// One VMM's pmem mapping and the frames present in it.
#[derive(Debug, Default)]
struct Mapping {
    file: String,
    pfns: BTreeSet<u64>,
}

/// Parses the CGI's output: VMM pid -> its mapping.
fn parse(out: &str) -> BTreeMap<u32, Mapping> {
    let mut vmms: BTreeMap<u32, Mapping> = BTreeMap::new();
    let mut current = None;
    for l in out.lines().map(str::trim) {
        if let Some(rest) = l.strip_prefix("VMM ") {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let pid: u32 = f[0].parse().expect("pid");
            vmms.entry(pid).or_default().file = format!("{} {}", f[1], f[2]);
            current = Some(pid);
        } else if let (Some(pid), Ok(pfn)) = (current, u64::from_str_radix(l, 16)) {
            vmms.get_mut(&pid).unwrap().pfns.insert(pfn);
        }
    }
    assert!(out.contains("END"), "the CGI did not finish:\n{out}");
    vmms
}

/// Runs the inspection where the daemon runs, as root.
fn inspect(d: &TestDaemon, query: &str) -> BTreeMap<u32, Mapping> {
    let out = d.cgi("pagemap", query).unwrap_or_else(|| {
        let o = std::process::Command::new("sh")
            .args(["-c", PAGEMAP_CGI])
            .env("QUERY_STRING", query)
            .output()
            .expect("sh");
        String::from_utf8_lossy(&o.stdout).into_owned()
    });
    parse(&out)
}

fn invoke(d: &TestDaemon, tenant: &str, payload: &str) {
    let r = d
        .admin()
        .invoke(
            "pages",
            payload.as_bytes(),
            &InvokeOptions {
                tenant: Some(tenant.into()),
                ..Default::default()
            },
        )
        .expect("invoke");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("x-amz-function-error").is_none(), "{}", r.text());
    assert!(r.text().contains(tenant), "{}", r.text());
}

/// The VMM that appeared since `before`.
fn new_vmm(d: &TestDaemon, before: &BTreeSet<u32>) -> u32 {
    let now: BTreeSet<u32> = inspect(d, "list").into_keys().collect();
    let new: Vec<u32> = now.difference(before).copied().collect();
    assert_eq!(
        new.len(),
        1,
        "one new VMM expected: before {before:?}, now {now:?}"
    );
    new[0]
}

/// Creates the per-tenant python3.11 function `pages` of [`HANDLER`].
fn create_pages(d: &TestDaemon) {
    let zip = silo_initramfs::package::make_zip(&[("app.py", 0o644, HANDLER.as_bytes())]);
    let r = d
        .admin()
        .create_function(
            "pages",
            &zip,
            true,
            serde_json::json!({"Runtime": "python3.11", "Handler": "app.handler", "Timeout": 60}),
        )
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
}

/// Invokes, printing the test host's kernel log and processes if that fails.
fn invoke_or_dmesg(d: &TestDaemon, tenant: &str, before: &str) {
    if let Err(e) =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| invoke(d, tenant, "{}")))
    {
        eprintln!("{before}");
        eprintln!("{}", d.cgi("pagemap", "dmesg").unwrap_or_default());
        std::panic::resume_unwind(e);
    }
}

/// Checks that tenant A's VMs (`a1`, and `a2` if given) and tenant B's
/// (`b1`) have no page frame in common over their pmem mappings, that each
/// has enough present to tell, and that A's two VMs share pages (one
/// copy); returns what it read.
fn check_tenants(vmms: &BTreeMap<u32, Mapping>, a1: u32, b1: u32, a2: Option<u32>) -> String {
    let get = |pid: u32| {
        vmms.get(&pid)
            .unwrap_or_else(|| panic!("VMM {pid} has no pmem mapping: {vmms:?}"))
    };
    let common = |x: &Mapping, y: &Mapping| x.pfns.intersection(&y.pfns).count();
    let (a1, b1) = (get(a1), get(b1));
    let mut report = format!(
        "tenant-A VM 1: file {} {} pages present; tenant-B VM: file {} {} pages; common A1/B {}",
        a1.file,
        a1.pfns.len(),
        b1.file,
        b1.pfns.len(),
        common(a1, b1)
    );
    if let Some(a2) = a2.map(get) {
        report += &format!(
            "; tenant-A VM 2: file {} {} pages; common A2/B {}, A1/A2 {}",
            a2.file,
            a2.pfns.len(),
            common(a2, b1),
            common(a1, a2)
        );
    }
    eprintln!("{report}");
    for m in [a1, b1].into_iter().chain(a2.map(get)) {
        assert!(
            m.pfns.len() >= 64,
            "the guest touched too little of its image to tell: {report}"
        );
        assert_eq!(
            common(m, b1) * usize::from(!std::ptr::eq(m, b1)),
            0,
            "tenants' VMs map the same host pages of the runtime image: {report}"
        );
    }
    assert_ne!(a1.file, b1.file, "{report}");
    if let Some(a2) = a2.map(get) {
        assert_eq!(a1.file, a2.file, "{report}");
        assert!(common(a1, a2) >= 64, "{report}");
    }
    report
}

#[test]
fn two_tenants_vms_share_no_page_of_the_runtime_image() {
    let (d, cgi_dir) = daemon("");
    let logs = d.run_scenario(|d| {
        create_pages(d);
        let mut seen = BTreeSet::new();
        invoke(d, "tenant-A", "{}");
        let a1 = new_vmm(d, &seen);
        seen.insert(a1);
        invoke(d, "tenant-B", "{}");
        let b1 = new_vmm(d, &seen);
        seen.insert(b1);
        let vmms = inspect(d, "pfns");
        let report = check_tenants(&vmms, a1, b1, None);
        // A second VM of tenant A (its first VM is busy sleeping): it maps
        // what tenant A's first maps, which proves the reading above does
        // see pages two VMs share where there are any.
        let busy = {
            let admin = d.admin();
            std::thread::spawn(move || {
                admin.invoke(
                    "pages",
                    br#"{"sleep": 20}"#,
                    &InvokeOptions {
                        tenant: Some("tenant-A".into()),
                        ..Default::default()
                    },
                )
            })
        };
        std::thread::sleep(Duration::from_secs(3));
        invoke_or_dmesg(d, "tenant-A", &report);
        let a2 = new_vmm(d, &seen);
        let r = busy.join().unwrap().expect("invoke");
        assert_eq!(r.status, 200, "{}", r.text());
        let vmms = inspect(d, "pfns");
        check_tenants(&vmms, a1, b1, Some(a2));
    });
    assert!(
        logs.contains("runtime_sharing=\"tenant\""),
        "the daemon logs the sharing in force at start:\n{logs}"
    );
    let _ = std::fs::remove_dir_all(&cgi_dir);
}

/// A daemon with the python3.11 runtime on pmem and the pagemap CGI, and
/// the scratch directory to remove afterwards.
fn daemon(extra_config: &str) -> (TestDaemon, PathBuf) {
    let cgi_dir = scratch("pagemap-cgi");
    let cgi = cgi_dir.join("pagemap");
    std::fs::write(&cgi, PAGEMAP_CGI).unwrap();
    let files: Vec<(PathBuf, String)> = vec![(cgi, "/work/cgi/pagemap".into())];
    let d = TestDaemon::with_runtime_and("python3.11", &config(extra_config), "pmem", files);
    (d, cgi_dir)
}

/// With a pool of one: the pooled VM tenant A takes, the one booted to
/// replace it and tenant B's VM each map a file of their own and share no
/// page (a pooled VM is booted before its tenant is known, so it shares
/// with no one).
#[test]
fn pooled_vms_share_no_page_with_any_other_vm() {
    let (d, cgi_dir) = daemon("[pools]\npages = 1\n");
    d.run_scenario(|d| {
        create_pages(d);
        // Waits until `n` VMMs map their image and each has touched it
        // (a pooled VM's runtime finished its init).
        let wait_for = |n: usize| {
            let until = std::time::Instant::now() + Duration::from_secs(300);
            loop {
                let vmms = inspect(d, "pfns");
                if vmms.len() >= n && vmms.values().all(|m| m.pfns.len() >= 64) {
                    return vmms;
                }
                assert!(
                    std::time::Instant::now() < until,
                    "{n} VMMs with their image touched expected: {vmms:?}"
                );
                std::thread::sleep(Duration::from_secs(2));
            }
        };
        wait_for(1);
        invoke(d, "tenant-A", "{}");
        invoke(d, "tenant-B", "{}");
        // Tenant A's (the first pooled VM), tenant B's (the replacement,
        // or a cold start) and the pool's next one.
        let vmms = wait_for(3);
        let summary: Vec<String> = vmms
            .iter()
            .map(|(pid, m)| format!("VMM {pid}: file {} {} pages", m.file, m.pfns.len()))
            .collect();
        let files: BTreeSet<&String> = vmms.values().map(|m| &m.file).collect();
        assert_eq!(
            files.len(),
            vmms.len(),
            "VMs share an image file: {summary:?}"
        );
        for (p, m) in &vmms {
            for (q, n) in &vmms {
                if p < q {
                    let common = m.pfns.intersection(&n.pfns).count();
                    assert_eq!(
                        common, 0,
                        "VMMs {p} and {q} share {common} pages: {summary:?}"
                    );
                }
            }
        }
        eprintln!("{summary:?}");
    });
    let _ = std::fs::remove_dir_all(&cgi_dir);
}
