//! The CLI helpers against a real daemon, every VMM thread under seccomp,
//! and VMMs never outliving the daemon: the
//! script starts `silo serve`, creates a function and invokes it with
//! `silo create-function` / `silo invoke` (signed), checks that one VMM
//! process runs (jailed: the jailer the daemon spawned and the VMM it
//! forked), SIGKILLs the daemon and checks both died with it (parent-death
//! signals; the guest agent also powers the guest off when its host link
//! drops, so either alone passes this test).

mod common;

use std::time::Duration;

use common::daemon::{script_create_function, script_files, script_start_daemon};
use common::run_with_kvm;

#[test]
fn cli_helpers_work_and_vmms_die_with_a_killed_daemon() {
    let config = common::daemon::config("");
    let serve = script_start_daemon(9411, None);
    let create = script_create_function("counter", "--bootstrap counter", 30, "create.json");
    let script = format!(
        r#"set -u
{serve}{create}grep -q PER_TENANT create.json && echo CREATED_PER_TENANT
silo invoke --name counter --tenant tenant-A --payload '{{}}' > out1.json && cat out1.json && echo
silo invoke --name counter --payload '{{}}' 2> err.txt; echo "NO_TENANT_EXIT $?"; cat err.txt
# A jailed VMM is two processes: the jailer the daemon spawned, and the VMM
# it forked (pid 1 of its own pid namespace), which runs the VM's threads.
jailer=$(ps -o pid,ppid,args | awk -v d=$daemon '$2 == d && /silo-vmm/ {{ print $1 }}')
echo "VMMS_RUNNING $(echo $jailer | wc -w)"
vpid=$(ps -o pid,ppid,args | awk -v j=$jailer '$2 == j && /silo-vmm/ {{ print $1 }}' | head -1)
echo "VMM_TASKS $(ls /proc/$vpid/task | wc -l) FILTERED $(grep -l 'Seccomp:.*2' /proc/$vpid/task/*/status | wc -l)"
kill -9 $daemon; wait $daemon 2>/dev/null
sleep 2
left=$(ps -o args | grep -c "[s]ilo-vmm"); echo "VMMS_AFTER_KILL $left"
"#
    );
    let run = run_with_kvm(script_files(config), &script, Duration::from_secs(300));
    let out = &run.output;
    assert!(out.contains("CREATED_PER_TENANT"), "{out}");
    assert!(
        out.contains(r#""tenant_id":"tenant-A""#) && out.contains(r#""count":1"#),
        "{out}"
    );
    assert!(out.contains("NO_TENANT_EXIT 1"), "{out}");
    assert!(out.contains("Add a valid tenant ID"), "{out}");
    assert!(out.contains("VMMS_RUNNING 1"), "{out}");
    // Every thread of the running VMM (main, devices, vCPU) is under its
    // seccomp filter.
    let tasks = out
        .split("VMM_TASKS ")
        .nth(1)
        .and_then(|l| l.lines().next())
        .expect("VMM_TASKS line");
    let n: Vec<&str> = tasks.split_whitespace().collect();
    assert_eq!(n.len(), 3, "{tasks}");
    assert!(n[0].parse::<u32>().unwrap() >= 3, "{tasks}");
    assert_eq!(n[0], n[2], "threads without a seccomp filter: {tasks}");
    assert!(
        out.contains("VMMS_AFTER_KILL 0"),
        "a VMM outlived its daemon:\n{out}"
    );
}
