"""The documented MLflow view of a search (docs/mlflow.md), opened in a real browser and saved as a screenshot.

    python docs/mlflow_view.py --tracking-uri sqlite:///mlflow.db --experiment digits_freeze \
        --out docs/img/mlflow_view.png

Starts ``mlflow server`` on 127.0.0.1 over the store, opens the experiment's chart view in headless Chromium
(Debian's ``chromium``, driven by Playwright: ``pip install playwright``, no browser download), sets the view the
docs describe (the search's trials, grouped by freeze range, four charts) and saves the page. The view is set the
way the UI keeps it, in the browser's local storage: what a user sets by hand with the steps in docs/mlflow.md.
Docs tooling, not part of the search: nothing here runs in the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read() or b"{}")


def _serve(tracking_uri: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri,
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return server
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.terminate()
                raise SystemExit("mlflow server did not answer within 90 s") from None
            time.sleep(0.5)


SECTION = "freeze-search-trade-off"


def _chart(uuid: str, kind: str, **config: object) -> dict:
    return {"uuid": uuid, "type": kind, "runsCountToCompare": 100, "metricSectionId": SECTION, "deleted": False,
            "isGenerated": False, **config}


def view_state(state: dict) -> dict:
    """The UI's experiment-page state with the documented view: the search's trials, grouped by freeze range
    (each group's mean over its trials), and the trade-off charts."""
    metric = {"type": "METRIC"}
    charts = [
        _chart("score-vs-time", "SCATTER", xaxis={"key": "epoch_time_s", **metric},
               yaxis={"key": "best_epoch_score", **metric}),
        _chart("score-vs-memory", "SCATTER", xaxis={"key": "peak_mem_mb", **metric},
               yaxis={"key": "best_epoch_score", **metric}),
        _chart("best-score", "BAR", metricKey="best_epoch_score", displayName="best_epoch_score"),
        _chart("score-by-epoch", "LINE", metricKey="score", displayName="score", xAxisKey="step", scaleType="linear",
               xAxisScaleType="linear", lineSmoothness=0, range={}, selectedXAxisMetricKey="", yAxisKey="metric",
               yAxisExpressions=[], ignoreOutliers=False, useGlobalXaxisKey=True, useGlobalLineSmoothing=True),
    ]
    return {**state, "searchFilter": "tags.phase = 'search'", "runsHiddenMode": "SHOW_ALL", "runsHidden": [],
            "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "param", "groupByData":
                                                                         "freeze_range"}]},
            "useGroupedValuesInCharts": True, "hideEmptyCharts": True, "compareRunCharts": charts,
            "compareRunSections": [{"uuid": SECTION, "name": "Trade-off by freeze range", "display": True,
                                    "isReordered": True, "deleted": False, "isGenerated": False}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--experiment", default="digits_freeze")
    parser.add_argument("--out", type=Path, default=Path("docs/img/mlflow_view.png"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    port = _free_port()
    server = _serve(args.tracking_uri, port)
    base = f"http://127.0.0.1:{port}"
    try:
        query = urllib.parse.urlencode({"experiment_name": args.experiment})
        experiment_id = _get(f"{base}/api/2.0/mlflow/experiments/get-by-name?{query}")["experiment"]["experiment_id"]
        key = f'MLflowLocalStorage-1.1-ExperimentPage-["{experiment_id}"]-ReactComponentState'
        url = f"{base}/#/experiments/{experiment_id}/runs?compareRunsMode=CHART"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium,
                                                 args=["--no-sandbox", "--disable-gpu"])
            first = browser.new_page()
            first.goto(url)
            first.wait_for_timeout(5000)  # the UI writes its default state
            state = json.loads(first.evaluate(f"localStorage.getItem({json.dumps(key)})") or "{}")
            first.close()
            context = browser.new_context(viewport={"width": 1600, "height": 1000})
            # before the UI starts: it reads the view from local storage as it would after a user's clicks
            view = json.dumps(json.dumps(view_state(state)))
            context.add_init_script(f"localStorage.setItem({json.dumps(key)}, {view});"
                                    "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
                                    "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');")
            page = context.new_page()
            page.goto(url)
            page.wait_for_timeout(8000)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out))
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"{args.out}: the chart view of experiment '{args.experiment}' ({base}, stopped)")


if __name__ == "__main__":
    main()
