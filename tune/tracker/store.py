"""The tracking store: the default URI, checking a store before any trial (with a server's HTTP basic auth),
credentials kept out of messages, where a sqlite store's artifacts go, the lock under which a new sqlite store is
created, and how to open the runs in a browser. Imports neither MLflow nor Ray.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tune.errors import ConfigError

__all__ = ["artifact_location", "check_store", "creating", "default_tracking_uri", "redact", "tracking_uri",
           "ui_command"]


def tracking_uri(given: str | None) -> str:
    """The store a search or a load uses: the one given, else MLFLOW_TRACKING_URI, else ``default_tracking_uri()``."""
    return given or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def default_tracking_uri(cwd: Path | None = None) -> str:
    """``sqlite:///mlflow.db`` in the working directory, as an absolute URI so Ray workers and later
    commands find the same file."""
    return f"sqlite:///{((cwd or Path.cwd()) / 'mlflow.db').resolve()}"


def artifact_location(tracking_uri: str, experiment_name: str) -> str | None:
    """Artifacts of a local sqlite store go beside the database file (MLflow's own default is ./mlruns in
    whatever directory the client runs from); a server chooses for itself."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    return (database.resolve().parent / "mlartifacts" / experiment_name).as_uri()


@contextlib.contextmanager
def creating(tracking_uri: str) -> Iterator[None]:
    """Held while a process opens the store (tune.tracker.tracking): MLflow creates a new sqlite file's tables, without
    a lock, when a process first opens it, so two searches started at once on a new file both migrate it and one fails
    in alembic. Under this exclusive lock on ``<file>.lock`` beside the database, the first creates the tables and
    the others wait, then find them. Other stores: nothing to hold (a server or a database creates its tables
    once)."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    database = Path(tracking_uri.removeprefix("sqlite:///").split("?", 1)[0]).resolve()
    with open(database.with_name(database.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


def redact(uri: str) -> str:
    """The URI with any user:password removed, for messages and logs."""
    parts = urlsplit(uri)
    if parts.password is None and parts.username is None:
        return uri
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


_STORE_ALLOWED = "sqlite:///PATH, http(s)://HOST:PORT of an MLflow server, or postgresql/mysql/mssql://..."


def check_store(tracking_uri: str, timeout_s: float = 10.0) -> None:
    """Fail fast, before any trial, when the tracking store cannot be used: ConfigError within ``timeout_s``."""
    scheme = urlsplit(tracking_uri).scheme
    shown = redact(tracking_uri)
    if scheme == "sqlite":
        if not tracking_uri.startswith("sqlite:///"):
            raise ConfigError("--tracking-uri", shown, "sqlite:///relative/path.db or sqlite:////absolute/path.db")
        folder = Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise ConfigError("--tracking-uri", shown, "a sqlite file in a writable folder",
                              problem=f"cannot write in {folder}")
        artifacts = folder / "mlartifacts"  # artifact_location: the runs' files go beside the database
        if artifacts.exists() and not (artifacts.is_dir() and os.access(artifacts, os.W_OK)):
            raise ConfigError("--tracking-uri", shown, "a sqlite file in a folder whose mlartifacts/ this process "
                              "can write", problem=f"{artifacts} is {'a file' if artifacts.is_file() else 'read-only'}")
    elif scheme in ("http", "https"):
        parts = urlsplit(tracking_uri)
        host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
        request = urllib.request.Request(urlunsplit((parts.scheme, host, parts.path.rstrip("/") + "/health", "", "")))
        if parts.username is not None:  # urllib does not read user:password from a URL
            token = base64.b64encode(f"{parts.username}:{parts.password or ''}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                response.read()
        except (OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            raise ConfigError("--tracking-uri", shown, "a reachable MLflow server", problem=f"{reason}") from None
    elif scheme in ("postgresql", "mysql", "mssql"):
        return  # checked by MLflow itself when the experiment is created
    else:
        raise ConfigError("--tracking-uri", shown, _STORE_ALLOWED, problem="unsupported scheme")


def ui_command(tracking_uri: str) -> str:
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {redact(tracking_uri)} in a browser"
    return f"mlflow ui --backend-store-uri {redact(tracking_uri)}"
