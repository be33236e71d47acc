"""Bad input, end to end through the CLI: exit 2, one line naming the key, the value and what is allowed,
no Ray started, no MLflow store or run written."""

from __future__ import annotations

import pickle
import socket
import time

import pytest
import torch
from conftest import free_port

import run_search
from tune.driver import cluster

ROOT = run_search.ROOT


class _Exploit:
    def __reduce__(self):
        return (print, ("this pickle runs code when loaded without weights_only",))




def _files(tmp_path):
    return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if "inputs" not in p.parts)


@pytest.fixture
def workdir(workdir):
    """conftest's, with an ``inputs/`` folder for the files a case writes (the check of side effects skips it)."""
    (workdir / "inputs").mkdir()
    return workdir


def _write(path, text):
    path.write_text(text)
    return str(path)


CASES = {
    "yaml syntax": (lambda d: ["--space", _write(d / "inputs/bad.yaml", "name: x\nspace: {freeze_stop: [\n")],
                    "error: {d}/inputs/bad.yaml: got '<file>' (while parsing"),
    "repeated key": (lambda d: ["--space", _write(d / "inputs/twice.yaml", "name: x\ntask: {name: digits}\nspace:\n"
                                                  "  freeze_stop: {type: int, low: 0, high: 3}\nspace:\n"
                                                  "  lr: {type: float, low: 1.0e-4, high: 1.0e-3}\n")],
                     "error: {d}/inputs/twice.yaml: got 'space' ('space' repeated on line 5; YAML would keep only the "
                     "last); allowed: each key once in a mapping"),
    "unknown key": (lambda d: ["--set", "train.learning_rate=0.1"],
                    "error: train.learning_rate: got 0.1 (unknown key)"),
    "unknown section": (lambda d: ["--set", "trainer.epochs=3"], "error: trainer: got {'epochs': 3} (unknown key)"),
    "wrong type": (lambda d: ["--set", "train.epochs=ten"],
                   "error: train.epochs: got 'ten' (str); allowed: an integer"),
    "bool for int": (lambda d: ["--set", "train.batch_size=true"], "error: train.batch_size: got True (bool)"),
    "low > high": (lambda d: ["--set", "space.lr.low=0.1", "--set", "space.lr.high=0.01"],
                   "error: space.lr: got {'low': 0.1, 'high': 0.01}; allowed: low <= high"),
    "float freeze": (lambda d: ["--set", "space.freeze_stop.high=2.5"], "error: space.freeze_stop.high: got 2.5"),
    "bool freeze": (lambda d: ["--set", "space.freeze_stop=true"], "error: space.freeze_stop: got True (bool)"),
    "fixed value of the wrong type in space": (lambda d: ["--set", "space.lr=abc"],
                                               "error: space.lr: got 'abc' (str); allowed: a number > 0"),
    "fixed freeze in space beyond depth": (lambda d: ["--set", "space.freeze_stop=30"],
                                           "error: space.freeze_stop: got 30 (out of range); allowed: an integer in"),
    "fixed freeze in space freezes every block": (lambda d: ["--set", "space.freeze_stop=8"],
                                                  "error: space.freeze_stop: got 8 (freezes every block)"),
    "fixed freeze and a freeze range in space": (lambda d: ["--set", "space.freeze=2"],
                                                 "error: space.freeze: got 2; allowed: either freeze or"),
    "fixed thaw in space too late": (lambda d: ["--set", "train.epochs=2", "--set", "space.unfreeze_epoch=5"],
                                     "error: space.unfreeze_epoch: got 5; allowed: an integer in [0, 1]"),
    "freeze beyond depth": (lambda d: ["--set", "space.freeze_stop.high=30"],
                            "error: space.freeze_stop.high: got 30 (out of range); allowed: an integer in [0, 8]"),
    "freeze every block": (lambda d: ["--set", "space.freeze_stop={type: choice, values: [2, 8]}"],
                           "error: space.freeze_stop: got 8 (freezes every block)"),
    "unknown freeze name": (lambda d: ["--set", "space.freeze_stop.high=neck"],
                            "error: space.freeze_stop.high: got 'neck' (unknown name)"),
    "unknown task": (lambda d: ["--set", "task.name=resnet"], "error: task.name: got 'resnet' (unknown task)"),
    "import path does not load": (lambda d: ["--set", "task.name=nowhere.tasks:make"],
                                  "error: task.name: got 'nowhere.tasks:make' (ModuleNotFoundError"),
    "import path lacks function": (lambda d: ["--set", "task.name=conftest:no_such_factory"],
                                   "error: task.name: got 'conftest:no_such_factory' (conftest has no function"),
    "unknown task option": (lambda d: ["--set", "task.options.labelz=3"], "error: task.options: got {"),
    "missing data": (lambda d: ["--set", "task.name=conftest:make_file_task", "--set", "task.options={data: nope.pt}"],
                     "error: task.options: got {'data': 'nope.pt'} (FileNotFoundError"),
    "corrupt weights": (lambda d: ["--set", f"task.options.weights={_write(d / 'inputs/w.pt', 'not a zip')}"],
                        "error: task.options.weights: got '{d}/inputs/w.pt' (UnpicklingError"),
    "unsafe weights": (lambda d: ["--set", f"task.options.weights={_pickle(d / 'inputs/evil.pt')}"],
                       "error: task.options.weights: got '{d}/inputs/evil.pt' (UnpicklingError: Weights only load"),
    "wrong model weights": (lambda d: ["--set", f"task.options.weights={_other_weights(d / 'inputs/other.pt')}"],
                            "error: task.options.weights: got '{d}/inputs/other.pt' (RuntimeError: Error(s) in"),
    "unreachable tracking server": (lambda d: ["--tracking-uri", f"http://127.0.0.1:{free_port()}"],
                                    "error: --tracking-uri: got 'http://127.0.0.1:"),
    "tracking uri scheme": (lambda d: ["--tracking-uri", "ftp://example/mlflow"],
                            "error: --tracking-uri: got 'ftp://example/mlflow' (unsupported scheme)"),
    "sqlite in missing folder": (lambda d: ["--tracking-uri", "sqlite:////no/such/folder/m.db"],
                                 "error: --tracking-uri: got 'sqlite:////no/such/folder/m.db' (cannot write in"),
    "credentials are not echoed": (lambda d: ["--tracking-uri", f"http://alice:s3cret@127.0.0.1:{free_port()}"],
                                   "error: --tracking-uri: got 'http://***@127.0.0.1:"),
    "unwritable storage": (lambda d: ["--storage-path", "/proc/forbidden"], "error: --storage-path: got '/proc/"),
    "report dir is a file": (lambda d: ["--report-dir", _write(d / "inputs/a_file", "")],
                             "error: --report-dir: got '{d}/inputs/a_file' ({d}/inputs/a_file is a file)"),
    "report dir under a file": (lambda d: ["--report-dir", f"{_write(d / 'inputs/a_file', '')}/reports"],
                                "error: --report-dir: got '{d}/inputs/a_file/reports' ({d}/inputs/a_file is a file)"),
    "unwritable report dir": (lambda d: ["--report-dir", "/proc/forbidden"],
                              "error: --report-dir: got '/proc/forbidden' (cannot write in /proc)"),
    "mlflow artifacts folder is a file": (lambda d: ["--tracking-uri", f"sqlite:///{_artifacts_file(d)}/m.db"],
                                          "error: --tracking-uri: got 'sqlite:///{d}/inputs/m.db' ({d}/inputs/"
                                          "mlartifacts is a file)"),
    "zero samples": (lambda d: ["--num-samples", "0"], "error: search.num_samples: got 0 (int)"),
    "unknown objective": (lambda d: ["--set", "search.objectives={accuracy: max, peak_mem_mb: min}"],
                          "error: search.objectives.accuracy: got 'accuracy'; allowed: one of epoch, score"),
    "objective mode": (lambda d: ["--set", "search.objectives={score: up}"], "error: search.objectives: got {'score'"),
    "asha with objectives": (lambda d: ["--set", "search.scheduler=asha",
                                        "--set", "search.objectives={score: max, peak_mem_mb: min}"],
                             "error: search.scheduler: got 'asha'; allowed: fifo or auto with several objectives"),
    "grace beyond epochs": (lambda d: ["--set", "train.epochs=2", "--set", "search.grace_period=3"],
                            "error: search.grace_period: got 3; allowed: an integer <= train.epochs (2)"),
    "more CPUs per trial than any node": (lambda d: ["--set", "search.cpus_per_trial=1000"],
                                          "error: search.cpus_per_trial: got 1000 (the largest node has "),
    "16-mixed for trials on the CPU": (lambda d: ["--set", "train.precision=16-mixed"],
                                       "error: train.precision: got '16-mixed'; allowed: 32, bf16-mixed or auto where"),
    "unknown precision": (lambda d: ["--set", "train.precision=fp16"],
                          "error: train.precision: got 'fp16' (str); allowed: one of auto, 32, bf16-mixed, 16-mixed"),
    "a thaw after the last epoch": (lambda d: ["--space", "digits_policy", "--set", "train.epochs=3"],
                                    "error: space.unfreeze_epoch.values: got 3; allowed: an integer in [0, 2]"),
    "a layer decay above 1": (lambda d: ["--set", "train.layer_decay=1.5"],
                              "error: train.layer_decay: got 1.5 (float); allowed: a number in (0, 1]"),
    "cuda for trials with no GPU": (lambda d: ["--set", "train.device=cuda"],
                                    "error: train.device: got 'cuda' (trials get no GPU: search.gpus_per_trial is 0)"),
    "more GPUs per trial than any node": (lambda d: ["--set", "search.gpus_per_trial=3"],
                                          "error: search.gpus_per_trial: got 3 ("),
    "grid over a float range": (lambda d: ["--set", "search.algorithm=grid"],
                                "error: space.lr.type: got 'float'; allowed: choice or int with search.algorithm"),
    "confirm one seed": (lambda d: ["--confirm", "1"], "error: --confirm: got 1; allowed: 0 (no confirmation)"),
    "race confidence": (lambda d: ["--set", "report.confidence=1.5"],
                        "error: report.confidence: got 1.5 (float); allowed: a number in [0.5, 1), e.g. 0.95"),
    "race budget": (lambda d: ["--set", "report.confirm_max_seeds=1"],
                    "error: report.confirm_max_seeds: got 1 (int); allowed: an integer >= 2"),
    "set syntax": (lambda d: ["--set", "epochs"], "error: --set: got 'epochs'; allowed: section.key=value"),
    "missing space file": (lambda d: ["--space", "nope.yaml"], "error: --space: got 'nope.yaml' (no such file)"),
    "image: data not set": (lambda d: ["--space", IMAGE_SPACE],
                            "error: task.options.data: got None (not set); allowed: a folder with train/<class>/"),
    "image: no data folder": (lambda d: _image(d, "--set", "task.options.data=inputs/nowhere"),
                              "error: task.options.data: got 'inputs/nowhere' (no folder train/ in it)"),
    "image: empty class folder": (lambda d: _image(d, "--set", f"task.options.data={_images(d, empty='3')}"),
                                  "error: task.options.data: got '{d}/inputs/images' (train: Found no valid file "
                                  "for the classes 3"),
    "image: unknown model": (lambda d: _image(d, "--set", f"task.options.data={_images(d)}",
                                              "--set", "task.options.model=resnet_nope"),
                             "error: task.options.model: got 'resnet_nope' (unknown model)"),
    "image: another model's weights": (lambda d: _image(d, "--set", f"task.options.data={_images(d)}",
                                                        "--set", f"task.options.weights={_timm_weights(d)}"),
                                       "error: task.options.weights: got '{d}/inputs/resnet10t.pt' (does not fit"),
}

IMAGE_SPACE = str(ROOT / "search_spaces" / "image_freeze.yaml")


def _image(d, *args):
    return ["--space", IMAGE_SPACE, "--set", "task.options.image_size=32", "--set", "task.options.workers=0", *args]


def _images(d, empty=None):
    from tune.tasks.image import write_example

    folder = write_example(d / "inputs" / "images", per_class=1, val_per_class=1, size=16)
    if empty is not None:
        for image in (folder / "train" / empty).iterdir():
            image.unlink()
    return str(folder)


def _artifacts_file(d):
    (d / "inputs" / "mlartifacts").write_text("")  # where the runs' files would go, beside the database
    return str(d / "inputs")


def _timm_weights(d):
    import timm

    torch.save(timm.create_model("resnet10t", num_classes=10).state_dict(), d / "inputs" / "resnet10t.pt")
    return str(d / "inputs" / "resnet10t.pt")


def _pickle(path):
    with open(path, "wb") as handle:
        pickle.dump(_Exploit(), handle)
    return str(path)


def _other_weights(path):
    torch.save(torch.nn.Linear(2, 2).state_dict(), path)
    return str(path)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_one_line_and_no_side_effects(case, workdir, capsys):
    make_args, expected = CASES[case]
    code = run_search.main(make_args(workdir))
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(expected.replace("{d}", str(workdir))), lines[0]
    assert "allowed:" in lines[0]
    assert _files(workdir) == []  # no mlflow.db, no ray_results, no reports
    if "s3cret" in " ".join(make_args(workdir)):
        assert "s3cret" not in err


def test_at_least_twenty_distinct_cases():
    assert len(CASES) >= 20


def test_an_unreachable_ray_address_from_the_environment_is_bad_input(workdir, capsys, monkeypatch):
    from tune.driver import cluster

    address = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("RAY_ADDRESS", address)  # what a Ray Job or KubeRay sets, with no --address

    def never(given):  # ray.init would retry the dead address for about a minute
        raise AssertionError("ray.init was reached")

    monkeypatch.setattr(cluster, "init_ray", never)
    started = time.monotonic()
    code = run_search.main([])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"error: RAY_ADDRESS: got '{address}' (nothing answers at {address}: ConnectionRefused")
    assert len(err.strip().splitlines()) == 1 and time.monotonic() - started < 30
    assert _files(workdir) == []


def test_a_ray_address_that_answers_goes_on_to_ray_init(workdir, capsys, monkeypatch):
    from tune.driver import cluster

    listener = socket.create_server(("127.0.0.1", 0))
    address = f"ray://127.0.0.1:{listener.getsockname()[1]}"
    seen = []

    def init_ray(given):
        seen.append(given)
        raise ConnectionError(f"Could not connect to the GCS at {given}")

    monkeypatch.setattr(cluster, "init_ray", init_ray)
    with listener:
        code = run_search.main(["--address", address])
    err = capsys.readouterr().err
    assert code == 2 and seen == [address], err
    assert err.startswith(f"error: --address: got '{address}' (Could not connect") and len(err.splitlines()) == 1


def test_the_report_command_checks_its_report_dir_before_reading_the_store(workdir, capsys):
    code = run_search.main(["report", "--tracking-uri", f"sqlite:///{workdir / 'inputs' / 'm.db'}",
                            "--report-dir", _write(workdir / "inputs" / "a_file", "")])
    assert code == 2
    assert capsys.readouterr().err.startswith(f"error: --report-dir: got '{workdir}/inputs/a_file' (")


def test_under_a_ray_job_the_study_keeps_the_address_from_the_environment(workdir, monkeypatch):
    # a Ray Job sets RAY_ADDRESS and no --address: the test split is then scored where the trials run
    from tune.driver.checks import StudyOptions
    from tune.driver.study import Study

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    joined = []
    monkeypatch.setattr(cluster, "connect", lambda address, key: joined.append((address, key)))
    study = Study.prepare(StudyOptions(space_file="digits_freeze", smoke_test=True,
                                       storage_path=str(workdir / "ray")))
    assert joined == [("127.0.0.1:6379", "RAY_ADDRESS")] and study.address == "127.0.0.1:6379"
