"""The Ray runtime a search runs on: joining a cluster (or starting Ray here), what a trial asks for against the
nodes, the storage path, and Ray Jobs (the same search submitted to a cluster). With tune.driver.tuner, the only
modules that import Ray.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shlex
import socket
import time
from pathlib import Path
from typing import Any

import ray
import torch

from tune.errors import ConfigError, one_line
from tune.log import logger
from tune.settings.config import Config

__all__ = ["JOB_EXCLUDES", "check_resources", "check_storage", "connect", "follow_job", "init_ray", "storage_uri",
           "submit_job"]


# -- before Ray starts ------------------------------------------------------------------------------------------
_ADDRESS_ALLOWED = "a running Ray cluster this machine reaches (HOST:6379 or auto)"


def connect(address: str, key: str = "--address") -> None:
    """Join the cluster now, so that an unreachable one is bad input, not a failed search."""
    endpoint = _host_port(address)
    if endpoint is not None:  # ray.init would retry a dead address for about a minute before saying so
        try:
            socket.create_connection(endpoint, timeout=5).close()
        except OSError as err:
            raise ConfigError(key, address, _ADDRESS_ALLOWED,
                              problem=f"nothing answers at {endpoint[0]}:{endpoint[1]}: {type(err).__name__}") from None
    try:
        init_ray(address)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise ConfigError(key, address, _ADDRESS_ALLOWED, problem=one_line(err)) from None


def _host_port(address: str) -> tuple[str, int] | None:
    """HOST:PORT of a Ray address (GCS ``HOST:PORT`` or client ``ray://HOST:PORT``); None for ``auto``, ``local``
    and anything else Ray resolves itself."""
    match = re.fullmatch(r"(?:ray://)?\[?([\w.\-:]+?)\]?:(\d+)/?", address.strip())
    return (match.group(1), int(match.group(2))) if match else None


def _nodes() -> list[dict[str, float]]:
    """CPUs and GPUs of each live node: of the Ray runtime this process is connected to, else of this machine (what
    a local Ray would find)."""
    if ray.is_initialized():
        return [{"CPU": n["Resources"].get("CPU", 0.0), "GPU": n["Resources"].get("GPU", 0.0)}
                for n in ray.nodes() if n["Alive"]]
    try:
        from ray._private.utils import get_num_cpus  # what ray.init() counts: the cgroup's CPUs in a container
    except ImportError:  # a private helper: if a Ray release moves it, count as Python does
        cpus = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    else:
        cpus = float(get_num_cpus())
    return [{"CPU": cpus, "GPU": float(torch.cuda.device_count())}]


def check_resources(cfg: Config, on_cluster: bool) -> list[str]:
    """What a trial asks for against the nodes that could give it, before any trial waits for it.

    A trial no node can hold waits forever (Ray only warns), and a trial on a CUDA device it was given no GPU for
    fails: on this machine that is bad input (ConfigError, the first problem); on a cluster an autoscaler may add a
    node that fits, so each shortfall is a warning (returned). A trial sees only the GPUs Ray gave it, numbered
    from 0."""
    cpus, gpus, device = cfg.search.cpus_per_trial, cfg.search.gpus_per_trial, cfg.train.device
    nodes = _nodes()
    most_cpus, most_gpus = max(n["CPU"] for n in nodes), max(n["GPU"] for n in nodes)
    short: list[tuple[str, float, str, str]] = []  # (key, value, allowed, problem)
    if cpus > most_cpus:
        short.append(("search.cpus_per_trial", cpus, f"at most {most_cpus:g}, the CPUs of the largest node",
                      f"the largest node has {most_cpus:g} CPUs"))
    if gpus > most_gpus:
        short.append(("search.gpus_per_trial", gpus, f"at most {most_gpus:g} (0 trains on the CPU: --set "
                      "search.gpus_per_trial=0)", "no GPU here" if most_gpus == 0
                      else f"the largest node has {most_gpus:g} GPUs"))
    if not short and not any(n["CPU"] >= cpus and n["GPU"] >= gpus for n in nodes):
        fitting = max(n["CPU"] for n in nodes if n["GPU"] >= gpus)
        short.append(("search.cpus_per_trial", cpus, f"at most {fitting:g}, the CPUs of the largest node with "
                      f"{gpus:g} GPUs", f"no node has {cpus:g} CPUs and {gpus:g} GPUs"))
    if short and not on_cluster:
        key, value, allowed, problem = short[0]
        raise ConfigError(key, value, allowed, problem=problem)
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        seen = max(1, math.ceil(gpus))
        if gpus <= 0:
            raise ConfigError("train.device", device, "auto or cpu, or a CUDA device with search.gpus_per_trial > 0",
                              problem="trials get no GPU: search.gpus_per_trial is 0")
        if index >= seen:
            raise ConfigError("train.device", device, f"cuda or cuda:N with N < {seen} (a trial sees only the GPUs "
                              "Ray gives it, numbered from 0), or auto")
        if not on_cluster and not torch.cuda.is_available():
            raise ConfigError("train.device", device, "auto or cpu", problem="torch here has no CUDA device")
    return [f"{key} is {value:g} but no node of the cluster can give that now ({problem}): trials wait until such "
            "a node joins (an autoscaler)" for key, value, _, problem in short]


def check_storage(storage_path: str) -> None:
    """A local storage path must be a folder this process can write (it is made here); a URI is Ray's to check."""
    if "://" in storage_path:
        return  # a URI (s3://, gs://, ...): Ray checks it when the search starts
    path = Path(storage_path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ConfigError("--storage-path", storage_path, "a folder this process can write (shared by every node "
                          "on a cluster)", problem=err.strerror or type(err).__name__) from None


def init_ray(address: str | None = None, verbose: int = 0) -> None:
    """Connect to ``address`` or $RAY_ADDRESS (an existing cluster; a Ray Job sets it) or start a local Ray
    without its dashboard (about 1 GB less), unless Ray is already up."""
    if ray.is_initialized():
        return
    # "Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out": Ray's safe
    # default for a local Ray, nothing for a user to act on (--verbose shows it)
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.WARNING if verbose else logging.ERROR)
    options: dict[str, Any] = {"log_to_driver": False, "configure_logging": True, "logging_level": "WARNING"}
    if address is None and not os.environ.get("RAY_ADDRESS"):
        options["include_dashboard"] = False
    ray.init(address=address, **options)



# What a Ray Job's working directory leaves out (gitignore patterns): environments, stores, results.
JOB_EXCLUDES = [".venv/", ".venv-yolo/", "venv/", ".git/", "*.egg-info/", "mlflow.db", "mlartifacts/", "mlruns/",
                "ray_results/", "reports/", "__pycache__/", ".pytest_cache/", ".ruff_cache/", "build/", "dist/"]


def job_arguments(options: Any, space: str) -> list[str]:
    """The command line of a search's Ray Job from its typed options (a ``StudyOptions``): ``space``, the space
    file's path inside the uploaded project, and the rest as the flags that stand for them."""
    from tune.settings.loading import format_override

    arguments = ["--space", space]
    for key, value in options.overrides:
        arguments += ["--set", format_override(key, value)]
    for flag, value in (("--tracking-uri", options.tracking_uri), ("--storage-path", options.storage_path),
                        ("--report-dir", options.report_dir), ("--confirm", options.confirm),
                        ("--confirm-top", options.confirm_top)):
        if value is not None:
            arguments += [flag, str(value)]
    return arguments + [flag for flag, on in (("--resume", options.resume), ("--smoke-test", options.smoke_test),
                                              ("--verbose", options.verbose)) if on]


def submit_job(address: str, project_dir: Path, arguments: list[str], python: str = "python") -> str:
    """Submit ``python run_search.py <arguments>`` (the checkout's ``freeze-search``) as a Ray Job with the project
    as its working directory; returns the job id."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    entrypoint = " ".join(shlex.quote(part) for part in [python, "run_search.py", *arguments])
    deadline = time.monotonic() + 180
    while True:  # a cluster just started has no job agent for a while (a minute on a busy machine): Ray asks to retry
        try:
            return client.submit_job(entrypoint=entrypoint,
                                     runtime_env={"working_dir": str(project_dir), "excludes": JOB_EXCLUDES})
        except RuntimeError as err:
            if "No available agent" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(2)


def follow_job(address: str, job_id: str) -> str:
    """The job's logs as they come (the ``tune`` logger); returns its final status (SUCCEEDED, FAILED, STOPPED)."""
    import asyncio

    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            logger.info(lines.rstrip("\n"))

    asyncio.run(tail())
    return str(client.get_job_status(job_id))


def storage_uri(storage_path: str) -> str:
    """An absolute local path (Ray needs one), or a URI such as s3://bucket/path as given."""
    return storage_path if "://" in storage_path else str(Path(storage_path).resolve())
