//! Idle reclaim (issue 25, `jail.idle_reclaim_after_s`), end to end with a
//! real guest in one test-host boot: a jailed VM idle past the threshold
//! is paged out of host RAM into a zram swap (its cgroup's
//! `memory.reclaim`), so it holds clearly less host memory, the
//! compressed pool counted; and its next invoke is answered by the same
//! environment, state kept (the counter in its guest's `/tmp` goes on to
//! 2: a cold start would answer 1). And admission by memory actually held
//! (item 4): on a host budget of two guests (`memory_mib = 256`), two
//! tenants' VMs paged out leave room for a third tenant's cold start
//! without evicting either; the first tenant's VM taken back is charged in
//! full again and the least recently used idle one (the second tenant's)
//! makes room.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{run_with_kvm, WorkFile};

/// After the zram swap is on: the daemon with idle reclaim after 15 s and
/// room for two guests, tenants A and B invoked, C once both are paged
/// out, then A again; `FACT <key> <value>` lines.
const SCRIPT: &str = r#"
printf '[jail]\ncpu_full_at_mib = 0\nidle_reclaim_after_s = 15\n[limits]\nmemory_mib = 256\n' > silo.toml
SILO_LOG=info silo serve --config silo.toml --listen 0.0.0.0:9000 --metrics-listen 127.0.0.1:9001 --data-dir /tmp/silo-data \
  --kernel vmlinux --agent agent --allow-unauthenticated > /tmp/daemon.log 2>&1 &
daemon=$!
i=0
until wget -q -O /dev/null http://127.0.0.1:9000/2015-03-31/functions/ 2>/dev/null; do
  i=$((i+1)); [ $i -ge 900 ] && { echo "daemon not up"; cat /tmp/daemon.log; exit 1; }
  sleep 0.2
done
silo create-function --name counter --bootstrap counter --per-tenant --timeout 60 >/dev/null \
  || { cat /tmp/daemon.log; exit 1; }
echo "FACT invoke1 $(silo invoke --name counter --tenant tenant-A | tr -d '\n')"
cg=$(ls -d /sys/fs/cgroup/silo/vm-* | head -1)
# memory.current, memory.swap.current, and this VM's share of zram's pool
# (the pool's size times its swapped bytes over the data zram holds).
held() {
  sw=$(cat $cg/memory.swap.current)
  echo "$(cat $cg/memory.current),$sw,$(awk -v sw=$sw '{ if ($1 > 0) printf "%d", $3 * sw / $1; else print 0 }' /sys/block/zram0/mm_stat)"
}
echo "FACT cgroups_before $(ls -d /sys/fs/cgroup/silo/vm-* | tr '\n' ',')"
echo "FACT held_after_invoke $(held)"
start=$(cut -d. -f1 /proc/uptime)
echo "FACT invokeB $(silo invoke --name counter --tenant tenant-B | tr -d '\n')"
evictions() { wget -q -O - http://127.0.0.1:9001/metrics | awk '/^silo_environments_evicted_total/ { print $2 }'; }
i=0
until [ "$(grep -c 'idle VM reclaimed' /tmp/daemon.log)" -ge 2 ] || [ $i -ge 360 ]; do sleep 0.5; i=$((i+1)); done
echo "FACT reclaimed_after_s $(( $(cut -d. -f1 /proc/uptime) - start ))"
echo "FACT held_reclaimed $(held)"
sleep 6  # a reaper tick (every 3.75 s here) charges them what they hold
echo "FACT evictions_before_c $(evictions)"
echo "FACT invokeC $(silo invoke --name counter --tenant tenant-C | tr -d '\n')"
echo "FACT evictions_after_c $(evictions)"
echo "FACT vms_after_c $(ls -d /sys/fs/cgroup/silo/vm-* | wc -l)"
echo "FACT invoke2 $(silo invoke --name counter --tenant tenant-A | tr -d '\n')"
echo "FACT held_after_wake $(held)"
sleep 1
echo "FACT evictions_after_wake $(evictions)"
echo "FACT cgroups_after $(ls -d /sys/fs/cgroup/silo/vm-* | tr '\n' ',')"
grep -E 'idle (VM reclaimed|reclaim failed)' /tmp/daemon.log | head -5
kill -TERM $daemon; wait $daemon; echo "FACT daemon_exit $?"
"#;

fn facts(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("FACT "))
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// (memory.current, memory.swap.current, its share of zram's pool), bytes.
fn held(facts: &BTreeMap<String, String>, key: &str, out: &str) -> (u64, u64, u64) {
    let v: Vec<u64> = facts
        .get(key)
        .unwrap_or_else(|| panic!("no fact {key}:\n{out}"))
        .split(',')
        .map(|x| x.parse().unwrap_or_else(|_| panic!("{key}: {x}:\n{out}")))
        .collect();
    assert_eq!(v.len(), 3, "{key}:\n{out}");
    (v[0], v[1], v[2])
}

#[test]
fn an_idle_vm_is_paged_out_and_its_next_invoke_is_warm() {
    let kernel = silo_images::kernel::guest_kernel().expect("guest kernel");
    let agent = silo_images::artifacts::guest_agent().expect("static guest agent");
    let counter = silo_images::artifacts::counter_function().expect("counter function");
    let swap = silo_images::testhost::swap_files().expect("the test host's zram modules");
    let mut files = vec![
        ("vmlinux", WorkFile::Host(kernel.vmlinux)),
        ("agent", WorkFile::Host(agent)),
        ("counter", WorkFile::Host(counter)),
    ];
    for (path, name) in &swap {
        files.push((name.as_str(), WorkFile::Host(path.clone())));
    }
    let script = format!("{}{SCRIPT}", silo_images::testhost::zram_swap_script("."));
    let started = std::time::Instant::now();
    let run = run_with_kvm(files, &script, Duration::from_secs(900));
    eprintln!("idle reclaim run: {:.0} s", started.elapsed().as_secs_f64());
    let out = &run.output;
    assert!(out.contains("ZRAM_SWAP_ON"), "no zram swap:\n{out}");
    let f = facts(out);
    let get = |k: &str| {
        f.get(k)
            .cloned()
            .unwrap_or_else(|| panic!("no fact {k}:\n{out}"))
    };
    assert!(
        get("invoke1").contains("count 1") || get("invoke1").contains("\"count\":1"),
        "{out}"
    );
    let (cur0, _, zram0) = held(&f, "held_after_invoke", out);
    let (cur1, swap1, zram1) = held(&f, "held_reclaimed", out);
    let (cur2, swap2, zram2) = held(&f, "held_after_wake", out);
    const MIB: f64 = (1 << 20) as f64;
    let mib = |b: u64| b as f64 / MIB;
    eprintln!(
        "held (cgroup memory.current + zram pool): after invoke {:.1} MiB, reclaimed {:.1} MiB \
         ({:.1} + {:.1}; {:.1} MiB in swap), after the next invoke {:.1} MiB ({:.1} MiB still in \
         swap); reclaimed {} s after the invoke",
        mib(cur0 + zram0),
        mib(cur1 + zram1),
        mib(cur1),
        mib(zram1),
        mib(swap1),
        mib(cur2 + zram2),
        mib(swap2),
        get("reclaimed_after_s"),
    );
    assert!(
        out.contains("idle VM reclaimed"),
        "the idle VM was never reclaimed:\n{out}"
    );
    assert!(swap1 > 0, "nothing of the VM went to swap:\n{out}");
    assert!(
        (cur1 + zram1) * 2 <= cur0 + zram0,
        "an idle VM past the threshold holds less than half what it held after its invoke \
         (memory.current + zram's pool: {} -> {} bytes):\n{out}",
        cur0 + zram0,
        cur1 + zram1
    );
    assert!(
        get("invoke2").contains("count 2") || get("invoke2").contains("\"count\":2"),
        "the reclaimed environment answered its next invoke with its state kept:\n{out}"
    );
    let a_cgroup = get("cgroups_before");
    assert!(
        get("cgroups_after").contains(a_cgroup.trim_end_matches(',')),
        "tenant A's own VM answered (its cgroup still there):\n{out}"
    );
    // Admission by memory held: C booted beside the two paged-out VMs.
    assert!(
        get("invokeC").contains("count 1") || get("invokeC").contains("\"count\":1"),
        "{out}"
    );
    assert_eq!(
        (
            get("evictions_before_c"),
            get("evictions_after_c"),
            get("vms_after_c")
        ),
        ("0".to_string(), "0".to_string(), "3".to_string()),
        "two paged-out VMs leave room for a third on a budget of two, evicting neither:\n{out}"
    );
    assert_eq!(
        get("evictions_after_wake"),
        "1",
        "A's VM, charged in full again, made the least recently used idle one go:\n{out}"
    );
    assert_eq!(get("daemon_exit"), "0", "{out}");
}
