"""How much of the machine other processes used while a case was timed (Linux; elsewhere unknown).

The kernel counts, in ``/proc/stat``, the time every core spent busy (steal included: a virtual
machine's cores taken by its host), and, in ``/proc/self/stat``, the time this process's threads
ran. Busy time that is not this process's, over the wall time between two readings, is the number
of cores other work held meanwhile: 0 on an idle machine, up to the core count on a saturated one.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

#: Fields of the ``cpu`` line of /proc/stat counted as busy: user, nice, system, irq, softirq, steal
#: (idle and iowait are not; guest time is already inside user).
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)


@dataclass(frozen=True)
class CpuReading:
    """Busy ticks of the whole machine and of this process, at a wall-clock time."""

    machine_ticks: int
    own_ticks: int
    seconds: float


def read_cpu_use() -> CpuReading | None:
    """A reading now, or None where /proc is not there (not Linux) or cannot be read."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = stat.readline().split()
        with open("/proc/self/stat", encoding="ascii") as own:
            # The process name (field 2) is in parentheses and may hold spaces: count from after it.
            after_name = own.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if not fields or fields[0] != "cpu":
        return None
    machine = sum(int(fields[1 + i]) for i in _BUSY_FIELDS if 1 + i < len(fields))
    own = int(after_name[11]) + int(after_name[12])  # utime and stime: fields 14 and 15 of the line
    return CpuReading(machine, own, time.perf_counter())


def others_cores(before: CpuReading | None, after: CpuReading | None) -> float | None:
    """Cores' worth of busy time other processes took between two readings (None when unknown or too short).

    The counters tick 100 times a second (``SC_CLK_TCK``), so a stretch shorter than 0.2 s is
    too coarse to say (one tick either way would be a tenth of a core or more).
    """
    if before is None or after is None:
        return None
    wall = after.seconds - before.seconds
    if wall < 0.2:
        return None
    ticks_per_second = os.sysconf("SC_CLK_TCK")
    others = (after.machine_ticks - before.machine_ticks) - (after.own_ticks - before.own_ticks)
    return max(0.0, others / ticks_per_second / wall)
