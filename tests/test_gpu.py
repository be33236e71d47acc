"""What a CUDA device can tell: tests skipped, each with its reason, on a machine without one (this project's CI).

None of these has run yet: no GPU has been lent to this project. ``python benchmarks/gpu_check.py`` runs them first
on a machine with one (``python -m pytest -m gpu`` alone, too). Each takes under a minute on one GPU. They opt out of
conftest's CPU-only fixture by their marker; their Ray is their own, with the real device visible.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from conftest import most_open_at_once, parent_and_children

from tune.settings.config import TrainConfig
from tune.tasks.digits import make_task
from tune.training.train import LoopTrial

NO_CUDA = "needs a CUDA device: torch.cuda.is_available() is False on this machine"
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)]
ROOT = Path(__file__).resolve().parents[1]
# float32 and the default layout unless a test says otherwise (auto would train in bf16-mixed on a CUDA device)
CONFIG = TrainConfig(epochs=3, batch_size=32, lr=1e-3, seed=0, prefix_cache="off", precision="32",
                     channels_last=False)


@pytest.fixture(autouse=True)
def deterministic_kernels():
    """cuDNN's deterministic algorithms, no autotuning: the same run twice gives the same numbers."""
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def _epochs(cfg: TrainConfig, device: str) -> tuple[LoopTrial, list[dict]]:
    trial = LoopTrial(make_task(labels_per_class=10, val_size=200), TrainConfig(**{**cfg.__dict__, "device": device}))
    return trial, list(trial.epochs())


def test_a_trial_on_cuda_reports_what_it_reports_on_the_cpu():
    # Tolerance: float32 sums in another order (cuDNN's kernels against oneDNN's) drift by about 1e-6 per step;
    # over 3 epochs of 4 steps the losses stay within 1e-3 relative, and a score within 2 of 200 images.
    _, cpu = _epochs(TrainConfig(**{**CONFIG.__dict__, "freeze_stop": 2}), "cpu")
    _, cuda = _epochs(TrainConfig(**{**CONFIG.__dict__, "freeze_stop": 2}), "cuda")
    assert [m["mem_source"] for m in cuda] == ["cuda"] * 3
    for on_cpu, on_cuda in zip(cpu, cuda, strict=True):
        assert on_cuda["train_loss"] == pytest.approx(on_cpu["train_loss"], rel=1e-3)
        assert on_cuda["val_loss"] == pytest.approx(on_cpu["val_loss"], rel=1e-3)
        assert on_cuda["score"] == pytest.approx(on_cpu["score"], abs=2 / 200)


@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
@pytest.mark.parametrize("freeze_stop", [0, 3, 6])
def test_the_allocators_peak_is_the_exact_count_of_what_training_holds(freeze_stop, precision):
    """``peak_mem_mb`` with ``mem_source=cuda`` (torch.cuda.max_memory_allocated over the epoch) against the
    exact count of the same configuration on the CPU (``mem_source=model``), within 5 %.

    Accounted for: the CUDA context (hundreds of MB) is outside the caching allocator, so max_memory_allocated never
    includes it; the tensor trial keeps its training and validation tensors on the device (the count leaves data
    out), so their bytes and one batch's are added to the count; the allocator rounds each block up to 512 bytes,
    under 1 KB per tensor (a few dozen tensors here) and left in the 5 %, as are the transient gradient buffers of
    backward and cuDNN's workspace (deterministic algorithms, no autotuning). In bf16-mixed both sides count the
    activations in bfloat16 (the CPU runs the same autocast)."""
    cfg = TrainConfig(**{**CONFIG.__dict__, "epochs": 1, "batch_size": 64, "freeze_stop": freeze_stop,
                         "precision": precision})
    _, [exact] = _epochs(cfg, "cpu")
    trial, [allocated] = _epochs(cfg, "cuda")
    assert exact["mem_source"] == "model" and allocated["mem_source"] == "cuda"
    held = sum(t.numel() * t.element_size() for split in (trial.train_set, trial.val_set) for t in split)
    inputs, targets = trial.train_set
    batch = (inputs[:64].numel() * inputs.element_size() + targets[:64].numel() * targets.element_size())
    expected = exact["peak_mem_mb"] + (held + batch) / 2**20
    assert allocated["peak_mem_mb"] == pytest.approx(expected, rel=0.05), (allocated["peak_mem_mb"], expected)


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_on_cuda_trains_close_to_float32_and_auto_picks_it(precision):
    """Lightning's two mixed precisions on CUDA: the training loss within 5 % of float32's over 3 epochs from the same
    seed (bfloat16 has 8 bits of mantissa, float16 10 with a GradScaler), the trial tagged with it; ``auto`` gives
    bf16-mixed where the device computes bfloat16 natively, 16-mixed where it does not."""
    from tune.training import precision as numerics

    cfg = TrainConfig(**{**CONFIG.__dict__, "freeze_stop": 2})
    _, full = _epochs(cfg, "cuda")
    trial, mixed = _epochs(TrainConfig(**{**cfg.__dict__, "precision": precision}), "cuda")
    assert (trial.scaler is not None) == (precision == "16-mixed")
    for a, b in zip(full, mixed, strict=True):
        assert b["precision"] == precision and b["train_loss"] == pytest.approx(a["train_loss"], rel=0.05)
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    assert numerics.resolve("auto", torch.device("cuda")) == ("bf16-mixed" if native else "16-mixed")


def test_channels_last_is_on_by_default_for_a_cnn_on_cuda_and_changes_no_number():
    cfg = TrainConfig(**{**CONFIG.__dict__, "freeze_stop": 2})
    _, plain = _epochs(cfg, "cuda")
    trial, nhwc = _epochs(TrainConfig(**{**cfg.__dict__, "channels_last": "auto"}), "cuda")
    assert trial.channels_last and nhwc[0]["channels_last"] == "on"
    for a, b in zip(plain, nhwc, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)


def test_frozen_parameters_and_batchnorm_statistics_stay_bit_identical_on_the_gpu():
    cfg = TrainConfig(**{**CONFIG.__dict__, "freeze_stop": 3, "device": "cuda"})
    trial = LoopTrial(make_task(labels_per_class=10, val_size=200), cfg)
    frozen = list(trial.model.blocks[:3])
    before = [{k: v.detach().cpu().clone() for k, v in block.state_dict().items()} for block in frozen]
    trainable = {k: v.detach().cpu().clone() for k, v in trial.model.blocks[3].state_dict().items()}
    list(trial.epochs())
    for block, saved in zip(frozen, before, strict=True):  # weights and running_mean / running_var / batch count
        assert all(torch.equal(v.cpu(), saved[k]) for k, v in block.state_dict().items())
    assert not all(torch.equal(v.cpu(), trainable[k]) for k, v in trial.model.blocks[3].state_dict().items())


@pytest.fixture
def gpu_ray():
    """A Ray of its own that sees the real GPU (conftest's session Ray hides it from its workers)."""
    import ray

    ray.shutdown()
    os.environ.pop("RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES", None)
    ray.init(num_cpus=max(4, os.cpu_count() or 1), num_gpus=1, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING")
    yield
    ray.shutdown()


def test_four_trials_at_a_quarter_gpu_share_one_device_at_once(gpu_ray, tmp_path):
    import run_search

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = run_search.main(["--tracking-uri", uri, "--storage-path", str(tmp_path / "ray"), "--report-dir",
                            str(tmp_path / "reports"), "--confirm", "0", "--set", "search.num_samples=4",
                            "--set", "search.scheduler=fifo", "--set", "search.gpus_per_trial=0.25",
                            "--set", "search.cpus_per_trial=1", "--set", "train.epochs=3",
                            "--set", "train.device=cuda"])
    assert code == 0
    _, children = parent_and_children(uri, "digits_freeze")
    assert len(children) == 4 and most_open_at_once(children) == 4
    for child in children:
        assert child.data.tags["trial_gpus"] == "0.25" and child.data.tags["mem_source"] == "cuda"
        assert "gpu_util_pct" in child.data.metrics  # NVML answered in each worker
        assert any(key.startswith("system/gpu_0_") for key in child.data.metrics)  # MLflow's GPU monitor too


def test_the_yolo_task_trains_an_epoch_with_amp_and_fails_a_halved_batch_as_documented(tmp_path):
    pytest.importorskip("ultralytics", reason="needs the yolo extra")
    from types import SimpleNamespace

    from tune.tasks import yolo, yolo_trial
    from tune.tasks.shapes import make_detection_data
    from tune.training.train import make_trial

    data = make_detection_data(tmp_path / "shapes", n_train=16, n_val=8)
    task = yolo.make_task(data=str(data), model="yolov5nu.yaml", imgsz=64, workers=0)
    trial = make_trial(task, TrainConfig(epochs=1, batch_size=8, optimizer="sgd", lr=0.01, device="cuda"))
    seen: list[dict] = []
    trial.run(seen.append)
    [epoch] = seen
    assert epoch["mem_source"] == "cuda" and epoch["peak_mem_mb"] > 0
    assert trial.trainer.amp is True  # on CUDA, off only on the GPUs Ultralytics' own check turns it off for
    # Ultralytics halves the batch and restarts the epoch after a CUDA OOM: the trial fails there instead
    reporter = yolo_trial._EpochReporter(trial, SimpleNamespace(add_callback=lambda *a: None), lambda m: None)
    reporter.on_train_epoch_start(SimpleNamespace(batch_size=8, epoch=0))
    with pytest.raises(RuntimeError, match=r"^out of memory at epoch 1: Ultralytics retried with batch 4 instead of 8"):
        reporter.on_train_epoch_start(SimpleNamespace(batch_size=4, epoch=0))
