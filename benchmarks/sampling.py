"""What the benchmarks read of running processes from /proc: CPU seconds, peak resident sets,
and the machine's busy cores sampled while a sync runs."""

from __future__ import annotations

import os
import resource
import threading
import time
from pathlib import Path
from typing import Self

from harness.local_servers import LocalServer, _pid


def vm_hwm_kb(pid: int) -> int:
    """A live process's peak resident set so far (VmHWM, KB); 0 once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next(
        (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0
    )


def peak_rss_mb(pid: int) -> dict[str, int]:
    """The peak resident set (VmHWM) of each live process in `pid`'s process group, in MB."""
    peaks: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pid:
                continue
            command = (
                (entry / "cmdline")
                .read_bytes()
                .replace(b"\0", b" ")
                .decode(errors="replace")
                .strip()
            )
        except (OSError, ProcessLookupError):
            continue
        peaks[f"{entry.name} {command[:60]}"] = round(vm_hwm_kb(int(entry.name)) / 1024)
    return peaks


def server_peaks(servers: list[LocalServer]) -> dict[str, int]:
    """Each server's largest process (the uvicorn worker that answers), by server name."""
    peaks = {}
    for server in servers:
        pid = _pid(server)
        if pid is not None:
            peaks[f"mlflow server {server.name}"] = max(peak_rss_mb(pid).values(), default=0)
    return peaks


def own_cpu() -> float:
    """CPU time (user and system) this process has used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _processes() -> dict[int, list[str]]:
    """Every live process's /proc/<pid>/stat fields after its name: [1] ppid, [2] process group,
    [11] utime, [12] stime, [13] cutime, [14] cstime (in clock ticks)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            found[int(entry.name)] = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
    return found


def cpu_seconds(servers: list[LocalServer]) -> float:
    """CPU time (user and system) the servers' processes have used so far."""
    groups = {str(pid) for server in servers if (pid := _pid(server)) is not None}
    ticks = sum(
        int(fields[11]) + int(fields[12]) for fields in _processes().values() if fields[2] in groups
    )
    return ticks / os.sysconf("SC_CLK_TCK")


def postgres_cpu(data: Path) -> float:
    """CPU time the PostgreSQL server of cluster `data` has used so far: the postmaster, the
    backends it has reaped (cutime, cstime) and those still alive."""
    try:
        postmaster = int((data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    ticks = 0
    for pid, fields in _processes().items():
        if pid == postmaster:
            ticks += sum(int(v) for v in fields[11:15])
        elif int(fields[1]) == postmaster:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


class BusySampler:
    """Once a second while a sync runs: the marketplace server's CPU (cores) and the whole
    machine's busy cores (/proc/stat). It shows which phase of a sync waits on the marketplace
    registry (its one worker busy, the machine's other cores idle) and which fills the machine."""

    SATURATED = 0.8  # of a core: the marketplace server's one worker is answering back to back

    def __init__(self, market: LocalServer, interval: float = 1.0):
        self.market, self.interval = market, interval
        # Several workers saturate at that much of each core they can have.
        self.saturated = self.SATURATED * min(market.workers, os.cpu_count() or 1)
        # (marketplace server cores, machine busy cores)
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _machine_busy_seconds() -> float:
        with open("/proc/stat") as handle:
            fields = [int(v) for v in handle.readline().split()[1:]]
        # all but idle and iowait
        return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")

    def _run(self) -> None:
        market, machine, at = (
            cpu_seconds([self.market]),
            self._machine_busy_seconds(),
            time.perf_counter(),
        )
        while not self._stop.wait(self.interval):
            now_market, now_machine, now = (
                cpu_seconds([self.market]),
                self._machine_busy_seconds(),
                time.perf_counter(),
            )
            span = now - at
            self.samples.append(((now_market - market) / span, (now_machine - machine) / span))
            market, machine, at = now_market, now_machine, now

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        """The share of the sync's seconds with the marketplace server saturated, and the
        machine's busy cores then and on average."""
        if not self.samples:
            return {
                "marketplace_saturated_share": "",
                "busy_cores_while_saturated": "",
                "busy_cores": "",
            }
        saturated = [machine for market, machine in self.samples if market >= self.saturated]
        return {
            "marketplace_saturated_share": round(len(saturated) / len(self.samples), 2),
            "busy_cores_while_saturated": round(sum(saturated) / len(saturated), 2)
            if saturated
            else "",
            "busy_cores": round(sum(machine for _, machine in self.samples) / len(self.samples), 2),
        }
