#!/usr/bin/env python3
"""Whether this disk stalls writers the way Sluice's acks=1 appends stall (issue 16).

Appends 256 KiB blocks in turn to 8 files (Sluice's 8 partitions at full load) for SECS
seconds while a second thread fdatasyncs every file each 0.5 s (the store's checkpoint),
one file at a time or all side by side (--parallel, as the store does), into files that
grow with each write or were preallocated to 1 GiB (--prealloc). Prints MB/s and the
write latency percentiles. Usage:
    scripts/disk-stalls.py DIR [--secs 15] [--parallel] [--prealloc]
DIR is created and its files removed afterwards; it needs about SECS x 0.6 GB free.
"""
import argparse
import os
import shutil
import threading
import time

SEGMENT = 1 << 30
FILES = 8


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--secs", type=float, default=15)
    ap.add_argument("--parallel", action="store_true")
    ap.add_argument("--prealloc", action="store_true")
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    block = os.urandom(256 << 10)
    fds = []
    for i in range(FILES):
        fd = os.open(os.path.join(a.dir, f"seg{i}"), os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        if a.prealloc:
            os.posix_fallocate(fd, 0, SEGMENT)
        fds.append(fd)
    done = threading.Event()

    def checkpoint():
        while not done.wait(0.5):
            if a.parallel:
                ts = [threading.Thread(target=os.fdatasync, args=(fd,)) for fd in fds]
                for t in ts:
                    t.start()
                for t in ts:
                    t.join()
            else:
                for fd in fds:
                    os.fdatasync(fd)

    syncer = threading.Thread(target=checkpoint)
    syncer.start()
    pos, lat, written, i = [0] * FILES, [], 0, 0
    end = time.monotonic() + a.secs
    try:
        while time.monotonic() < end:
            k = i % FILES
            i += 1
            if pos[k] + len(block) > SEGMENT:
                pos[k] = 0
            t0 = time.perf_counter()
            os.pwrite(fds[k], block, pos[k])
            lat.append(time.perf_counter() - t0)
            pos[k] += len(block)
            written += len(block)
    finally:
        done.set()
        syncer.join()
        for fd in fds:
            os.close(fd)
        shutil.rmtree(a.dir, ignore_errors=True)
    lat.sort()

    def q(p):
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000

    slow = sum(1 for x in lat if x > 0.05)
    print(
        f"parallel={a.parallel} prealloc={a.prealloc}: {written / a.secs / 1e6:.0f} MB/s, {len(lat)} writes, "
        f"p50 {q(0.5):.2f} p99 {q(0.99):.2f} p99.9 {q(0.999):.2f} max {lat[-1] * 1000:.1f} ms, {slow} over 50 ms"
    )


if __name__ == "__main__":
    main()
