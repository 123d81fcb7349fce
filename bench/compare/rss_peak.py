#!/usr/bin/env python3
"""Peak memory of a process and its descendants, sampled until SIGTERM.

    rss_peak.py PID INTERVAL_S OUTFILE

Every INTERVAL_S seconds it adds up VmRSS of PID and all its descendants (found through
/proc/PID/task/*/children); every tenth time also their Pss (smaps_rollup, dearer to read).
On SIGTERM, or when PID is gone, it writes "PEAK_RSS_KB PEAK_PSS_KB" to OUTFILE. Summed RSS
counts pages shared between processes (libraries, Postfix's shared text) once per process:
an upper bound of the memory really used. PSS shares each such page out among the processes
that map it, so the sum is what the processes together really occupy.

Also imported by bench/hostile.py (tree_rss, tree_pss).
"""
import os
import signal
import sys
import time


def children(pid):
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    out.extend(int(c) for c in f.read().split())
            except OSError:
                pass
    except OSError:
        pass
    return out


def field_kb(path, name):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(name):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def tree(root):
    # A set: with a thousand and more processes (one Postfix smtpd per client) a list's
    # membership test made every sample quadratic.
    seen, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo.extend(children(pid))
    return seen


def tree_rss(root):
    return sum(field_kb(f"/proc/{p}/status", "VmRSS:") for p in tree(root))


def tree_pss(root):
    return sum(field_kb(f"/proc/{p}/smaps_rollup", "Pss:") for p in tree(root))


def main():
    root, interval, outfile = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    peak = peak_pss = 0
    tick = 0
    stop = False

    def on_term(_sig, _frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    while not stop and os.path.exists(f"/proc/{root}"):
        peak = max(peak, tree_rss(root))
        if tick % 10 == 0:
            peak_pss = max(peak_pss, tree_pss(root))
        tick += 1
        time.sleep(interval)
    peak = max(peak, tree_rss(root))
    peak_pss = max(peak_pss, tree_pss(root))
    with open(outfile, "w") as f:
        f.write(f"{peak} {peak_pss}\n")


if __name__ == "__main__":
    main()
