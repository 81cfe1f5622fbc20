"""What several benchmark scripts share: the machine's description and a load-average sampler.

The scripts run as ``python benchmarks/bench_*.py``, so this folder is on ``sys.path`` and they import it by name.
"""

from __future__ import annotations

import os
import platform
import statistics
import threading
from pathlib import Path


def machine_info() -> dict[str, object]:
    """nproc, the CPU model and the RAM in GB (None where /proc does not say)."""
    cpu, ram_gb = platform.processor() or platform.machine(), None
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), cpu)
        meminfo = Path("/proc/meminfo").read_text().split()
        ram_gb = round(int(meminfo[meminfo.index("MemTotal:") + 1]) / 2**20, 1)
    except (OSError, ValueError):
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "ram_gb": ram_gb}


class LoadSampler:
    """The 1-minute load average every ``every`` seconds, from ``start`` (or ``with``) to ``stop``."""

    def __init__(self, every: float = 15.0) -> None:
        self.every = every
        self.samples: list[float] = [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append(os.getloadavg()[0])

    def start(self) -> LoadSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def summary(self) -> dict[str, float]:
        """min, mean and max of the samples."""
        return {
            "min": round(min(self.samples), 2),
            "mean": round(statistics.mean(self.samples), 2),
            "max": round(max(self.samples), 2),
        }
