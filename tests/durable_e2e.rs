//! Issue 23 with real, jailed microVMs (in the KVM test host on these
//! machines), one test-host boot for the whole file:
//!
//! 1. `kill -9` of the daemon while accepted Events wait and run, three
//!    times in a row, restarting it each time: every accepted event runs to
//!    success after all (its request id reported succeeded in the log the
//!    daemon appends to across restarts), each start reaps what the killed
//!    daemon left (no VMM of it alive, no run directory entry of it), and a
//!    function record made unreadable is reported by name and skipped while
//!    the others serve;
//! 2. SIGTERM with an invoke in flight: it is answered, the daemon exits 0,
//!    and leaves no VMM, VM cgroup or run directory;
//! 3. the data directory full (a small tmpfs): an Event gets a 5xx naming
//!    the cause (never a 202), CreateFunction too, a warm invoke is still
//!    answered; with space again, Events are accepted.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::daemon::script_files;
use common::{run_with_kvm, section};

/// Shell functions of the script: `start` a daemon (appending to
/// daemon.log), `event T N` (an Event of tenant T; its request id appended
/// to accepted.txt), `vmms` (pids of VMM processes), `leftovers`.
const HELPERS: &str = r#"
export AWS_ACCESS_KEY_ID=AKIDSILOADMIN AWS_SECRET_ACCESS_KEY=admin-secret-for-tests SILO_ENDPOINT=http://127.0.0.1:9420
start() {
  SILO_LOG=info silo serve --config silo.toml --listen 127.0.0.1:9420 --data-dir ./data --kernel vmlinux --agent agent 2>> daemon.log &
  daemon=$!
  i=0; until wget -qO- http://127.0.0.1:9420/healthz >/dev/null 2>&1; do i=$((i+1)); [ $i -gt 600 ] && echo NO_DAEMON && cat daemon.log && exit 1; sleep 0.2; done
}
event() {
  silo invoke --name counter --tenant "$1" --type Event --payload "{\"action\":\"sleep\",\"ms\":$2}" 2> ev.err > /dev/null
  id=$(sed -n 's/^silo: accepted, request id //p' ev.err)
  if [ -n "$id" ]; then echo "$id" >> accepted.txt; else echo "EVENT_REFUSED $1"; cat ev.err; fi
}
vmms() { ps -o pid,args | awk '/[s]ilo-vmm/ { print $1 }' | tr '\n' ' '; }
"#;

#[test]
fn accepted_events_survive_kill_9_sigterm_drains_and_a_full_disk_is_refused_clearly() {
    let config = common::daemon::config("[limits]\nevent_workers = 4\nidle_timeout_s = 600\n");
    let script = format!(
        r#"set -u
{HELPERS}
: > accepted.txt
start
silo create-function --name counter --bootstrap counter --per-tenant --timeout 30 > create.json || {{ cat create.json daemon.log; exit 1; }}
silo create-function --name other --bootstrap counter --per-tenant --timeout 30 > /dev/null || exit 1
for cycle in 1 2 3; do
  for t in a b c; do event "t$t-$cycle" 1500; event "t$t-$cycle" 1500; done
  # Some running, most waiting: kill -9 while they do.
  sleep 3
  old=$(vmms)
  echo "CYCLE $cycle VMMS_BEFORE_KILL [$old] ACCEPTED $(wc -l < accepted.txt)"
  kill -9 $daemon; wait $daemon 2>/dev/null
  if [ $cycle = 2 ]; then printf '{{"name": "broken", ' > data/functions/broken.json; fi
  start
  alive=""; for p in $old; do [ -d /proc/$p ] && alive="$alive $p"; done
  echo "CYCLE $cycle OLD_VMMS_ALIVE [$alive]"
done
# Every accepted event succeeds at last.
i=0
while :; do
  missing=0
  for id in $(cat accepted.txt); do grep "request_id=$id" daemon.log | grep -q 'event invocation succeeded' || missing=$((missing+1)); done
  [ $missing = 0 ] && break
  i=$((i+1)); [ $i -gt 400 ] && break
  sleep 1
done
echo "EVENTS_MISSING $missing"
silo invoke --name other --tenant x --payload '{{}}' > other.json; echo "OTHER_EXIT $?"
# SIGTERM with an invoke in flight.
silo invoke --name counter --tenant inflight --payload '{{"action":"sleep","ms":200}}' > /dev/null
silo invoke --name counter --tenant inflight --payload '{{"action":"sleep","ms":4000}}' > inflight.json 2>&1 &
client=$!
sleep 1.5
kill -TERM $daemon; wait $daemon; echo "SIGTERM_EXIT $?"
wait $client; echo "INFLIGHT_EXIT $?"; cat inflight.json; echo
echo "AFTER_STOP vmms [$(vmms)] cgroups $(ls -d /sys/fs/cgroup/silo/vm-* 2>/dev/null | wc -l) run_dir $(ls data-run 2>/dev/null | wc -l)"
echo ACCEPTED_BEGIN; cat accepted.txt; echo ACCEPTED_END
echo SUCCEEDED_BEGIN; grep 'event invocation succeeded' daemon.log | sed -n 's/.*request_id=\([0-9a-f-]*\).*/\1/p'; echo SUCCEEDED_END
echo "BROKEN_REPORTED $(grep 'unreadable function record' daemon.log | grep -c broken.json)"
echo LOG_BEGIN; grep -E 'recovery|left by an earlier|unreadable|ERROR|WARN' daemon.log | tail -n 60; echo LOG_END
# The data directory on a 6 MiB tmpfs, filled up.
mkdir -p full && mount -t tmpfs -o size=6m tmpfs full
# (its run directory elsewhere: only the store is on the full disk)
{{ echo 'run_dir = "/tmp/full-run"'; cat silo.toml; }} > full.toml
SILO_LOG=info silo serve --config full.toml --listen 127.0.0.1:9420 --data-dir ./full/data --kernel vmlinux --agent agent 2> full.log &
daemon=$!
i=0; until wget -qO- http://127.0.0.1:9420/healthz >/dev/null 2>&1; do i=$((i+1)); [ $i -gt 600 ] && echo NO_DAEMON && cat full.log && exit 1; sleep 0.2; done
silo create-function --name counter --bootstrap counter --per-tenant --timeout 30 > /dev/null || {{ echo CREATE_FAILED; cat full.log; }}
silo invoke --name counter --tenant w --payload '{{}}' > /dev/null; echo "WARM0_EXIT $?"
dd if=/dev/zero of=full/filler bs=64k 2>/dev/null
echo "FULL df $(df -k full | tail -1)"
silo invoke --name counter --tenant w --type Event --payload '{{}}' > full_event.json 2> full_event.err; echo "FULL_EVENT_EXIT $?"
cat full_event.json full_event.err
silo invoke --name counter --tenant w --payload '{{}}' > warm.json; echo "FULL_WARM_EXIT $?"; cat warm.json; echo
silo create-function --name more --bootstrap counter --per-tenant > full_create.json 2>&1; echo "FULL_CREATE_EXIT $?"; cat full_create.json; echo
rm full/filler
silo invoke --name counter --tenant w --type Event --payload '{{}}' 2>&1 | grep -c 'accepted, request id' | sed 's/^/FREED_EVENT_ACCEPTED /'
kill -TERM $daemon; wait $daemon; echo "FULL_DAEMON_EXIT $?"
umount full
"#
    );
    let run = run_with_kvm(script_files(config), &script, Duration::from_secs(1500));
    let out = &run.output;
    assert!(!out.contains("NO_DAEMON"), "{out}");
    assert!(!out.contains("EVENT_REFUSED"), "{out}");
    // 1. Every accepted event ran to success, across three kill -9s.
    let accepted: BTreeSet<String> = section(out, "ACCEPTED_BEGIN", "ACCEPTED_END")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(accepted.len(), 18, "{out}");
    let succeeded: BTreeSet<String> = section(out, "SUCCEEDED_BEGIN", "SUCCEEDED_END")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let lost: Vec<&String> = accepted.difference(&succeeded).collect();
    assert!(
        lost.is_empty(),
        "accepted events never succeeded: {lost:?}\n{out}"
    );
    assert!(out.contains("EVENTS_MISSING 0"), "{out}");
    for cycle in 1..=3 {
        assert!(
            out.contains(&format!("CYCLE {cycle} OLD_VMMS_ALIVE []")),
            "VMMs of the killed daemon still alive after restart {cycle}:\n{out}"
        );
    }
    let log = section(out, "LOG_BEGIN", "LOG_END");
    assert!(log.contains("recovery"), "{log}");
    // The unreadable record is named (at the starts of cycles 2 and 3); the
    // other functions serve.
    assert!(out.contains("BROKEN_REPORTED 2"), "{out}");
    assert!(out.contains("OTHER_EXIT 0"), "{out}");
    // 2. SIGTERM: the invoke in flight is answered, exit 0, nothing left.
    assert!(out.contains("SIGTERM_EXIT 0"), "{out}");
    assert!(out.contains("INFLIGHT_EXIT 0"), "{out}");
    assert!(
        out.contains("AFTER_STOP vmms [] cgroups 0 run_dir 0"),
        "{out}"
    );
    // 3. A full disk: clear errors, never a 202; warm invokes go on.
    assert!(out.contains("WARM0_EXIT 0"), "{out}");
    assert!(out.contains("FULL_EVENT_EXIT 1"), "{out}");
    let refusal = section(out, "FULL_EVENT_EXIT", "FULL_WARM_EXIT");
    assert!(
        refusal.contains("ServiceException") && refusal.contains("database or disk is full"),
        "the refusal names the cause:\n{out}"
    );
    assert!(!refusal.contains("accepted, request id"), "{out}");
    assert!(out.contains("FULL_WARM_EXIT 0"), "{out}");
    assert!(out.contains("FULL_CREATE_EXIT 1"), "{out}");
    assert!(
        section(out, "FULL_CREATE_EXIT", "FREED_EVENT_ACCEPTED").contains("No space left"),
        "{out}"
    );
    assert!(out.contains("FREED_EVENT_ACCEPTED 1"), "{out}");
    assert!(out.contains("FULL_DAEMON_EXIT 0"), "{out}");
}
