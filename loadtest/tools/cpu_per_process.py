#!/usr/bin/env python3
"""Runs a loadtest command and prints the CPU time (user + system) each of its
processes used: jetsched-loadtest, nats-server and each `jetsched <service>`
(sampled from /proc/<pid>/stat every 200 ms until the command ends; the last
sample of each process counts). docs/BENCHMARKS.md divides these by the runs.

    loadtest/tools/cpu_per_process.py target/release/jetsched-loadtest e2e --external --runs 40000 --paced-runs 200
"""
import os
import subprocess
import sys
import time

NAMES = ("jetsched", "nats-server", "jetsched-loadtest")


def main() -> None:
    child = subprocess.Popen(sys.argv[1:])
    hz = os.sysconf("SC_CLK_TCK")
    last = {}
    while child.poll() is None:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
                name = os.path.basename(cmd[0].decode())
                if name not in NAMES:
                    continue
                stat = open(f"/proc/{pid}/stat").read()
                fields = stat[stat.rfind(")") + 2 :].split()
                seconds = (int(fields[11]) + int(fields[12])) / hz
                role = f"{name} {cmd[1].decode()}" if name == "jetsched" and len(cmd) > 1 else name
                last[pid] = (role, seconds)
            except (OSError, ValueError, IndexError):
                pass
        time.sleep(0.2)
    for pid, (role, seconds) in sorted(last.items()):
        print(f"{pid:>8}  {role:<24} {seconds:.2f} s CPU")
    sys.exit(child.returncode)


if __name__ == "__main__":
    main()
