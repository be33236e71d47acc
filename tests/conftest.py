"""Shared fixtures: tiny models and tasks made here, one Ray runtime and one smoke search for the tests that need
them."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tune.blocks import BlockModel
from tune.tasks.base import Task, classification_metrics, takes_paths

# tests/ and its folders, one for each part of tune/ (no __init__.py: a test module imports as its file's name):
# importable by name here, in the Ray workers and in the processes the tests start, so that "conftest:..." tasks and
# one test module's helpers in another load from any folder.
TESTS = Path(__file__).resolve().parent
TEST_DIRS = [TESTS, *sorted({path.parent for path in TESTS.glob("*/test_*.py")})]
TESTS_PATH = os.pathsep.join(map(str, TEST_DIRS))
sys.path[:0] = [str(folder) for folder in TEST_DIRS if str(folder) not in sys.path]

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
torch.set_num_threads(1)

# Trials run on the CPU in every test but the `gpu` ones, so that the suite means the same on a machine with a GPU
# (device: auto would pick CUDA there, and the exact-memory tests would read the allocator instead): no CUDA device
# is visible, and Ray does not set CUDA_VISIBLE_DEVICES for the logical GPUs it hands out.
CPU_ONLY = {"CUDA_VISIBLE_DEVICES": "", "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"}


@pytest.fixture(autouse=True)
def trials_on_the_cpu(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """In this process and every process a test starts (CLI runs, Ray workers, cluster nodes)."""
    if request.node.get_closest_marker("gpu"):
        return
    for key, value in CPU_ONLY.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture(autouse=True)
def mlflow_environment_restored() -> Iterator[None]:
    """Each test leaves MLflow's URI variables as it found them. A search that logs its model sets
    MLFLOW_TRACKING_URI in its process (mlflow.set_tracking_uri writes it): without this, the commands a later test
    starts would inherit a store in a folder an earlier test has removed."""
    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    before = {key: os.environ.get(key) for key in keys}
    yield
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


class TinyNet(nn.Module):
    """Four blocks: conv+BN, conv+BN, pooled linear neck, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([
            nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()),
            nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 8), nn.ReLU()),
            nn.Linear(8, 3),
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def tiny_block_model() -> BlockModel:
    torch.manual_seed(0)
    model = TinyNet()
    return BlockModel(module=model, blocks=list(model.blocks), block_names=["c1", "c2", "neck", "head"],
                      cut_points={"backbone": 2}, example_input=torch.zeros(2, 1, 8, 8), sequential=True)


def make_tiny_task(n_train: int = 48, n_val: int = 24) -> Task:
    """Three classes of 8x8 images told apart by where a bright square sits; made here, no download."""
    generator = torch.Generator().manual_seed(0)
    n = n_train + n_val
    targets = torch.arange(n) % 3
    images = 0.1 * torch.randn(n, 1, 8, 8, generator=generator)
    for i, label in enumerate(targets.tolist()):
        images[i, 0, 2 * label:2 * label + 3, 2:5] += 1.0
    return Task(name="tiny", build_model=tiny_block_model, train_data=(images[:n_train], targets[:n_train]),
                val_data=(images[n_train:], targets[n_train:]), metric="val_accuracy", loss=F.cross_entropy,
                evaluate=classification_metrics)


class _Enough(Exception):
    pass


def first_epoch(trial) -> dict:
    """Run a trial (tune.training.trial.TrialProtocol) for one epoch only; its metrics."""
    seen: list[dict] = []

    def stop(metrics: dict) -> None:
        seen.append(metrics)
        raise _Enough

    with contextlib.suppress(_Enough):
        trial.run(stop)
    assert seen, "the trial ended before its first epoch"
    return seen[0]


def resumed_epochs(task: Task, cfg, folder: Path, after: int = 1) -> list[dict]:
    """A built-in trial's epochs when it is checkpointed after epoch ``after`` (to ``folder``, loaded with
    weights_only) and resumed in a new trial: what a killed and resumed trial reports."""
    from tune.training.train import LoopTrial

    first = LoopTrial(task, cfg)
    epochs = first.epochs()
    head = [next(epochs) for _ in range(after)]
    torch.save(first.state_dict(), folder / "trial.pt")
    torch.manual_seed(1234)  # whatever ran in between does not matter
    resumed = LoopTrial(task, cfg)
    resumed.load_state_dict(torch.load(folder / "trial.pt", weights_only=True))
    return head + list(resumed.epochs())


def most_open_at_once(children: list) -> int:
    """The largest number of trial runs open at one moment."""
    events = sorted([(r.info.start_time, 1) for r in children] + [(r.info.end_time, -1) for r in children],
                    key=lambda e: (e[0], e[1]))
    most = current = 0
    for _, change in events:
        current += change
        most = max(most, current)
    return most


def parent_and_children(uri: str, experiment: str) -> tuple[object, list]:
    """The one parent run of ``experiment`` in the MLflow store ``uri`` and its nested trial runs."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == len(runs) - 1
    return parents[0], children


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def block_model() -> BlockModel:
    return tiny_block_model()


@pytest.fixture
def tiny_task() -> Task:
    return make_tiny_task()


@pytest.fixture(scope="session")
def ray_runtime() -> Iterator[None]:
    """One local Ray for the session: 2 CPUs and 2 logical GPUs (resources are logical in Ray, so GPU
    scheduling is tested for real; the trials still train on the CPU)."""
    import ray

    # Ray workers inherit the driver's environment: let them import the test tasks ("conftest:...") and test modules.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (TESTS_PATH, os.environ.get("PYTHONPATH")) if p)
    # Trials train on the CPU: the workers see no CUDA device, and Ray leaves that alone (the raylet itself refuses
    # 2 GPUs with an empty CUDA_VISIBLE_DEVICES, so only the workers get it)
    os.environ["RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"] = "1"
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING",
             runtime_env={"env_vars": CPU_ONLY})
    yield
    ray.shutdown()


def _search(tmp_path: Path, *args: str) -> tuple[int, str]:
    """A smoke search; without the confirmation unless ``args`` ask for it (default_smoke does)."""
    import run_search

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    confirm = () if "--confirm" in args else ("--confirm", "0")
    code = run_search.main(["--smoke-test", "--tracking-uri", uri, "--storage-path", str(tmp_path / "ray"),
                            "--report-dir", str(tmp_path / "reports"), *confirm, *args])
    return code, uri


def _runs(uri: str, experiment: str) -> tuple[object, list]:
    return parent_and_children(uri, experiment)


@pytest.fixture(scope="session")
def default_smoke(ray_runtime, tmp_path_factory):
    """The default space's smoke test with a confirmation of its top 2 candidates (2 seeds each): one search that
    the tests of the whole path share, in every test file."""
    tmp_path = tmp_path_factory.mktemp("default")
    code, uri = _search(tmp_path, "--confirm", "2", "--confirm-top", "2")
    return code, uri, tmp_path


def _phase(children: list, phase: str) -> list:
    return [c for c in children if c.data.tags.get("phase") == phase]


def make_flaky_task(marker: str, fail_at_batch: int = 8) -> Task:
    """The tiny task, but the first process to reach its ``fail_at_batch``-th training batch crashes once
    (``marker`` is created so that the retry goes through): a worker dying mid-trial."""
    task = make_tiny_task()
    calls = {"n": 0}

    def loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == fail_at_batch and not os.path.exists(marker):
            open(marker, "w").close()
            raise RuntimeError("injected crash in the middle of an epoch")
        return F.cross_entropy(output, target)

    return Task(name="flaky", build_model=task.build_model, train_data=task.train_data, val_data=task.val_data,
                metric=task.metric, loss=loss, evaluate=task.evaluate)


def make_file_task(data: str) -> Task:
    """A user task whose data come from a file saved by torch.save: (images, labels)."""
    images, labels = torch.load(data, weights_only=True)
    base = make_tiny_task()
    return Task(name="file", build_model=base.build_model, train_data=(images, labels), val_data=(images, labels),
                metric="val_accuracy", loss=F.cross_entropy, evaluate=classification_metrics)


def make_undeclared_file_task(source: str) -> Task:
    """``make_file_task`` with its data file in an option it does not declare a path: a bare name stays a word."""
    return make_file_task(source)


@takes_paths("source")
def make_declared_file_task(source: str) -> Task:
    """``make_file_task`` with its data file in an option declared a path: a bare file name is found from any
    folder."""
    return make_file_task(source)


def make_crashing_file_task(source: str, driver_pid: int) -> Task:
    """``make_file_task`` (its data file a bare name it does not declare a path: the trials find it only where they
    work in the driver's folder) whose training step fails in every process but the driver's, the same way each
    time: a user's task code that cannot run in a Ray worker."""
    base = make_file_task(source)

    def loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if os.getpid() != driver_pid:
            raise RuntimeError("the user's loss cannot run here")
        return F.cross_entropy(output, target)

    return Task(name="crashing", build_model=base.build_model, train_data=base.train_data, val_data=base.val_data,
                metric=base.metric, loss=loss, evaluate=base.evaluate)


def make_big_batch_oom_task(limit: int = 16) -> Task:
    """The tiny task on a 'device' that runs out of memory above ``limit`` samples per batch."""
    base = make_tiny_task()

    def loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if len(target) > limit:
            raise MemoryError(f"cannot hold a batch of {len(target)} (limit {limit})")
        return F.cross_entropy(output, target)

    return Task(name="oom", build_model=base.build_model, train_data=base.train_data, val_data=base.val_data,
                metric=base.metric, loss=loss, evaluate=base.evaluate)


def make_slow_task(seconds_per_epoch: float = 0.5, tokens: str | None = None, gate: str | None = None,
                   hold_at: int | None = None) -> Task:
    """The tiny task with a validation pass that takes ``seconds_per_epoch``: time to act mid-trial.

    With ``tokens`` and ``gate`` (paths), a trial runs freely only if it takes one of the files in the ``tokens``
    folder (removed atomically, once per trial at its first validation); every other trial waits in its
    validation until ``gate`` exists. With ``hold_at`` and ``gate``, every trial waits in its ``hold_at``-th
    validation (counted from its start or restart) until ``gate`` exists. A test thus stops a search at a known
    point, free of timing races. The driver's pre-flight (before Ray starts) neither takes a token nor waits."""
    base = make_tiny_task()
    free = [tokens is None]
    taken = []
    calls = []

    def claim() -> bool:
        for token in sorted(Path(tokens).iterdir()):
            try:
                token.unlink()  # only one trial can remove a given file
                return True
            except FileNotFoundError:
                continue
        return False

    def evaluate(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        import ray

        if not ray.is_initialized():  # the driver's pre-flight, before Ray starts: no token taken, no wait
            return classification_metrics(model, inputs, targets)
        if not taken:
            taken.append(True)
            free[0] = free[0] or claim()
        calls.append(True)
        held = not free[0] or len(calls) == hold_at
        while held and not Path(gate).exists():
            time.sleep(0.1)
        time.sleep(seconds_per_epoch)
        return classification_metrics(model, inputs, targets)

    return Task(name="slow", build_model=base.build_model, train_data=base.train_data, val_data=base.val_data,
                metric=base.metric, loss=base.loss, evaluate=evaluate)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty working directory for bad input; starting Ray from here fails the test."""
    from tune.driver import cluster

    monkeypatch.chdir(tmp_path)

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started for bad input")

    monkeypatch.setattr(cluster, "init_ray", no_ray)
    return tmp_path
