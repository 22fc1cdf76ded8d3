"""torch's intra-op thread count for a process that runs a model: ``runtime.threads``.

Chosen once, where a command starts (the CLI's run config, ``perceive serve``), before the model
runs: torch applies :func:`torch.set_num_threads` to each thread that computes (the server's
model thread included) the first time that thread runs an op.

The default leaves one usable core free. OpenMP workers spin-wait at every barrier, so when a
process asks for more threads than the cores actually free (other processes, or the server's own
event loop decoding requests), a descheduled worker stalls the others while they burn the CPU it
needs: ``perceive ask`` went from 0.14 s to 3.9 s that way. One thread fewer than the cores costs
at most that core's share on an idle machine; one too many cost 2-30x on a busy one
(docs/performance.md#threads has the figures).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from perceive.errors import ConfigError

#: the most ``runtime.threads`` may ask for (more than the hardware threads of any current machine)
MAX_THREADS = 1024

#: cgroup v2 and v1 CPU quota files (a container's ``--cpus``)
CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1 = Path("/sys/fs/cgroup/cpu")


class ThreadSource(str, Enum):
    """Where the thread count came from."""

    CONFIG = "runtime.threads"
    ENV = "OMP_NUM_THREADS"
    DEFAULT = "default"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ThreadChoice:
    """``threads`` for torch's intra-op pool; ``source``: who chose it; ``usable``: the cores this
    process may use (affinity, capped by a cgroup CPU quota)."""

    threads: int
    source: ThreadSource
    usable: int

    def describe(self) -> str:
        """e.g. ``1 intra-op thread (default: 2 usable cores, one left free)``."""
        n = f"{self.threads} intra-op thread{'s' if self.threads != 1 else ''}"
        if self.source is ThreadSource.DEFAULT:
            cores = f"{self.usable} usable core{'s' if self.usable != 1 else ''}"
            return f"{n} (default: {cores}{', one left free' if self.usable > 1 else ''})"
        return f"{n} ({self.source})"


def cgroup_cpu_limit(v2: Path = CGROUP_V2, v1: Path = CGROUP_V1) -> int | None:
    """The CPUs a cgroup quota allows this process (rounded up), or ``None`` without a quota.
    Reads the v2 ``cpu.max`` (``"200000 100000"``, ``"max 100000"``) or the v1 quota and period."""
    try:
        quota, period = v2.read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota, period = (v1 / "cpu.cfs_quota_us").read_text(), (v1 / "cpu.cfs_period_us").read_text()
        except OSError:
            return None
    try:
        q, p = int(quota), int(period)
    except ValueError:  # "max": no quota
        return None
    return max(1, math.ceil(q / p)) if q > 0 and p > 0 else None


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (``taskset``, a container's cpuset),
    capped by a cgroup CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity API (macOS, Windows)
        n = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return max(1, min(n, limit) if limit else n)


def choose_threads(requested: int | None, env: Mapping[str, str] | None = None,
                   usable: int | None = None) -> ThreadChoice:
    """The thread count: ``requested`` (``runtime.threads``), else an ``OMP_NUM_THREADS`` the user
    set, else one fewer than the usable cores (at least 1). An ``OMP_NUM_THREADS`` that is not a
    positive whole number is a :class:`ConfigError` (OpenMP itself would ignore it)."""
    usable = usable_cores() if usable is None else usable
    if requested is not None:
        return ThreadChoice(requested, ThreadSource.CONFIG, usable)
    env = os.environ if env is None else env
    raw = env.get("OMP_NUM_THREADS", "").strip()
    if raw:
        first = raw.split(",")[0].strip()  # "4,2": OpenMP's nested levels; the first is ours
        if not first.isdigit() or not 1 <= int(first) <= MAX_THREADS:
            raise ConfigError(f"OMP_NUM_THREADS={raw!r} is not a whole number of threads from 1 to {MAX_THREADS}",
                              hint="unset it (perceive then leaves one core free), or set runtime.threads "
                                   "(--set runtime.threads=N)")
        return ThreadChoice(int(first), ThreadSource.ENV, usable)
    return ThreadChoice(max(1, usable - 1), ThreadSource.DEFAULT, usable)


def set_torch_threads(requested: int | None, env: Mapping[str, str] | None = None) -> ThreadChoice:
    """Choose the thread count (:func:`choose_threads`) and give it to torch. Call it before the
    model runs: a thread that already ran an op keeps the count it started with."""
    import torch

    choice = choose_threads(requested, env)
    if torch.get_num_threads() != choice.threads:
        torch.set_num_threads(choice.threads)
    return choice
