#!/bin/sh
# Soak: `silo serve` under mixed load for $SOAK_SECONDS (default 1800), its
# resources sampled every $SOAK_EVERY seconds (default 10) as JSON lines in
# soak.jsonl, then $SOAK_SETTLE seconds (default 90) without load (idle VMs
# reaped after idle_timeout_s = 30), sampled too; with
# SOAK_SETTLE_UNTIL_BASELINE=1 the settling ends early (after 40 s at
# least) once VM cgroups, jail uids and run directory entries are back to
# their baseline (sampled before the load, once the pool is full). Prints a
# summary JSON (baseline, first sample after warm-up, last under load, last
# after settling) as SOAK_SUMMARY {...}; exit 0.
#
# Needs: root, /dev/kvm (hardware KVM, or run inside the KVM test host:
# `cargo test --release --test soak -- --ignored --nocapture`), `silo` on
# PATH, and in the working directory `vmlinux`, `agent`, `counter` (the
# counter function's binary). Load, all at once:
#   - warm invokes of $SOAK_TENANTS (20) tenants, one after another;
#   - a new tenant every $SOAK_NEW_EVERY (3) s (a cold start each, reaped
#     when idle);
#   - an Event every second (of those tenants): durable queue and workers;
#   - pool takes: function `pooled` keeps 2 pre-booted VMs ([pools]), a
#     new tenant takes one every 10 s;
#   - a code update of `counter` every 120 s (every VM of it replaced).
# Sampled: the daemon's RSS (KiB), open fds, threads; VM cgroups under
# /sys/fs/cgroup/silo; distinct jail uids in use (processes with uid >=
# 10^9); run directory entries; and the invoke latency p50/p99 (ms) of the
# warm loop over the last interval.
set -u
SECONDS_TOTAL=${SOAK_SECONDS:-1800}
EVERY=${SOAK_EVERY:-10}
SETTLE=${SOAK_SETTLE:-90}
PORT=${SOAK_PORT:-9430}
TENANTS=${SOAK_TENANTS:-20}
NEW_EVERY=${SOAK_NEW_EVERY:-3}
export AWS_ACCESS_KEY_ID=AKIDSOAK AWS_SECRET_ACCESS_KEY=soak-secret SILO_ENDPOINT=http://127.0.0.1:$PORT
cat > soak.toml <<CFG
run_dir = "/tmp/soak-run"
[pools]
pooled = 2
[limits]
idle_timeout_s = 30
[jail]
cpu_full_at_mib = 0
[[credentials]]
access_key_id = "AKIDSOAK"
secret_access_key = "soak-secret"
CFG
rm -rf soak-data soak.jsonl lat.txt
silo serve --config soak.toml --listen 127.0.0.1:$PORT --data-dir ./soak-data --kernel vmlinux --agent agent 2> soak-daemon.log &
daemon=$!
i=0; until wget -qO- http://127.0.0.1:$PORT/healthz >/dev/null 2>&1; do i=$((i+1)); [ $i -gt 600 ] && { echo NO_DAEMON; cat soak-daemon.log; exit 1; }; sleep 0.2; done
silo create-function --name counter --bootstrap counter --per-tenant --timeout 30 > /dev/null || exit 1
silo create-function --name pooled --bootstrap counter --per-tenant --timeout 30 > /dev/null || exit 1

sample() { # $1: phase
  rss=$(awk '/^VmRSS:/ { print $2 }' /proc/$daemon/status)
  threads=$(awk '/^Threads:/ { print $2 }' /proc/$daemon/status)
  fds=$(ls /proc/$daemon/fd | wc -l)
  cgroups=$(ls -d /sys/fs/cgroup/silo/vm-* 2>/dev/null | wc -l)
  uids=$(awk '/^Uid:/ { if ($2 >= 1000000000) print $2 }' /proc/[0-9]*/status 2>/dev/null | sort -u | wc -l)
  rundirs=$(ls /tmp/soak-run 2>/dev/null | wc -l)
  lat=$(sort -n lat.txt 2>/dev/null | awk '{ a[NR] = $1 } END { if (NR) printf "%d,%d,%d", a[int((NR + 1) / 2)], a[int(NR * 0.99) > 0 ? int(NR * 0.99) : 1], NR; else printf "0,0,0" }')
  : > lat.txt
  echo "{\"t\":$(($(date +%s) - start)),\"phase\":\"$1\",\"rss_kib\":$rss,\"fds\":$fds,\"threads\":$threads,\"vm_cgroups\":$cgroups,\"jail_uids\":$uids,\"run_dir_entries\":$rundirs,\"warm_p50_ms\":${lat%%,*},\"warm_p99_ms\":$(echo $lat | cut -d, -f2),\"warm_invokes\":${lat##*,}}" >> soak.jsonl
}
# (busybox date has no %N: the uptime clock, in 10 ms steps)
now_ms() { awk '{ printf "%d", $1 * 1000 }' /proc/uptime; }

start=$(date +%s)
# The baseline: before any load, the pool of `pooled` full (or 120 s).
i=0; while [ "$(ls -d /sys/fs/cgroup/silo/vm-* 2>/dev/null | wc -l)" -lt 2 ] && [ $i -lt 120 ]; do i=$((i+1)); sleep 1; done
sleep 2
sample base
start=$(date +%s)
end=$((start + SECONDS_TOTAL))
touch soak.running
( n=0; while [ -f soak.running ]; do t=$((n % TENANTS)); a=$(now_ms); silo invoke --name counter --tenant "warm-$t" > /dev/null 2>&1 && echo $(( $(now_ms) - a )) >> lat.txt; n=$((n+1)); done ) &
( n=0; while [ -f soak.running ]; do silo invoke --name counter --tenant "new-$n" > /dev/null 2>&1; n=$((n+1)); sleep $NEW_EVERY; done ) &
( n=0; while [ -f soak.running ]; do silo invoke --name counter --tenant "warm-$((n % TENANTS))" --type Event --payload '{}' > /dev/null 2>&1; n=$((n+1)); sleep 1; done ) &
( n=0; while [ -f soak.running ]; do silo invoke --name pooled --tenant "pool-$n" > /dev/null 2>&1; n=$((n+1)); sleep 10; done ) &
( while [ -f soak.running ]; do sleep 120; [ -f soak.running ] && silo update-function-code --name counter --bootstrap counter > /dev/null 2>&1; done ) &
while [ $(date +%s) -lt $end ]; do sleep $EVERY; sample load; done
rm -f soak.running
wait_end=$(( $(date +%s) + SETTLE ))
settle_start=$(date +%s)
base=$(grep '"phase":"base"' soak.jsonl)
field() { echo "$1" | sed -n "s/.*\"$2\":\([0-9]*\).*/\1/p"; }
while [ $(date +%s) -lt $wait_end ]; do
  sleep $EVERY; sample settle
  if [ "${SOAK_SETTLE_UNTIL_BASELINE:-0}" = 1 ] && [ $(( $(date +%s) - settle_start )) -ge 40 ]; then
    now=$(tail -1 soak.jsonl); back=1
    for k in vm_cgroups jail_uids run_dir_entries; do [ "$(field "$now" $k)" -le "$(field "$base" $k)" ] || back=0; done
    [ $back = 1 ] && break
  fi
done
kill -TERM $daemon; wait $daemon; echo "SOAK_DAEMON_EXIT $?"
sample_after="{\"vm_cgroups\":$(ls -d /sys/fs/cgroup/silo/vm-* 2>/dev/null | wc -l),\"run_dir_entries\":$(ls /tmp/soak-run 2>/dev/null | wc -l)}"
echo SOAK_JSONL_BEGIN; cat soak.jsonl; echo SOAK_JSONL_END
first=$(grep '"phase":"load"' soak.jsonl | sed -n 3p)
last=$(grep '"phase":"load"' soak.jsonl | tail -1)
settled=$(tail -1 soak.jsonl)
echo "SOAK_SUMMARY {\"baseline\":$base,\"after_warmup\":$first,\"end_of_load\":$last,\"settled\":$settled,\"after_stop\":$sample_after}"
