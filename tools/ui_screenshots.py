"""Screenshots of the MLflow UI on a finished hpsearch study, taken with headless Chromium.

    python tools/ui_screenshots.py STUDY_DIR STUDY_NAME --out docs/

STUDY_DIR holds the study's ``mlflow.db`` (and ``mlruns/``), as ``hpsearch run`` leaves them
in its working directory. The script starts ``mlflow ui`` on a free loopback port, then
saves ``ui_experiment.png`` (the experiment page: parent run and its nested trial runs) and
``ui_trial_artifacts.png`` (the best trial's artifacts) in --out, and with --best-trials
``ui_best_trials.png`` (the runs tagged ``hpsearch.best_so_far``). Every page is MLflow's
model-training view, the one ``hpsearch ui`` prints the address of; the script stops rather
than take a screenshot of the GenAI view. Needs Debian's
``chromium`` (``apt-get install chromium``) and the ``playwright`` Python package (which
drives it; ``pip install playwright``, no browser download).
"""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def screenshots(base: str, experiment_id: str, run_id: str, out: Path, *,
                chromium: str, best_filter: str | None = None) -> None:
    """The runs table with the parent run expanded, optionally the runs matching
    ``best_filter``, and one trial's artifacts."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        # Runs tables are short (the parent run and a screenful of trials); a confusion matrix
        # needs the height.
        page = browser.new_page(viewport={"width": 1600, "height": 720})
        # The URL hpsearch prints: MLflow 3's UI shows model training only when asked to.
        page.goto(f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning")
        page.get_by_text("matching runs").wait_for(timeout=60_000)
        _close_assistant(page)
        _check_model_training_view(page)
        # The "+" before a parent run's name shows its nested (trial) runs.
        # (The rows come after the count: seconds later for hundreds of runs on a busy machine.)
        page.locator("button[data-component-id*='runnamecellrenderer']").first.click(
            timeout=90_000)
        page.get_by_text(re.compile(r"^trial-\d{4}$")).first.wait_for(timeout=30_000)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(out / "ui_experiment.png"))
        if best_filter:
            # The trials that were the best when they finished: findable among hundreds. A
            # fresh page (a new tab: a changed hash alone would keep the unfiltered rows for a
            # while) shows every parent run the filter keeps collapsed: expand each.
            page = browser.new_page(viewport={"width": 1600, "height": 720})
            page.goto(f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
                      f"&searchFilter={urllib.parse.quote(best_filter)}")
            page.get_by_text("matching runs").wait_for(timeout=60_000)
            _close_assistant(page)
            _check_model_training_view(page)
            expanders = page.locator("button[data-component-id*='runnamecellrenderer']")
            expanders.first.wait_for(timeout=90_000)
            for i in range(expanders.count()):
                expanders.nth(i).click()
            page.get_by_text(re.compile(r"^trial-\d{4}$")).first.wait_for(timeout=30_000)
            page.wait_for_timeout(1500)
            page.screenshot(path=str(out / "ui_best_trials.png"))
        page.set_viewport_size({"width": 1600, "height": 1100})
        page.goto(f"{base}/#/experiments/{experiment_id}/runs/{run_id}/artifacts/"
                  "confusion_matrix.png?workflowType=machine_learning")
        page.get_by_text("confusion_matrix.json").wait_for(timeout=60_000)
        _close_assistant(page)
        _check_model_training_view(page)
        page.wait_for_timeout(2000)
        page.screenshot(path=str(out / "ui_trial_artifacts.png"))
        browser.close()


def _close_assistant(page) -> None:
    """Close MLflow's assistant side panel, if shown, so the runs get the width."""
    close = page.locator("button[aria-label='Close']")
    if close.count():
        close.first.click()
        page.wait_for_timeout(500)


def _check_model_training_view(page) -> None:
    """Refuse to take a screenshot of MLflow's GenAI view (its side bar lists "Evaluation
    runs" and no "Model registry"): the docs promise the model-training view."""
    genai = page.get_by_text("Evaluation runs", exact=True)
    page.get_by_text("Model registry", exact=True).or_(genai).first.wait_for(timeout=30_000)
    if genai.count():
        raise SystemExit(f"{page.url} shows MLflow's GenAI view, not model training")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study_dir", type=Path)
    parser.add_argument("study_name")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--best-trials", action="store_true",
                        help="also ui_best_trials.png: the runs tagged hpsearch.best_so_far")
    args = parser.parse_args()
    tracking_uri = f"sqlite:///{args.study_dir.resolve() / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(args.study_name)
    if experiment is None:
        sys.exit(f"no experiment {args.study_name!r} in {tracking_uri}")
    runs = client.search_runs([experiment.experiment_id], order_by=["metrics.objective DESC"])
    best = next(r for r in runs if r.data.tags.get("hpsearch.role") == "trial")

    port = free_port()
    mlflow_exe = Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen(
        [str(mlflow_exe), "ui", "--backend-store-uri", tracking_uri, "--host", "127.0.0.1",
         "--port", str(port)], cwd=args.study_dir, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        args.out.mkdir(parents=True, exist_ok=True)
        best_filter = "tags.hpsearch.best_so_far = 'true'" if args.best_trials else None
        screenshots(base, experiment.experiment_id, best.info.run_id, args.out,
                    chromium=args.chromium, best_filter=best_filter)
    finally:
        server.terminate()
        server.wait(timeout=30)
    names = ["ui_experiment.png", "ui_trial_artifacts.png"] + (
        ["ui_best_trials.png"] if args.best_trials else [])
    print("wrote " + ", ".join(str(args.out / name) for name in names))


if __name__ == "__main__":
    main()
