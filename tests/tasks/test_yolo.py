"""The yolo task (Ultralytics): YOLOv5's freeze rule, frozen weights, resume, a smoke search of the guide's space.

Needs the yolo extra (in the README's environment: torch==2.14.1 torchvision==0.29.1 -e ".[all,test]"); .ci/run
runs ``-m yolo`` with the slow tests. Data: a synthetic detection set made by the tests.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("ultralytics", reason="needs the yolo extra: pip install torch==2.14.1 torchvision==0.29.1 "
                                          "-e '.[all,test]' (the README's environment)")

from conftest import first_epoch  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

import run_search  # noqa: E402
from tune.settings.config import TrainConfig  # noqa: E402
from tune.tasks.shapes import make_detection_data  # noqa: E402
from tune.tasks.yolo import make_task  # noqa: E402
from tune.training import freeze  # noqa: E402
from tune.training.train import make_trial  # noqa: E402
from tune.training.trial import load_checkpoint, save_checkpoint  # noqa: E402

pytestmark = pytest.mark.yolo
ROOT = Path(__file__).resolve().parents[2]
TINY = TrainConfig(epochs=1, batch_size=8, optimizer="sgd", lr=0.01, device="cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_detection_data(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="module")
def task(data):
    return make_task(data=str(data), model="yolov5nu.yaml", imgsz=64, workers=0)


def _run(trial) -> list[dict]:
    seen: list[dict] = []
    trial.run(seen.append)
    return seen


@pytest.mark.parametrize("n", [0, 10, 24])
def test_frozen_blocks_follow_yolov5s_name_rule(task, n):
    block_model = task.build_model()
    assert block_model.named_cut_points() == {"none": 0, "backbone": 10, "all_but_head": 24}
    frozen = freeze.FrozenModel(block_model, freeze.resolve(block_model, freeze=n))
    # YOLOv5 train.py: freeze = [f"model.{x}." for x in range(n)]; frozen if any of them is in the name
    rule = [f"model.{x}." for x in range(n)]
    by_rule = {name for name, _ in block_model.module.named_parameters() if any(x in name for x in rule)}
    ours = {name for name, p in block_model.module.named_parameters()
            if not p.requires_grad and ".dfl" not in name}  # Detect's DFL conv is fixed in every YOLOv8-style head
    assert ours == by_rule
    assert (n == 0) == (not ours)
    assert frozen.summary.frozen_params == sum(p.numel() for name, p in block_model.module.named_parameters()
                                               if name in by_rule)


def test_training_leaves_frozen_blocks_and_their_bn_statistics_untouched(task):
    trial = make_trial(task, TrainConfig(**{**TINY.__dict__, "freeze": "backbone"}))
    model = trial.frozen.module
    before = {k: v.clone() for k, v in model.state_dict().items()}
    metrics = _run(trial)
    assert [m["epoch"] for m in metrics] == [1]
    after = model.state_dict()
    frozen = [k for k in before if k.split(".")[1].isdigit() and int(k.split(".")[1]) < 10]
    trained = [k for k in before if k.startswith("model.24.") and k.endswith("weight") and ".dfl" not in k]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)  # weights and BN running stats
    assert any(not torch.equal(before[k], after[k]) for k in trained)
    optimised = {id(p) for group in trial.trainer.optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in model.parameters() if p.requires_grad}
    m = metrics[0]
    assert m["freeze_stop"] == 10 and m["trainable_params"] == sum(p.numel() for p in model.parameters()
                                                                   if p.requires_grad)
    import math

    for key in ("mAP50", "mAP50-95", "precision", "recall", "box_loss", "cls_loss", "dfl_loss", "val_box_loss",
                "val_cls_loss", "val_dfl_loss", "samples_per_s"):
        assert math.isfinite(m[key]), key
    assert m["score"] == m["mAP50-95"] and m["epoch_time_s"] > 0 and m["peak_mem_mb"] > 0


def test_frozen_bn_train_lets_frozen_statistics_drift_as_yolov5_does(task):
    trial = make_trial(task, TrainConfig(**{**TINY.__dict__, "freeze": 10, "frozen_bn": "train"}))
    model = trial.frozen.module
    mean = model.model[0].bn.running_mean.clone()
    weight = model.model[0].conv.weight.clone()
    _run(trial)
    assert not torch.equal(mean, model.model[0].bn.running_mean)
    assert torch.equal(weight, model.model[0].conv.weight)


def test_memory_falls_with_depth(task):
    memory = {n: _run(make_trial(task, TrainConfig(**{**TINY.__dict__, "freeze": n})))[0]["peak_mem_mb"]
              for n in (0, 10, 24)}
    assert memory[0] > memory[10] > memory[24]


def test_the_memory_measurement_gives_epoch_1s_peak_after_one_optimizer_step(task, monkeypatch):
    from tune.tasks import yolo_trial

    batches: list[int] = []
    start = yolo_trial._EpochReporter.on_train_batch_start
    monkeypatch.setattr(yolo_trial._EpochReporter, "on_train_batch_start",
                        lambda self, trainer: (batches.append(1), start(self, trainer))[1])
    for n in (0, 10):
        # 2 epochs: Ultralytics warms up over the first (one optimizer step per batch), and a 1-epoch run has no
        # warmup: it accumulates gradients over the whole tiny epoch before its first step
        cfg = TrainConfig(**{**TINY.__dict__, "epochs": 2, "freeze": n})
        batches.clear()
        probe = make_trial(task, cfg)
        probed = probe.measure_memory()
        assert probe.trainer.optimizer_steps == 1 and len(batches) == 1 < len(probe.trainer.train_loader)
        assert probed == first_epoch(make_trial(task, cfg))["peak_mem_mb"]


def test_a_trial_resumes_from_its_checkpoint(task, tmp_path, monkeypatch):
    cfg = TrainConfig(**{**TINY.__dict__, "epochs": 2, "freeze": 10})
    first = make_trial(task, cfg)

    def stop_after_one(metrics: dict) -> None:
        save_checkpoint(first, tmp_path)
        raise KeyboardInterrupt  # the worker dies after epoch 1's checkpoint

    with pytest.raises(KeyboardInterrupt):
        first.run(stop_after_one)
    saved = load_checkpoint(tmp_path)
    assert saved["epoch"] == 1 and saved["ema_updates"] > 0
    assert saved["stopper"] == {"best_fitness": saved["best_fitness"], "best_epoch": 1}  # a fresh stopper: None, 0
    restored: dict = {}
    from tune.tasks import yolo_trial

    check = yolo_trial._EpochReporter.on_pretrain_routine_end

    def capture(self, trainer):  # right after Ultralytics' resume_training, before epoch 2
        restored.update(start=trainer.start_epoch, updates=trainer.ema.updates,
                        model={k: v.clone() for k, v in trainer.model.state_dict().items()},
                        ema={k: v.clone() for k, v in trainer.ema.ema.state_dict().items()},
                        optimizer=trainer.optimizer.state_dict(), scaler=trainer.scaler.state_dict(),
                        stopper=(trainer.stopper.best_fitness, trainer.stopper.best_epoch))
        check(self, trainer)

    monkeypatch.setattr(yolo_trial._EpochReporter, "on_pretrain_routine_end", capture)
    resumed = make_trial(task, cfg)
    resumed.load_state_dict(saved)
    epochs: list[dict] = []
    resumed.run(epochs.append)
    assert [m["epoch"] for m in epochs] == [2]
    assert epochs[0]["train_time_s"] > epochs[0]["epoch_time_s"]  # epoch 1's time carried over
    assert restored["start"] == 1 and restored["updates"] == saved["ema_updates"]
    assert all(torch.equal(restored["model"][k], v) for k, v in saved["train_model"].items())
    # early stopping counts patience from epoch 1's fitness, not afresh; AMP's scale goes on (off on a CPU: empty)
    assert restored["stopper"] == (saved["stopper"]["best_fitness"], 1) and restored["scaler"] == saved["scaler"]
    assert all(torch.equal(restored["ema"][k], v) for k, v in saved["model"].items())
    momentum = [s["momentum_buffer"] for s in restored["optimizer"]["state"].values() if "momentum_buffer" in s]
    saved_momentum = [s["momentum_buffer"] for s in saved["optimizer"]["state"].values() if "momentum_buffer" in s]
    assert momentum and all(torch.equal(a, b) for a, b in zip(momentum, saved_momentum, strict=True))


def test_coco_weights_load_onto_a_data_set_with_other_classes(data, tmp_path):
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(3)
    coco = DetectionModel(cfg="yolov5nu.yaml", nc=80, verbose=False)  # as pretrained on COCO's 80 classes
    torch.save(coco.state_dict(), tmp_path / "coco.pt")
    block_model = make_task(data=str(data), imgsz=64, weights=str(tmp_path / "coco.pt"), workers=0).build_model()
    ours = block_model.module.state_dict()
    source = coco.state_dict()
    kept = [k for k in ours if source[k].shape == ours[k].shape]
    assert all(torch.equal(ours[k], source[k]) for k in kept)  # the backbone, the neck, box outputs: transferred
    assert all(k.startswith("model.24.cv3.") for k in ours if k not in kept)  # only the class outputs differ
    small = DetectionModel(cfg="yolov5su.yaml", nc=2, verbose=False)  # another architecture: refused
    torch.save(small.state_dict(), tmp_path / "v5s.pt")
    from tune.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^task.options.weights: got '.*v5s.pt' \(does not fit the model"):
        make_task(data=str(data), imgsz=64, weights=str(tmp_path / "v5s.pt"))


@pytest.mark.parametrize("layout", ["last.pt", "best.pt"])
def test_an_ultralytics_checkpoint_loads_as_saved_but_only_with_trust_weights(data, tmp_path, layout):
    """Ultralytics saves the model itself, pickled, in half precision: its EMA under "ema" in last.pt, under "model"
    in a stripped best.pt. No re-saving by hand, but a pickle runs code when loaded: only with trust_weights."""
    from ultralytics.nn.tasks import DetectionModel

    from tune.errors import ConfigError

    torch.manual_seed(4)
    ema = DetectionModel(cfg="yolov5nu.yaml", nc=2, verbose=False).half()
    checkpoint = {"epoch": 9, "model": None, "ema": ema} if layout == "last.pt" else {"epoch": -1, "model": ema}
    torch.save(checkpoint, tmp_path / layout)
    with pytest.raises(ConfigError, match=r"^task.options.weights: got '.*\.pt' \(UnpicklingError.*; allowed: .*"
                                          r"with task.options.trust_weights: true"):
        make_task(data=str(data), imgsz=64, weights=str(tmp_path / layout))
    ours = make_task(data=str(data), imgsz=64, weights=str(tmp_path / layout), trust_weights=True,
                     workers=0).build_model().module.state_dict()
    source = ema.float().state_dict()
    assert ours.keys() == source.keys() and all(torch.equal(ours[k], source[k]) for k in ours)
    with pytest.raises(ConfigError, match=r"^task.options.trust_weights: got 'yes'; allowed: true or false"):
        make_task(data=str(data), imgsz=64, weights=str(tmp_path / layout), trust_weights="yes")


def test_a_relative_dataset_path_never_runs_the_yamls_download(data, tmp_path):
    import shutil

    import yaml

    shutil.copytree(data.parent / "images", tmp_path / "ds" / "images")
    shutil.copytree(data.parent / "labels", tmp_path / "ds" / "labels")
    marker = tmp_path / "downloaded"
    spec = {"path": "ds", "train": "images/train", "val": "images/val", "names": {0: "square", 1: "circle"},
            "download": f"open({str(marker)!r}, 'w').close()"}  # Ultralytics would exec this text
    (tmp_path / "shapes.yaml").write_text(yaml.safe_dump(spec))
    task = make_task(data=str(tmp_path / "shapes.yaml"), imgsz=64, workers=0)
    assert len(_run(make_trial(task, TINY))) == 1
    assert not marker.exists()


def _search(tmp_path: Path, data: Path, *args: str) -> tuple[int, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = run_search.main([
        "--space", str(ROOT / "search_spaces" / "yolov5_freeze.yaml"), "--smoke-test", "--tracking-uri", uri,
        "--storage-path", str(tmp_path / "ray"), "--report-dir", str(tmp_path / "reports"),
        "--set", f"task.options.data={data}", "--set", "task.options.model=yolov5nu.yaml",
        "--set", "task.options.imgsz=64", "--set", "task.options.workers=0", "--set", "train.batch_size=8",
        "--set", "search.cpus_per_trial=1", *args])
    return code, uri


def test_smoke_search_of_the_guides_space_logs_nested_runs_with_map_time_and_memory(ray_runtime, tmp_path, data,
                                                                                     task):
    code, uri = _search(tmp_path, data)
    assert code == 0
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("yolov5_freeze")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED"
    # the grid: each of the guide's three freezes exactly once, on a (logical) GPU each
    assert sorted(c.data.params["freeze_range"] for c in children) == ["[0, 0)", "[0, 10)", "[0, 24)"]
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["trial_gpus"] == "1.0"
        for key in ("mAP50-95", "mAP50", "epoch_time_s", "peak_mem_mb", "samples_per_s", "box_loss"):
            history = client.get_metric_history(child.info.run_id, key)
            assert [h.step for h in history] == [1, 2], key
    # random weights, 2 epochs: every mAP is 0.0, and the report says so instead of recommending (the README's
    # first yolo run)
    text = next((tmp_path / "reports").rglob("report.txt")).read_text()
    assert "No recommendation: the scores cannot tell the trials apart (every trial scored 0.0000" in text
    parent = client.get_run(parent.info.run_id)
    assert "recommended_model_uri" not in parent.data.tags and "recommended_trial" not in parent.data.tags
    # had one been recommended: its checkpoint as the search logs it, loaded back from MLflow
    import mlflow.pytorch
    from ray.tune import Checkpoint

    from tune.driver.checks import StudyOptions
    from tune.driver.study import Study
    from tune.tracker.tracking import SearchTracker
    from tune.training.trial import CHECKPOINT_FILE

    folder = next((tmp_path / "ray").rglob(CHECKPOINT_FILE)).parent
    study = object.__new__(Study)  # the search's own model logging, without a search around it
    study.task, study.say = task, print
    study.options = StudyOptions(space_file=ROOT / "search_spaces" / "yolov5_freeze.yaml", smoke_test=True)
    study.tracker = SearchTracker(uri, "yolov5_freeze", parent_run_id=parent.info.run_id)
    study._log_recommended_model(SimpleNamespace(chosen=SimpleNamespace(name="t")),
                                 {"t": Checkpoint.from_directory(str(folder))})
    model = mlflow.pytorch.load_model(client.get_run(parent.info.run_id).data.tags["recommended_model_uri"])
    assert type(model).__name__ == "DetectionModel" and len(model.model) == 25  # the EMA weights it validated
    assert client.get_run(parent.info.run_id).data.tags["registered_model_uri"] == "models:/yolov5_freeze@smoke"


@pytest.mark.slow
def test_the_model_learns_the_synthetic_shapes_and_its_test_split_is_scored_as_its_epochs_were(tmp_path):
    from tune.tasks.yolo import score_split

    data = make_detection_data(tmp_path / "shapes", n_train=64, n_val=16, seed=1, n_test=16)
    task = make_task(data=str(data), model="yolov5nu.yaml", imgsz=64, workers=0, hyp={"mosaic": 0.0,
                                                                                      "warmup_epochs": 1.0})
    trial = make_trial(task, TrainConfig(epochs=25, batch_size=8, optimizer="sgd", lr=0.02, device="cpu"))
    metrics = _run(trial)
    first, last = metrics[0], metrics[-1]
    assert last["mAP50"] > first["mAP50"] + 0.05, [round(m["mAP50"], 3) for m in metrics]
    assert last["box_loss"] < first["box_loss"]
    # the checkpoint's weights (the EMA the last epoch validated), scored after the search as the test split is:
    # on the validation split, the scorer gives what the trial's own validation reported
    model = task.build_model().module
    model.load_state_dict(trial.state_dict()["model"])
    options = {"data": data, "data_raw": __import__("yaml").safe_load(data.read_text()), "imgsz": 64, "workers": 0}
    again = score_split(model, options, "val", torch.device("cpu"))
    for key in ("mAP50-95", "mAP50", "precision", "recall"):
        assert again[key] == pytest.approx(last[key], abs=1e-5), (key, again[key], last[key])  # trainer: 5 decimals
    tested = task.score_test(model, torch.device("cpu"))  # the yaml's test: split, which no epoch saw
    assert set(tested) == {"mAP50-95", "mAP50", "precision", "recall"} and 0 < tested["mAP50"] <= 1


def test_layers_lists_yolov5nu_with_its_backbone(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "run_search.py"), "layers", "--task", "yolo", "--model",
                             "yolov5nu.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    block_10 = next(i for i, line in enumerate(lines) if line.split()[:2] == ["10", "model.10"])
    assert "--- freeze: 10 (backbone)" in lines[block_10 - 1]  # the rule sits between blocks 9 and 10
    assert any("freeze: 24 (all_but_head)" in line for line in lines)
    assert any(line.split()[:3] == ["24", "model.24", "Detect"] for line in lines)
    assert "25 blocks, 2,654,816 parameters" in result.stdout  # yolov5nu at 80 classes, as Ultralytics builds it


def test_layers_of_the_guides_space_need_no_data(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "run_search.py"), "layers", "--space",
                             str(ROOT / "search_spaces" / "yolov5_freeze.yaml")], cwd=tmp_path, capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert "yolov5mu.yaml" in result.stdout and "--- freeze: 10 (backbone)" in result.stdout
    assert any(line.split()[:3] == ["24", "model.24", "Detect"] for line in result.stdout.splitlines())


@pytest.mark.parametrize(("options", "expected"), [
    ({"data": "missing.yaml"}, "error: task.options.data: got '"),
    ({"hyp": {"lr0": 0.1}}, "error: task.options.hyp.lr0: got 0.1 (set by the search's own key); allowed: train.lr"),
    ({"hyp": {"mosiac": 1.0}}, "error: task.options.hyp.mosiac: got 1.0 (unknown key)"),
    ({"model": "nope.yaml"}, "error: task.options.model: got 'nope.yaml'"),
    ({"hyp": {"mosaic": "abc"}}, "error: task.options.hyp.mosaic: got 'abc' ("),
    ({"hyp": {"single_cls": True}}, "error: task.options.hyp.single_cls: got True (it would change the model"),
    # train keys Ultralytics' trainer does not read, set or searched: refused with what to use instead
    ({"train": {"warmup": 0.1}}, "error: train.warmup: got 0.1; allowed: the key left out with the yolo task (its "
                                 "trainer does not read it; instead: task.options.hyp.warmup_epochs"),
    ({"train": {"lr_schedule": "linear"}}, "error: train.lr_schedule: got 'linear'; allowed: the key left out with "
                                           "the yolo task (its trainer does not read it; instead: "
                                           "task.options.hyp.lrf"),
    ({"space": {"warmup": {"type": "float", "low": 0.0, "high": 0.2}}},
     "error: space.warmup: got FloatRange(low=0.0, high=0.2"),
    ({"train": {"head_init": "zero"}}, "error: train.head_init: got 'zero'; allowed: the key left out with the yolo "
                                       "task (its trainer does not read it; instead: nothing (the Detect head is no "
                                       "classifier"),
    # written as its default value: refused all the same (no linear probe starts a Detect head)
    ({"train": {"head_init": "probe"}}, "error: train.head_init: got 'probe'; allowed: the key left out with the "
                                        "yolo task (its trainer does not read it; instead: nothing (the Detect head"),
    ({"train": {"unfreeze_epoch": 1}}, "error: train.unfreeze_epoch: got 1; allowed: the key left out with the yolo "
                                       "task (its trainer does not read it; instead: nothing (Ultralytics' trainer "
                                       "freezes once"),
])
def test_bad_yolo_options_exit_2_with_one_line(tmp_path, data, options, expected):
    import yaml

    space = tmp_path / "space.yaml"
    options = dict(options)
    sections = {key: options.pop(key) for key in ("train", "space") if key in options}
    space.write_text(yaml.safe_dump({"name": "bad", "task": {"name": "yolo", "options": {
        "data": str(data), "imgsz": 64, **options}}, **({"train": sections["train"]} if "train" in sections else {}),
        "space": {"freeze": {"type": "choice", "values": [0, 10]}, **sections.get("space", {})}}))
    result = subprocess.run([sys.executable, str(ROOT / "run_search.py"), "--space", str(space)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith(expected), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.yaml"]


def test_unsafe_weights_are_refused(tmp_path, data):
    from ultralytics.cfg import IterableSimpleNamespace

    evil = tmp_path / "evil.pt"
    torch.save({"model": IterableSimpleNamespace(a=1)}, evil)  # a pickled object: weights_only refuses it
    from tune.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^task.options.weights: got '.*evil.pt' \(UnpicklingError"):
        make_task(data=str(data), imgsz=64, weights=str(evil))


def test_ultralytics_hooks_are_replaced_only_while_a_trial_runs(task):
    import ultralytics.data.utils
    from ultralytics.engine import trainer as trainer_module
    from ultralytics.utils import callbacks

    from tune.tasks import yolo_offline


    originals = (callbacks.add_integration_callbacks, ultralytics.data.utils.check_font, trainer_module.check_amp)
    seen = []
    trial = make_trial(task, TrainConfig(**{**TINY.__dict__, "freeze": 10}))
    trial.run(lambda m: seen.append((trainer_module.check_amp, trial.trainer.amp)))
    assert seen == [(yolo_offline.amp_allowed, False)]  # a CPU trial trains without AMP, as Ultralytics' check says
    assert (callbacks.add_integration_callbacks, ultralytics.data.utils.check_font,
            trainer_module.check_amp) == originals
    assert not yolo_offline.amp_allowed(torch.nn.Linear(2, 2))


def test_a_batch_ultralytics_halved_after_an_oom_fails_the_trial_at_the_restart(task):
    from types import SimpleNamespace

    from tune.tasks import yolo_trial

    trial = make_trial(task, TrainConfig(**{**TINY.__dict__, "batch_size": 8}))
    reporter = yolo_trial._EpochReporter(trial, SimpleNamespace(add_callback=lambda *a: None), lambda m: None)
    reporter.on_train_epoch_start(SimpleNamespace(batch_size=8, epoch=0))  # as configured: the epoch starts
    with pytest.raises(RuntimeError, match=r"^out of memory at epoch 1: Ultralytics retried with batch 4 instead of 8"):
        reporter.on_train_epoch_start(SimpleNamespace(batch_size=4, epoch=0))  # the restart after halving
    assert reporter._timing is None  # the interrupted epoch's stopwatch was closed


def test_a_test_split_the_yaml_names_must_be_on_disk_and_an_empty_one_is_none(tmp_path, data):
    from tune.errors import ConfigError

    text = data.read_text()
    missing = tmp_path / "missing_test.yaml"
    missing.write_text(text.replace("val: images/val\n", "val: images/val\ntest: images/nowhere\n"))
    with pytest.raises(ConfigError, match=r"^task.options.data.test: got '.*images/nowhere' \(not on disk"):
        make_task(data=str(missing), imgsz=64, workers=0)
    empty = tmp_path / "empty_test.yaml"  # as many published yamls have it: `test:` with no value
    empty.write_text(text.replace("val: images/val\n", "val: images/val\ntest:\n"))
    assert make_task(data=str(empty), imgsz=64, workers=0).has_test is False
    assert make_task(data=str(data), imgsz=64, workers=0).has_test is False


def test_a_splits_digest_follows_its_labels_too(tmp_path):
    """Ultralytics reads the labels from the folder beside the images: a label edited (or a box added) is other
    data, and the train split's digest says so; the val split's stays."""
    from tune.tracker.datasets import describe

    data = make_detection_data(tmp_path / "shapes", n_train=4, n_val=2)
    before = {d.split: d for d in describe(make_task(data=str(data), imgsz=64, workers=0))}
    label = sorted((data.parent / "labels" / "train").iterdir())[0]
    label.write_text(label.read_text() + "0 0.5 0.5 0.1 0.1\n")
    after = {d.split: d for d in describe(make_task(data=str(data), imgsz=64, workers=0))}
    assert after["train"].digest != before["train"].digest and after["train"].rows == before["train"].rows
    assert after["val"] == before["val"]
