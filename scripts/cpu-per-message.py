#!/usr/bin/env python3
"""CPU time per message of each component of a `simctl run`, read from /proc.

Usage: scripts/cpu-per-message.py SIMCTL CONFIG SECONDS

Runs `SIMCTL run --config CONFIG --duration SECONDS`. Each time simctl prints a progress line
(every 5 s: `... received N ...`), it reads utime+stime of every process below simctl
(nats-server, coordinator, agent, producers, workers, and simctl itself) from
/proc/<pid>/stat. Between the first progress line after 5 s (start-up over) and the last one
before the end (the drain not begun), it prints, per component, the CPU it used as a share of
one core and in microseconds per message processed in that window.

Why outside the harness: it measures the harness too (the agent, the coordinator), and a
process's own accounting of itself would miss what the kernel charges it. Linux's /proc
counts in USER_HZ ticks (100 per second on every architecture we run on): 10 ms resolution,
so the window must hold many seconds of work.
"""

import os
import re
import subprocess
import sys
import time

TICK_S = 1 / 100
PROGRESS = re.compile(r"running\s+(\d+)s/\d+s\s+sent \d+\s+received (\d+)")


def children_of():
    """pid -> parent pid, for every process now."""
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry)] = int(fields[1])
    return parents


def component(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return None
    if not argv:
        return None
    name = os.path.basename(argv[0])
    if name == "agent" and len(argv) > 2 and argv[1] == "child":
        return argv[2]  # producer / worker
    return name  # simctl, coordinator, agent, nats-server


def cpu_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def sample(root):
    """component -> ticks, summed over the live processes below (and including) root."""
    parents = children_of()
    below = {root}
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in below and pid not in below:
                below.add(pid)
                grew = True
    totals = {}
    for pid in below:
        name, ticks = component(pid), cpu_ticks(pid)
        if name is not None and ticks is not None:
            totals[name] = totals.get(name, 0) + ticks
    return totals


def main():
    simctl, config, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    run = subprocess.Popen(
        [simctl, "run", "--config", config, "--duration", f"{seconds}s", "--seed", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    points = []  # (run seconds, received, wall time, {component: ticks})
    for line in run.stderr:
        match = PROGRESS.search(line)
        if match:
            at, received = int(match.group(1)), int(match.group(2))
            points.append((at, received, time.monotonic(), sample(run.pid)))
    code = run.wait()
    window = [p for p in points if 5 <= p[0] < seconds]
    if len(window) < 2:
        sys.exit(f"too few progress lines inside the run ({len(points)}); exit {code}")
    (at0, received0, wall0, cpu0), (at1, received1, wall1, cpu1) = window[0], window[-1]
    messages, wall = received1 - received0, wall1 - wall0
    print(
        f"cpu per message: {at0}s..{at1}s of the run, {messages} messages, "
        f"{messages / wall:.0f} msg/s, simctl exit {code}"
    )
    order = ["nats-server", "producer", "worker", "agent", "coordinator", "simctl"]
    total = 0.0
    for name in order + sorted(set(cpu1) - set(order)):
        if name not in cpu1:
            continue
        seconds_used = (cpu1[name] - cpu0.get(name, 0)) * TICK_S
        total += seconds_used
        print(
            f"  {name:12} {100 * seconds_used / wall:6.1f} % of a core  "
            f"{1e6 * seconds_used / max(messages, 1):7.1f} µs/message"
        )
    print(
        f"  {'all':12} {100 * total / wall:6.1f} % of a core  "
        f"{1e6 * total / max(messages, 1):7.1f} µs/message"
    )


if __name__ == "__main__":
    main()
