"""The first minutes on a GPU: the gpu tests, then what a GPU can tell, as one table of ratios.

    python benchmarks/gpu_check.py                        # on a machine with CUDA: about 3-5 minutes on one GPU
    python benchmarks/gpu_check.py --device cpu --quick   # the same driver on the CPU, smaller (what its test runs)

On a machine without CUDA (and without --device cpu) it says so in one line and exits 0. It installs nothing and
needs only the project's environment. What it runs, in this one process and one run (ratios measured side by
side; absolute seconds on a shared machine mean little):
- tests/test_gpu.py (``pytest -m gpu``): the trial on CUDA against the CPU, the allocator against the exact count,
  frozen weights bit-identical, four trials at 0.25 GPU on one device, the yolo task with AMP;
- (a) the digits CNN's epoch speed-up with blocks 0-4 frozen (phi about 0.75) against the FLOP bound 1/R, and
  (b) with the frozen-prefix cache over E epochs against 1/R_c (docs/benchmarks.md's definitions);
- (c) its training memory with the backbone frozen against freezing nothing (the allocator's peak on a GPU);
- the allocator's peak against the exact count of what training holds (+ the data the trial keeps on the
  device), at freeze_stop 0, 3 and 6;
- a small timm model (resnet18, 224 px) with all but its head frozen: speed-up against 1/R, memory ratio;
- per freeze depth (none, half, all but the head) on timm resnet18 and vit_tiny at 224 px: epoch time and the
  allocator's peak in bf16-mixed against 32 (train.precision), and resnet18's with channels_last on against off;
- a small search of the default task with freeze-aware GPU shares against one GPU per trial: trials per GPU-hour.
The figures other than the precision rows are float32 in the default layout (train.precision 32, channels_last
off), as the earlier rows were designed. Every figure is unmeasured on a GPU until this has run on one
(docs/benchmarks.md, "GPU check").
"""

from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from tune.settings.config import TrainConfig  # noqa: E402
from tune.tasks import image  # noqa: E402
from tune.tasks.digits import make_task  # noqa: E402
from tune.training.train import LoopTrial  # noqa: E402

NO_CUDA = ("gpu_check: no CUDA device here (torch.cuda.is_available() is False): every row (the gpu tests, (a)-(c), "
           "the allocator, resnet18, bf16-mixed against 32, channels_last, the search) unmeasured here; exit 0")


@dataclass(frozen=True)
class Figure:
    name: str
    value: str
    means: str


@dataclass(frozen=True)
class Sizes:
    labels_per_class: int = 100  # digits: 1,000 training images
    epochs: int = 5
    repeats: int = 2
    image_size: int = 224
    images_per_class: int = 10  # the image folder: 100 training images
    trials: int = 8


QUICK = Sizes(labels_per_class=10, epochs=2, repeats=1, image_size=32, images_per_class=2, trials=4)


def _trial(task, device: str, **keys) -> tuple[LoopTrial, list[dict]]:
    trial = LoopTrial(task, TrainConfig(**{"batch_size": 64, "lr": 1e-3, "prefix_cache": "off", "precision": "32",
                                           "channels_last": False, **keys, "device": device}))
    return trial, list(trial.epochs())


def _epoch_time(task, device: str, repeats: int, **keys) -> tuple[float, float, float]:
    """Mean epoch training seconds (the minimum over ``repeats``), epoch 1's peak memory (MB), phi."""
    runs = [_trial(task, device, **keys) for _ in range(repeats)]
    seconds = min(statistics.fmean(m["epoch_time_s"] for m in epochs) for _, epochs in runs)
    trial, epochs = runs[0]
    return seconds, epochs[0]["peak_mem_mb"], trial.summary.frozen_flops_share


def digits_figures(device: str, sizes: Sizes) -> list[Figure]:
    task = make_task(labels_per_class=sizes.labels_per_class, val_size=100, test_size=0)
    _trial(task, device, epochs=1)  # warm-up: kernels, allocator, cuDNN's choices
    epochs, repeats = sizes.epochs, sizes.repeats
    t0, m0, _ = _epoch_time(task, device, repeats, epochs=epochs, freeze_stop=0)
    t5, _, phi = _epoch_time(task, device, repeats, epochs=epochs, freeze_stop=5)
    t5_cached, _, _ = _epoch_time(task, device, repeats, epochs=epochs, freeze_stop=5, prefix_cache="auto")
    _, m6, _ = _epoch_time(task, device, 1, epochs=1, freeze_stop=6)
    bound, bound_cached = 1 / (1 - 2 * phi / 3), 1 / ((1 - phi) + phi / (3 * epochs))
    figures = [
        Figure(f"(a) digits speed-up at phi {phi:.2f} / 1/R", f"{t0 / t5 / bound:.2f}",
               f"{t0 / t5:.2f}x against the FLOP bound {bound:.2f}x (target >= 0.90)"),
        Figure(f"(b) cached speed-up over {epochs} epochs / 1/R_c", f"{t0 / t5_cached / bound_cached:.2f}",
               f"{t0 / t5_cached:.2f}x against {bound_cached:.2f}x (target >= 0.80)"),
        Figure("(c) memory, backbone frozen / nothing frozen", f"{m6 / m0:.2f}",
               f"{m6:.1f} MB against {m0:.1f} MB (target <= 0.50)"),
    ]
    for k in (0, 3, 6):  # the allocator against the exact count (the CPU's) + what the trial keeps on the device
        trial, [on_device] = _trial(task, device, epochs=1, freeze_stop=k)
        _, [exact] = _trial(task, "cpu", epochs=1, freeze_stop=k)
        held = 0
        if on_device["mem_source"] == "cuda":
            inputs, targets = trial.train_set
            held = sum(t.numel() * t.element_size() for split in (trial.train_set, trial.val_set) for t in split)
            held += inputs[:64].numel() * inputs.element_size() + targets[:64].numel() * targets.element_size()
        expected = exact["peak_mem_mb"] + held / 2**20
        figures.append(Figure(f"allocator / exact count, freeze_stop {k}", f"{on_device['peak_mem_mb'] / expected:.3f}",
                              f"{on_device['mem_source']} {on_device['peak_mem_mb']:.2f} MB against "
                              f"{expected:.2f} MB (tests/test_gpu.py asks within 5 %)"))
    return figures


def image_figures(device: str, sizes: Sizes, scratch: Path) -> list[Figure]:
    folder = image.write_example(scratch / "digits", per_class=sizes.images_per_class, val_per_class=2,
                                 size=sizes.image_size)
    task = image.make_task(model="resnet18", data=str(folder), image_size=sizes.image_size, augment=False,
                           workers=0)
    head = task.build_model().n_blocks - 1
    _trial(task, device, epochs=1, batch_size=32)  # warm-up
    keys = {"epochs": 2, "batch_size": 32, "optimizer": "adamw"}
    t0, m0, _ = _epoch_time(task, device, sizes.repeats, freeze_stop=0, **keys)
    tk, mk, phi = _epoch_time(task, device, sizes.repeats, freeze_stop=head, **keys)
    bound = 1 / (1 - 2 * phi / 3)
    return [
        Figure(f"resnet18 {sizes.image_size} px all but head: speed-up / 1/R", f"{t0 / tk / bound:.2f}",
               f"{t0 / tk:.2f}x against {bound:.2f}x (phi {phi:.3f})"),
        Figure(f"resnet18 {sizes.image_size} px all but head: memory / none", f"{mk / m0:.2f}",
               f"{mk:.0f} MB against {m0:.0f} MB"),
    ]


def precision_figures(device: str, sizes: Sizes, scratch: Path) -> list[Figure]:
    """Per freeze depth on timm resnet18 and vit_tiny: bf16-mixed against 32 (epoch time, the allocator's peak; on
    the CPU the exact count), and resnet18's channels_last on against off (in the precision auto picks)."""
    folder = image.write_example(scratch / "precision", per_class=sizes.images_per_class, val_per_class=2,
                                 size=sizes.image_size)
    keys = {"epochs": 2, "batch_size": 32, "optimizer": "adamw"}
    figures = []
    for model in ("resnet18", "vit_tiny_patch16_224"):
        task = image.make_task(model=model, data=str(folder), image_size=sizes.image_size, augment=False,
                               workers=0)
        head = task.build_model().n_blocks - 1
        _trial(task, device, epochs=1, batch_size=32)  # warm-up
        for depth in (0, head // 2, head):
            t32, m32, _ = _epoch_time(task, device, sizes.repeats, freeze_stop=depth, **keys)
            t16, m16, _ = _epoch_time(task, device, sizes.repeats, freeze_stop=depth, precision="bf16-mixed", **keys)
            name = f"{model.split('_')[0]} {sizes.image_size} px freeze_stop {depth}: bf16-mixed / 32"
            figures += [Figure(f"{name}, epoch time", f"{t16 / t32:.2f}", f"{t16:.3f} s against {t32:.3f} s"),
                        Figure(f"{name}, memory", f"{m16 / m32:.2f}", f"{m16:.1f} MB against {m32:.1f} MB")]
        if model == "resnet18":
            precision = "bf16-mixed" if device == "cuda" else "32"
            for depth in (0, head):
                t_off, _, _ = _epoch_time(task, device, sizes.repeats, freeze_stop=depth, precision=precision, **keys)
                t_on, _, _ = _epoch_time(task, device, sizes.repeats, freeze_stop=depth, precision=precision,
                                         channels_last=True, **keys)
                figures.append(Figure(f"resnet18 {sizes.image_size} px freeze_stop {depth}: channels_last on / off",
                                      f"{t_on / t_off:.2f}", f"{t_on:.3f} s against {t_off:.3f} s ({precision})"))
    return figures


def search_figures(device: str, sizes: Sizes, scratch: Path) -> list[Figure]:
    """Trials per GPU-hour of the same small search, with freeze-aware shares and with one GPU per trial."""
    import ray

    import run_search

    if not ray.is_initialized():  # a Ray of its own that sees every GPU of this machine
        ray.init(num_gpus=torch.cuda.device_count() if device == "cuda" else 1, include_dashboard=False,
                 log_to_driver=False, logging_level="WARNING")
    gpus = ray.cluster_resources().get("GPU", 0.0)
    rates = {}
    for name, aware in (("one GPU per trial", "false"), ("freeze-aware shares", "true")):
        folder = scratch / name.replace(" ", "-")
        folder.mkdir()
        started = time.perf_counter()
        with open(folder / "search.log", "w") as log, contextlib.redirect_stdout(log):  # the table alone
                code = run_search.main(["--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}", "--storage-path",
                                    str(folder / "ray"), "--report-dir", str(folder / "reports"), "--confirm", "0",
                                    "--set", f"search.num_samples={sizes.trials}", "--set", "search.scheduler=fifo",
                                    "--set", "search.gpus_per_trial=1", "--set", f"search.freeze_aware_gpus={aware}",
                                    "--set", "search.cpus_per_trial=1", "--set", "train.epochs=2",
                                    "--set", f"train.device={device}"])
        if code != 0:
            raise SystemExit(f"gpu_check: the search with {name} failed (exit {code}): "
                             + (folder / "search.log").read_text()[-2000:])
        rates[name] = sizes.trials / ((time.perf_counter() - started) / 3600 * gpus)
    ratio = rates["freeze-aware shares"] / rates["one GPU per trial"]
    return [Figure("trials per GPU-hour, freeze-aware / one GPU each", f"{ratio:.2f}",
                   f"{rates['freeze-aware shares']:.0f} against {rates['one GPU per trial']:.0f} "
                   f"({sizes.trials} trials, {gpus:g} GPU{'s' * (gpus != 1)})")]


def test_figures() -> list[Figure]:
    """``pytest -m gpu`` in a subprocess (its own Ray, the real device), summed up by pytest's last line."""
    result = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                             str(ROOT / "tests" / "test_gpu.py")], cwd=ROOT, capture_output=True, text=True)
    summary = (result.stdout.strip().splitlines() or ["no output"])[-1].strip("= ")
    counts = ", ".join(re.findall(r"\d+ (?:passed|failed|skipped|errors?)", summary)) or summary
    if result.returncode != 0:
        means = f"exit {result.returncode}: `python -m pytest -m gpu -ra` shows why"
    elif "passed" not in counts:
        means = "every one skipped: pytest saw no CUDA device"
    else:
        means = "skipped ones name their reason: `python -m pytest -m gpu -ra`" if "skipped" in counts else "all passed"
    return [Figure("gpu tests (tests/test_gpu.py)", counts, means)]


def run(device: str, sizes: Sizes = Sizes(), tests: bool = True) -> list[Figure]:
    figures = test_figures() if tests else []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        figures += digits_figures(device, sizes)
        figures += image_figures(device, sizes, Path(scratch))
        figures += precision_figures(device, sizes, Path(scratch))
        figures += search_figures(device, sizes, Path(scratch))
    return figures


def table(figures: list[Figure]) -> str:
    width = max(len(f.name) for f in figures)
    lines = [f"{'figure':<{width}}  {'ratio':>12}  what it compares"]
    lines += [f"{f.name:<{width}}  {f.value:>12}  {f.means}" for f in figures]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (the CPU run of the driver's test)")
    parser.add_argument("--no-tests", action="store_true", help="skip tests/test_gpu.py")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    started = time.perf_counter()
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU"
    print(f"gpu_check on {name}, torch {torch.__version__}", flush=True)
    sizes = QUICK if args.quick else Sizes()
    print(table(run(args.device, sizes, tests=not args.no_tests)))
    print(f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
