"""benchmarks/gpu_check.py: one line and exit 0 without CUDA; below that check, the same driver run on the CPU, so
that its first run on a GPU is not its first run at all."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402


@pytest.mark.slow  # the whole script in a fresh process: torch and the benchmarks' imports, about 10 s
def test_without_cuda_it_says_so_in_one_line_and_exits_0():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")], capture_output=True,
                            text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [gpu_check.NO_CUDA]


@pytest.mark.slow
def test_the_driver_runs_every_figure_on_the_cpu(ray_runtime):
    figures = gpu_check.run("cpu", gpu_check.QUICK, tests=True)
    names = [f.name for f in figures]
    assert names[0] == "gpu tests (tests/test_gpu.py)" and figures[0].value == "13 skipped"  # no CUDA here
    assert [n.split(" ")[0] for n in names[1:4]] == ["(a)", "(b)", "(c)"]
    assert names[4:7] == [f"allocator / exact count, freeze_stop {k}" for k in (0, 3, 6)]
    assert names[7].startswith("resnet18 32 px") and names[8].startswith("resnet18 32 px")
    precision = names[9:23]  # per depth: bf16-mixed / 32 epoch time and memory, 2 models; channels_last on resnet18
    assert [n.split(" ")[0] for n in precision] == ["resnet18"] * 6 + ["resnet18"] * 2 + ["vit"] * 6
    assert sum(n.endswith("channels_last on / off") for n in precision) == 2
    assert names[23] == "trials per GPU-hour, freeze-aware / one GPU each" and len(figures) == 24
    for figure in figures[1:]:
        assert math.isfinite(float(figure.value)) and float(figure.value) > 0, figure
    # on the CPU both sides of the allocator comparison are the exact count: the same configuration, compared
    assert [f.value for f in figures[4:7]] == ["1.000"] * 3
    assert float(figures[3].value) < 0.5  # the backbone frozen holds less than half the memory (benchmark (c))
    # bf16-mixed's memory on the CPU is the exact count of what it holds: bfloat16 activations, and the bfloat16
    # copies of the weights autocast saves for backward (at 32 px those outweigh the halved activations)
    assert sum(f.name.endswith("memory") for f in figures[9:23]) == 6
    print(gpu_check.table(figures))
