"""The test split, scored once after the search: each chosen trial's best-epoch checkpoint evaluated on the task's
test data (or by the task's own ``score_test``), in this process or in one Ray task with a trial's resources (on a
cluster, or where trials have GPUs), with where it was scored.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any

import ray

from tune.driver import cluster
from tune.driver.tuner import _in_worker
from tune.settings.config import Config, TaskConfig, TrainConfig
from tune.tasks import load_task
from tune.training.train import evaluate_split, pick_device
from tune.training.trial import model_from_checkpoint

__all__ = ["score_test"]


def _score(task: Any, cfg: TrainConfig, checkpoints: Mapping[str, Any]
           ) -> dict[str, tuple[dict[str, float], int, dict[str, Any]]]:
    """Each checkpoint's metrics on the task's test split: (metrics, the checkpoint's epoch, where it was scored)."""
    where = {"hostname": socket.gethostname(), "pid": os.getpid()}
    device = pick_device(cfg.device)
    scored = {}
    for name, checkpoint in checkpoints.items():
        block_model, state = model_from_checkpoint(task, checkpoint)
        module = block_model.module.to(device)
        metrics = (task.score_test(module, device) if task.score_test is not None
                   else evaluate_split(task, module, task.test_data, cfg.batch_size, device))
        scored[name] = ({k: float(v) for k, v in metrics.items()}, int(state.get("epoch", 0)), where)
    return scored


def _score_in_worker(base: TrainConfig, task_config: TaskConfig, checkpoints: Mapping[str, Any],
                     workdir: str | None = None
                     ) -> dict[str, tuple[dict[str, float], int, dict[str, Any]]]:
    cfg, _ = _in_worker(base, workdir)
    return _score(load_task(task_config), cfg, checkpoints)


def score_test(cfg: Config, task: Any, checkpoints: Mapping[str, Any], *, address: str | None = None,
               verbose: int = 0) -> dict[str, tuple[dict[str, float], int, dict[str, Any]]]:
    """Score trial checkpoints on the task's test split. On a cluster (``address``) or where trials have GPUs, in
    one Ray task with a trial's resources (``search.cpus_per_trial``, ``gpus_per_trial``): where the trials run
    (a GPU node), not on the driver's machine; otherwise in this process, with ``task`` as it is (a Ray worker
    would spend seconds importing and building it again). By trial name: (the task's metrics, the checkpoint's
    epoch, hostname / pid)."""
    if not checkpoints:
        return {}
    if address is None and not cfg.search.gpus_per_trial:
        return _score(task, cfg.train, checkpoints)
    cluster.init_ray(address, verbose)
    remote = ray.remote(_score_in_worker).options(num_cpus=cfg.search.cpus_per_trial,
                                                   num_gpus=cfg.search.gpus_per_trial, max_retries=0)
    return ray.get(remote.remote(cfg.train, cfg.task, dict(checkpoints), os.getcwd()))
