//! The jail, proved from the outside against a running daemon with real
//! microVMs (in the KVM test host where this host's KVM cannot boot guests):
//! two tenants' VMMs each run as their own unprivileged uid, in their own
//! root, network namespace and cgroup with its limits, with an allow-listed
//! environment and every thread under seccomp; from a VMM's network
//! namespace 127.0.0.1 is unreachable, and from its root the other VM's
//! directory (and its agent socket) does not exist. Once the daemon stops,
//! no VM cgroup is left.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{run_with_kvm, WorkFile};

/// Prints `FACT <who> <key> <value>` lines for the Rust side to check.
const SCRIPT: &str = r#"
printf '[jail]\ncpu_full_at_mib = 256\n' > silo.toml
silo serve --config silo.toml --listen 0.0.0.0:9000 --data-dir /tmp/silo-data --kernel vmlinux \
  --agent agent --allow-unauthenticated > /tmp/daemon.log 2>&1 &
daemon=$!
i=0
until wget -q -O /dev/null http://127.0.0.1:9000/2015-03-31/functions/ 2>/dev/null; do
  i=$((i+1)); [ $i -ge 900 ] && { echo "daemon not up"; cat /tmp/daemon.log; exit 1; }
  sleep 0.2
done
silo create-function --name counter --bootstrap counter --per-tenant --timeout 60 >/dev/null \
  || { cat /tmp/daemon.log; exit 1; }
silo invoke --name counter --tenant tenant-A || { cat /tmp/daemon.log; exit 1; }
silo invoke --name counter --tenant tenant-B || { cat /tmp/daemon.log; exit 1; }
echo
children() { for s in /proc/[0-9]*/status; do
  awk -v p="$1" -v f="$s" '/^PPid:/ { if ($2 == p) { split(f, a, "/"); print a[3] } }' "$s" 2>/dev/null
done; }
uid_of() { awk '/^Uid:/ { print $2 }' /proc/$1/status; }
echo "FACT daemon uid $(uid_of $daemon)"
echo "FACT daemon netns $(readlink /proc/$daemon/ns/net)"
nc -w 2 127.0.0.1 9000 </dev/null >/dev/null 2>&1 && echo "FACT daemon tcp_loopback connected" \
  || echo "FACT daemon tcp_loopback refused"
dirs=$(ls -d /tmp/silo-data-run/vm-* 2>/dev/null | tr '\n' ' ')
for p in $(children $daemon); do
  for c in $(children $p); do
    echo "FACT $c jailer_uid $(uid_of $p)"
    echo "FACT $c jailer_seccomp $(awk '/^Seccomp:/ { print $2 }' /proc/$p/status)"
    echo "FACT $c uid $(uid_of $c)"
    echo "FACT $c gid $(awk '/^Gid:/ { print $2 }' /proc/$c/status)"
    echo "FACT $c groups [$(awk '/^Groups:/ { $1 = ""; print }' /proc/$c/status | tr -d ' ')]"
    echo "FACT $c cap_eff $(awk '/^CapEff:/ { print $2 }' /proc/$c/status)"
    echo "FACT $c root $(ls /proc/$c/root | sort | tr '\n' ',')"
    echo "FACT $c netns $(readlink /proc/$c/ns/net)"
    echo "FACT $c mntns $(readlink /proc/$c/ns/mnt)"
    echo "FACT $c pidns $(readlink /proc/$c/ns/pid)"
    echo "FACT $c environ $(tr '\0' ',' < /proc/$c/environ)"
    echo "FACT $c nofile $(awk '/^Max open files/ { print $4 }' /proc/$c/limits)"
    echo "FACT $c fsize $(awk '/^Max file size/ { print $4 }' /proc/$c/limits)"
    echo "FACT $c seccomp $(cat /proc/$c/task/*/status | awk '/^Seccomp:/ { print $2 }' | sort -u | tr '\n' ',')"
    cg=/sys/fs/cgroup$(cut -d: -f3 /proc/$c/cgroup)
    echo "FACT $c cgroup $cg"
    echo "FACT $c memory.max $(cat $cg/memory.max)"
    echo "FACT $c cpu.max $(cat $cg/cpu.max | tr ' ' '/')"
    echo "FACT $c pids.max $(cat $cg/pids.max)"
    echo "FACT $c cpu.weight $(cat $cg/cpu.weight)"
    nsenter -t $c -n nc -w 2 127.0.0.1 9000 </dev/null >/dev/null 2>&1 \
      && echo "FACT $c tcp_loopback connected" || echo "FACT $c tcp_loopback refused"
    own=0; other=0
    for d in $dirs; do
      if [ -e /proc/$c/root$d/vsock_1024 ]; then other=$((other+1)); fi
    done
    [ -S /proc/$c/root/vsock_1024 ] && own=1
    echo "FACT $c own_agent_socket $own"
    echo "FACT $c other_vm_dirs_visible $other"
    echo "FACT $c fds $(ls -l /proc/$c/fd | awk 'NR > 1 { print $NF }' | tr '\n' ',')"
    echo "FACT $c host_fds $(ls -l /proc/$c/fd | grep -c '/tmp/silo-data/\|daemon.log')"
  done
done
echo "FACT host vm_dirs $(echo $dirs | wc -w)"
kill -TERM $daemon; wait $daemon
echo "FACT host daemon_exit $?"
echo "FACT host cgroups_left $(ls -d /sys/fs/cgroup/silo/vm-* 2>/dev/null | wc -l)"
"#;

/// The `FACT <who> <key> <value>` lines of `out`, by who and key.
fn facts(out: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut facts: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for l in out.lines() {
        let l = l.trim().trim_start_matches("[testhost] ");
        let mut it = l.splitn(4, ' ');
        if it.next() != Some("FACT") {
            continue;
        }
        let (Some(who), Some(key)) = (it.next(), it.next()) else {
            continue;
        };
        facts
            .entry(who.to_string())
            .or_default()
            .insert(key.to_string(), it.next().unwrap_or("").to_string());
    }
    facts
}

/// One fact; panics showing `out` if it is missing.
fn fact(
    facts: &BTreeMap<String, BTreeMap<String, String>>,
    out: &str,
    who: &str,
    key: &str,
) -> String {
    facts
        .get(who)
        .and_then(|f| f.get(key))
        .cloned()
        .unwrap_or_else(|| panic!("no fact {who} {key} in:\n{out}"))
}

#[test]
fn every_vmm_is_jailed_in_its_own_uid_root_network_and_cgroup() {
    let kernel = silo_images::kernel::guest_kernel().expect("guest kernel");
    let agent = silo_images::artifacts::guest_agent().expect("static guest agent");
    let counter = silo_images::artifacts::counter_function().expect("counter function");
    let run = run_with_kvm(
        vec![
            ("vmlinux", WorkFile::Host(kernel.vmlinux)),
            ("agent", WorkFile::Host(agent)),
            ("counter", WorkFile::Host(counter)),
        ],
        SCRIPT,
        Duration::from_secs(900),
    );
    let out = &run.output;
    let facts = facts(out);
    let get = |who: &str, key: &str| fact(&facts, out, who, key);
    let vmms: Vec<&String> = facts
        .keys()
        .filter(|k| k.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    assert_eq!(vmms.len(), 2, "one VMM per tenant expected:\n{out}");
    assert_eq!(get("host", "vm_dirs"), "2", "{out}");
    assert_eq!(
        get("daemon", "tcp_loopback"),
        "connected",
        "control: the daemon's own namespace reaches its API:\n{out}"
    );
    let daemon_uid = get("daemon", "uid");
    let mut uids = Vec::new();
    for v in &vmms {
        let uid = get(v, "uid");
        assert_ne!(uid, daemon_uid, "VMM {v} runs as the daemon's uid:\n{out}");
        assert_ne!(uid, "0", "{out}");
        assert_eq!(get(v, "gid"), uid, "{out}");
        assert_eq!(get(v, "groups"), "[]", "no supplementary groups:\n{out}");
        assert_eq!(
            get(v, "jailer_uid"),
            uid,
            "the jailer parent dropped too:\n{out}"
        );
        assert_eq!(
            get(v, "jailer_seccomp"),
            "2",
            "the jailer parent is filtered:\n{out}"
        );
        assert_eq!(get(v, "cap_eff"), "0000000000000000", "{out}");
        uids.push(uid);
        let root = get(v, "root");
        let entries: Vec<&str> = root.split(',').filter(|e| !e.is_empty()).collect();
        for needed in ["kernel", "initrd", "vsock", "vsock_1024"] {
            assert!(
                entries.contains(&needed),
                "{needed} missing from {v}'s root {root}:\n{out}"
            );
        }
        for host_dir in ["bin", "etc", "proc", "dev", "tmp", "work"] {
            assert!(
                !entries.contains(&host_dir),
                "{v}'s root is not its jail: {root}"
            );
        }
        assert_ne!(get(v, "netns"), get("daemon", "netns"), "{out}");
        assert_eq!(
            get(v, "environ"),
            "SILO_LOG=warn,",
            "only allow-listed variables:\n{out}"
        );
        assert_eq!(get(v, "nofile"), "256", "{out}");
        assert_eq!(get(v, "fsize"), "1048576", "{out}");
        assert_eq!(get(v, "seccomp"), "2,", "every thread filtered:\n{out}");
        assert!(
            get(v, "cgroup").starts_with("/sys/fs/cgroup/silo/vm-"),
            "{out}"
        );
        assert_eq!(
            get(v, "memory.max"),
            ((128u64 + 64) << 20).to_string(),
            "{out}"
        );
        // 128 MB with one full CPU at 256 MB (this test's config): half.
        assert_eq!(get(v, "cpu.max"), "50000/100000", "{out}");
        assert_eq!(get(v, "pids.max"), "32", "{out}");
        // One vCPU and the devices thread, each weighing a task's 100.
        assert_eq!(get(v, "cpu.weight"), "200", "{out}");
        assert_eq!(
            get(v, "tcp_loopback"),
            "refused",
            "the VMM's network namespace reaches 127.0.0.1:\n{out}"
        );
        assert_eq!(get(v, "own_agent_socket"), "1", "{out}");
        assert_eq!(
            get(v, "other_vm_dirs_visible"),
            "0",
            "a VMM sees another VM's directory:\n{out}"
        );
        assert_eq!(
            get(v, "host_fds"),
            "0",
            "a VMM inherited a daemon file:\n{out}"
        );
    }
    assert_ne!(uids[0], uids[1], "two VMs share a uid:\n{out}");
    assert_ne!(get(vmms[0], "netns"), get(vmms[1], "netns"), "{out}");
    assert_ne!(get(vmms[0], "mntns"), get(vmms[1], "mntns"), "{out}");
    assert_ne!(get(vmms[0], "pidns"), get(vmms[1], "pidns"), "{out}");
    assert_eq!(get("host", "daemon_exit"), "0", "{out}");
    assert_eq!(
        get("host", "cgroups_left"),
        "0",
        "VM cgroups left after the daemon stopped:\n{out}"
    );
}

/// Shell functions for the scripts below: `start` (re)starts the daemon on
/// the same configuration and data directory, its pid in `$daemon`;
/// `jailed` lists the live processes (not zombies) whose uid is a VM's
/// (>= the default `jail.uid_base`); `alive PID`; `children PID`.
const SCRIPT_COMMON: &str = r#"
printf '[jail]\ncpu_full_at_mib = 0\n' > silo.toml
start() {
  silo serve --config silo.toml --listen 0.0.0.0:9000 --data-dir /tmp/silo-data --kernel vmlinux \
    --agent agent --allow-unauthenticated >> /tmp/daemon.log 2>&1 &
  daemon=$!
  i=0
  until wget -q -O /dev/null http://127.0.0.1:9000/2015-03-31/functions/ 2>/dev/null; do
    i=$((i+1)); [ $i -ge 900 ] && { echo "daemon not up"; cat /tmp/daemon.log; exit 1; }
    sleep 0.2
  done
}
jailed() { for s in /proc/[0-9]*/status; do
  awk '/^State:/ { st = $2 } /^Uid:/ { u = $2 }
       END { if (u >= 1000000000 && st != "Z") { split(FILENAME, a, "/"); print a[3] } }' "$s" 2>/dev/null
done | tr '\n' ','; }
alive() { [ -r /proc/$1/status ] && ! grep -q '^State:.*Z' /proc/$1/status 2>/dev/null; }
children() { for s in /proc/[0-9]*/status; do
  awk -v p="$1" -v f="$s" '/^PPid:/ { if ($2 == p) { split(f, a, "/"); print a[3] } }' "$s" 2>/dev/null
done; }
vm_cgroups() { ls -d /sys/fs/cgroup/silo/vm-* 2>/dev/null | tr '\n' ','; }
"#;

/// Two tenants' VMs, tenant-A's busy in a long invoke (printing as fast as
/// it can), tenant-B's VMM stopped (SIGSTOP: a VMM that does not end by
/// itself), and the daemon killed with SIGKILL.
const SCRIPT_DAEMON_KILLED: &str = r#"
start
silo create-function --name counter --bootstrap counter --per-tenant --timeout 600 >/dev/null \
  || { cat /tmp/daemon.log; exit 1; }
silo invoke --name counter --tenant tenant-A >/dev/null || { cat /tmp/daemon.log; exit 1; }
jailer_a=$(children $daemon)
silo invoke --name counter --tenant tenant-B >/dev/null || { cat /tmp/daemon.log; exit 1; }
jailer_b=$(children $daemon | grep -vx "$jailer_a")
silo invoke --name counter --tenant tenant-A --payload '{"action":"flood","lines":1000000000}' \
  >/dev/null 2>&1 &
sleep 3
# tenant-B's VMM no longer runs its guest: it cannot notice the daemon's
# death nor end by itself (as a VMM whose guest ignores it would not).
kill -STOP $(children $jailer_b)
before=$(vm_cgroups)
echo "FACT before cgroups $before"
echo "FACT before jailed $(jailed)"
kill -KILL $daemon
sleep 2
echo "FACT killed jailed $(jailed)"
echo "FACT killed cgroups $(vm_cgroups)"
start
left=0
for c in $(echo $before | tr ',' ' '); do [ -d $c ] && left=$((left+1)); done
echo "FACT restarted old_cgroups_left $left"
echo "FACT restarted sweep_logged $(grep -c 'VM cgroups left by an earlier daemon' /tmp/daemon.log)"
for t in tenant-A tenant-B; do
  echo "FACT $t answer $(silo invoke --name counter --tenant $t 2>&1 | tr -d '\n' | head -c 300)"
done
kill -TERM $daemon; wait $daemon
echo "FACT host cgroups_left $(ls -d /sys/fs/cgroup/silo/vm-* 2>/dev/null | wc -l)"
"#;

/// A daemon killed with SIGKILL leaves no VM behind: 2 s later no process
/// runs with a VM's uid, neither the VMM of a VM busy in a long invoke nor
/// one that would not end by itself; the
/// daemon restarted on the same configuration finds and removes the VM
/// cgroups of the dead one before it hands out any uid, and serves both
/// tenants again.
#[test]
fn a_killed_daemon_leaves_no_vmm_and_its_successor_sweeps_the_cgroups() {
    let (kernel, agent, counter) = (
        silo_images::kernel::guest_kernel().expect("guest kernel"),
        silo_images::artifacts::guest_agent().expect("static guest agent"),
        silo_images::artifacts::counter_function().expect("counter function"),
    );
    let run = run_with_kvm(
        vec![
            ("vmlinux", WorkFile::Host(kernel.vmlinux)),
            ("agent", WorkFile::Host(agent)),
            ("counter", WorkFile::Host(counter)),
        ],
        &format!("{SCRIPT_COMMON}{SCRIPT_DAEMON_KILLED}"),
        Duration::from_secs(900),
    );
    let out = &run.output;
    let facts = facts(out);
    let get = |who: &str, key: &str| fact(&facts, out, who, key);
    let before = get("before", "cgroups");
    assert_eq!(
        before.split(',').filter(|c| !c.is_empty()).count(),
        2,
        "one VM per tenant before the kill:\n{out}"
    );
    assert_ne!(get("before", "jailed"), "", "control: VMMs ran:\n{out}");
    assert_eq!(
        get("killed", "jailed"),
        "",
        "processes with a VM's uid still run 2 s after the daemon was killed:\n{out}"
    );
    assert_eq!(
        get("restarted", "old_cgroups_left"),
        "0",
        "the restarted daemon left the dead one's VM cgroups:\n{out}"
    );
    assert_eq!(get("restarted", "sweep_logged"), "1", "{out}");
    for t in ["tenant-A", "tenant-B"] {
        let answer = get(t, "answer");
        assert!(
            answer.contains(&format!("\"tenant_id\":\"{t}\"")),
            "{t} not served after the restart: {answer}\n{out}"
        );
    }
    assert_eq!(get("host", "cgroups_left"), "0", "{out}");
}

/// A jailed VMM that stops reading (stopped with SIGSTOP, as a guest that
/// never drains its vsock would leave it) while the daemon writes a 2 MB
/// invoke with a 3 s timeout.
const SCRIPT_STOPS_READING: &str = r#"
start
silo create-function --name counter --bootstrap counter --per-tenant --timeout 3 >/dev/null \
  || { cat /tmp/daemon.log; exit 1; }
silo invoke --name counter --tenant tenant-A >/dev/null || { cat /tmp/daemon.log; exit 1; }
jailer=$(children $daemon)
vmm=$(children $jailer)
echo "FACT vmm uid $(awk '/^Uid:/ { print $2 }' /proc/$vmm/status)"
kill -STOP $vmm
printf '{"pad":"' > big.json
head -c 2000000 /dev/zero | tr '\0' a >> big.json
printf '"}' >> big.json
wget -q -O answer.json --header 'X-Amz-Tenant-Id: tenant-A' --post-file big.json \
  http://127.0.0.1:9000/2015-03-31/functions/counter/invocations 2>wget.err &
w=$!
i=0
while alive $w && [ $i -lt 480 ]; do sleep 0.5; i=$((i+1)); done
alive $w && echo "FACT invoke answered no" || echo "FACT invoke answered yes"
echo "FACT invoke body $(tr -d '\n' < answer.json | head -c 300)$(tr -d '\n' < wget.err)"
i=0
while { alive $vmm || alive $jailer; } && [ $i -lt 120 ]; do sleep 0.5; i=$((i+1)); done
alive $vmm && echo "FACT vmm left yes" || echo "FACT vmm left no"
alive $jailer && echo "FACT jailer left yes" || echo "FACT jailer left no"
echo "FACT host jailed $(jailed)"
kill -TERM $daemon; wait $daemon
"#;

/// The invoke write shares the invoke's deadline against a real jailed
/// VMM: one that stops reading makes the invoke end `Sandbox.Timedout`
/// instead of hanging, and the environment's end kills the VMM itself (pid
/// 1 of its pid namespace, below the jailer the daemon spawned), not only
/// the process the daemon spawned.
#[test]
fn a_jailed_vmm_that_stops_reading_times_out_the_invoke_and_is_killed() {
    let (kernel, agent, counter) = (
        silo_images::kernel::guest_kernel().expect("guest kernel"),
        silo_images::artifacts::guest_agent().expect("static guest agent"),
        silo_images::artifacts::counter_function().expect("counter function"),
    );
    let run = run_with_kvm(
        vec![
            ("vmlinux", WorkFile::Host(kernel.vmlinux)),
            ("agent", WorkFile::Host(agent)),
            ("counter", WorkFile::Host(counter)),
        ],
        &format!("{SCRIPT_COMMON}{SCRIPT_STOPS_READING}"),
        Duration::from_secs(900),
    );
    let out = &run.output;
    let facts = facts(out);
    let get = |who: &str, key: &str| fact(&facts, out, who, key);
    let uid: u64 = get("vmm", "uid").parse().expect("the VMM's uid");
    assert!(uid >= 1_000_000_000, "control: the VMM is jailed:\n{out}");
    assert_eq!(
        get("invoke", "answered"),
        "yes",
        "the invoke to a VMM that stops reading never ended:\n{out}"
    );
    assert!(get("invoke", "body").contains("Sandbox.Timedout"), "{out}");
    assert_eq!(
        get("vmm", "left"),
        "no",
        "the jailed VMM still runs:\n{out}"
    );
    assert_eq!(get("jailer", "left"), "no", "{out}");
    assert_eq!(get("host", "jailed"), "", "{out}");
}
