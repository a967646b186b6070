#!/usr/bin/env bash
# Where appends wait (issue 16's acks=1 stalls): builds release, starts a fresh single-node
# `sluice dev`, produces acks=1 at full load for SECS seconds under `perf sched record -g`,
# then prints, for the server threads that write segment files, the kernel stacks they
# blocked in (total and longest wait: syncs run on the same threads, so fdatasync's waits
# show there too) and every wait over 30 ms inside an append's pwritev. Found with it: ext4's
# block allocation behind writeback (`ext4_da_get_block_prep`) and the on-disk size update
# (`ext4_da_write_end`), which segment files made ahead a whole segment long
# (`storage.preallocate`) removed. Needs perf (Debian: linux-perf) and root.
# Usage: scripts/append-waits.sh [SECS] [extra `sluice bench produce` flags]   (default 12)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-12}"
shift || true
command -v perf >/dev/null || { echo "append-waits: perf is not installed (apt-get install linux-perf)" >&2; exit 2; }
source scripts/bench-dev.sh
$S bench produce --topic append-waits-warmup --records 100000 --acks 1 >/dev/null 2>&1
out="$bench_dir/sched.data"
perf sched record -g -p "$bench_dev" -o "$out" >/dev/null 2>&1 &
rec=$!
sleep 1
$S bench produce --topic append-waits --duration "$secs" --acks 1 "$@" 2>/dev/null | tail -2
kill -INT $rec; wait $rec 2>/dev/null || true
echo "slow appends logged (> 50 ms): $(grep -c 'slow append' "$bench_dir/dev.log" || true)"
perf sched timehist -i "$out" -g --state 2>/dev/null | python3 -c '
import collections, sys
rows = []
for line in sys.stdin:
    p = line.split()
    if len(p) < 8 or not p[0][0].isdigit():
        continue
    try:
        wait, sch = float(p[3]), float(p[4])
    except ValueError:
        continue
    rows.append((p[0], p[2], wait + sch, p[6], " ".join(p[7:])))
# A line is a switch-out with the stack it slept in; its wait is on the next line of the thread.
writers = {r[1] for r in rows if "writev" in r[4]}
last, total, count, longest, slow = {}, collections.Counter(), collections.Counter(), collections.Counter(), []
for t, task, waited, state, stack in rows:
    if task in last and task in writers:
        st, where = last[task]
        if st == "D":
            key = where[:140]
            total[key] += waited
            count[key] += 1
            longest[key] = max(longest[key], waited)
        if waited > 30 and any(f in where for f in ("writev", "perform_write", "write_begin", "block_prep")):
            slow.append(f"{t} {task} {waited:.1f} ms in {where[:140]}")
    last[task] = (state, stack)
print("blocked (D) waits of the writing threads: total ms, count, longest ms, stack")
for key, v in total.most_common(8):
    print(f"{v:8.0f} {count[key]:6d} {longest[key]:7.1f}  {key}")
print(f"waits over 30 ms inside an append (pwritev): {len(slow)}")
for s in slow[:20]:
    print(" ", s)
'
