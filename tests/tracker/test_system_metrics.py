"""A trial's system metrics (tune.tracker.system_metrics): CUDA_VISIBLE_DEVICES read as CUDA reads it, and a trial's GPU
metrics from its own devices, not the node's (NVML stands in: no GPU here)."""

from __future__ import annotations

import sys

import pytest


@pytest.mark.parametrize(("value", "expected"), [
    (None, None), ("", []), ("2", [2]), ("3,1", [3, 1]), (" 1 , 0", [1, 0]), ("0,-1,1", [0]), ("1,foo,2", [1]),
    ("GPU-8f2e,1", ["GPU-8f2e", 1]), ("MIG-4a1b", ["MIG-4a1b"]),
])
def test_cuda_visible_devices_are_read_as_cuda_reads_them(value, expected):
    from tune.tracker.system_metrics import visible_gpus

    assert visible_gpus(value) == expected



def test_a_trials_gpu_metrics_are_its_own_devices_not_the_nodes(monkeypatch):
    """NVML lists every GPU of the node; a trial that Ray gave physical GPUs 2 and 0 reports those two, as gpu_0 and
    gpu_1 (torch's cuda:0 and cuda:1 in that process). NVML stands in here: this machine has no GPU."""
    import types

    import mlflow.system_metrics.metrics.gpu_monitor as gpu_monitor

    from tune.tracker.system_metrics import SystemSampler

    used_mb = {0: 100.0, 1: 200.0, 2: 300.0, 3: 400.0}  # each physical GPU's memory in use tells them apart

    class NVMLError(Exception):
        pass

    fake = types.SimpleNamespace(
        NVMLError=NVMLError, nvmlInit=lambda: None, nvmlDeviceGetCount=lambda: 4,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetHandleByUUID=lambda uuid: {"GPU-aa": 0, "GPU-cc": 2}[uuid],
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=used_mb[h] * 1e6, total=1e12),
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=10 * h),
        nvmlDeviceGetPowerUsage=lambda h: 1000.0 * h, nvmlDeviceGetEnforcedPowerLimit=lambda h: 100000.0)
    monkeypatch.setattr(gpu_monitor, "pynvml", fake, raising=False)
    monkeypatch.setitem(sys.modules, "pynvml", fake)

    def gpu_memory(visible: str | None) -> dict[str, float]:
        if visible is None:
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        else:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        found = SystemSampler(gpu=True).epoch()
        return {k: v for k, v in found.items() if k.endswith("_memory_usage_megabytes") and "gpu" in k}

    assert gpu_memory("2,0") == {"system/gpu_0_memory_usage_megabytes": 300.0,
                                 "system/gpu_1_memory_usage_megabytes": 100.0}
    assert gpu_memory("GPU-cc") == {"system/gpu_0_memory_usage_megabytes": 300.0}
    assert len(gpu_memory(None)) == 4  # no CUDA_VISIBLE_DEVICES: the process sees every GPU, and so does the trial
