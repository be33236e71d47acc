"""A trial's system metrics, sampled in its own process by MLflow's CPU and GPU monitors (no run, no store:
the trial reports the means with its epoch's metrics), and which GPUs ``CUDA_VISIBLE_DEVICES`` gives it.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any

__all__ = ["SYSTEM_PREFIX", "SystemSampler", "visible_gpus"]

SYSTEM_PREFIX = "system/"  # MLflow's: the UI's "System metrics" section shows these keys


def visible_gpus(value: str | None) -> list[int | str] | None:
    """The GPUs ``CUDA_VISIBLE_DEVICES`` (``value``) shows a process, in its order: NVML indices, or UUIDs
    (``GPU-...``, ``MIG-...``); None when it is unset (every GPU). As CUDA reads it: up to the first entry that
    is neither (or a negative index)."""
    if value is None:
        return None
    found: list[int | str] = []
    for entry in (part.strip() for part in value.split(",")):
        if entry.startswith(("GPU-", "MIG-")):
            found.append(entry)
            continue
        try:
            index = int(entry)
        except ValueError:
            break
        if index < 0:
            break
        found.append(index)
    return found


def _nvml_handles(visible: list[int | str] | None) -> list[Any]:
    """NVML's handles of ``visible`` (``visible_gpus``); every GPU's for None. CUDA machines only."""
    import pynvml

    if visible is None:
        return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    return [pynvml.nvmlDeviceGetHandleByUUID(v) if isinstance(v, str) else pynvml.nvmlDeviceGetHandleByIndex(v)
            for v in visible]


class SystemSampler:
    """A trial's system metrics, sampled by MLflow's own monitors in the trial's process (the Ray worker): CPU
    utilisation and the node's memory, and each of the trial's GPUs (``gpu_0`` its first) where NVML answers. A
    thread samples every ``interval_s`` (``$MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` if set); ``epoch()`` takes
    one more sample and returns the epoch's means as ``system/<name>``, which the trial reports with its epoch's
    metrics and the driver logs to its run (step = epoch). MLflow's SystemMetricsMonitor would log from the worker
    itself, which needs the store within the worker's reach (on a cluster it may not be) and the run's id before
    training."""

    def __init__(self, gpu: bool = False, interval_s: float = 1.0) -> None:
        from mlflow.environment_variables import MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL
        from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor

        self.monitors = [CPUMonitor()]
        if gpu:
            from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

            with contextlib.suppress(Exception):  # no pynvml or no driver: no GPU metrics, the rest as usual
                monitor = GPUMonitor()
                # NVML sees every GPU of the node, whatever CUDA_VISIBLE_DEVICES says: keep the trial's own, in
                # its order, so gpu_0 is the trial's cuda:0 (as torch numbers it), not the node's first GPU
                monitor.gpu_handles = _nvml_handles(visible_gpus(os.environ.get("CUDA_VISIBLE_DEVICES")))
                self.monitors.append(monitor)
        self.interval_s = MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL.get() or interval_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        with self._lock:
            for monitor in self.monitors:
                with contextlib.suppress(Exception):  # a monitor's failure never fails the trial
                    monitor.collect_metrics()

    def start(self) -> SystemSampler:
        import psutil

        psutil.cpu_percent()  # CPU utilisation is measured from one call to the next: the first sets the start
        self._thread = threading.Thread(target=self._loop, name="system-metrics", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def epoch(self) -> dict[str, float]:
        """The means since the last call, as ``system/<name>``; the samples start again."""
        self._sample()
        with self._lock:
            metrics = {}
            for monitor in self.monitors:
                metrics.update(monitor.aggregate_metrics())
                monitor.clear_metrics()
        return {SYSTEM_PREFIX + key: value for key, value in metrics.items()}

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

