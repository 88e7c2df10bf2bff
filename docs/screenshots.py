"""The screenshots of README.md and docs/stack.md, taken against the real servers: re-run this
when a UI changes (about 3 minutes on two cores).

    .venv/bin/python docs/screenshots.py     # writes docs/images/*.png

It copies this checkout's project files into a temporary directory, starts `shrinkflow up` there
(Prefect and MLflow on free ports, no deployment served) and runs `shrinkflow run` beside it with
short training (a flow run of the stack's Prefect, logged to its MLflow; its numbers are near the
default run's, not the same). Then Debian's Chromium, the browser the suite uses, opens what a
user would: the flow run (its stages as they ran), its report artifact, the MLflow link the run
printed (the experiment's training runs with the headline) and the registered version (the
headline and the model card). Each page is shot at 1280x800 as shown and saved as a PNG of 256
colours. MLflow's assistant panel, which opens by itself in a new browser, is closed first.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "docs" / "images"
BIN = Path(sys.executable).parent
CHROMIUM = "/usr/bin/chromium"  # Debian's (the Makefile installs it for `make test`)
PROJECT_FILES = ("dvc.yaml", ".gitignore", "params.yaml", "tasks", "infra")
SHORT_RUN = ("model.epochs=5", "sparsify.epochs=2", "distill.epochs=10", "distill.width=0.5")
PID_FILE = Path(".shrinkflow") / "stack.pid"  # written by `up` once both servers answer
STARTUP_TIMEOUT_S = 400  # Prefect's first start migrates its database: slow on a busy 2-core box
PAGE_TIMEOUT_MS = 60_000
SETTLE_MS = 3000  # for the rest of a page to draw once its text shows
ASSISTANT_CLOSE = '[data-component-id="mlflow.assistant.chat_panel.close"]'  # MLflow 3.17's


def main() -> None:
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
                        "TF_CPP_MIN_LOG_LEVEL": "2"}
    with tempfile.TemporaryDirectory(prefix="shrinkflow-screenshots-") as tmp:
        project = make_project(Path(tmp), env)
        ports = {"prefect_port": free_port(), "mlflow_port": free_port()}
        with open(project / "up.log", "w") as log:
            up = subprocess.Popen(
                [str(BIN / "shrinkflow"), "up", "--set=stack.serve=false",
                 *(f"--set=stack.{key}={port}" for key, port in ports.items())],
                cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                wait_for_stack(project, up)
                summary = shrinkflow(project, env, "run", *(f"--set={s}" for s in SHORT_RUN))
                print(summary[summary.index("stages:"):])  # after the training's logs
                shoot(pages(project, summary, *(f"http://127.0.0.1:{p}" for p in ports.values())))
            finally:
                shrinkflow(project, env, "down")
                up.wait(timeout=120)


def make_project(root: Path, env: dict[str, str]) -> Path:
    """This checkout's project files in `root`, made a git + DVC project by `shrinkflow init`."""
    for name in PROJECT_FILES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, root / name)
    shrinkflow(root, env, "init")
    return root


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def shrinkflow(project: Path, env: dict[str, str], *args: str) -> str:
    """Run the CLI in `project`; its stdout, or its output in the error when it fails."""
    done = subprocess.run([str(BIN / "shrinkflow"), *args], cwd=project, env=env,
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"shrinkflow {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def wait_for_stack(project: Path, up: subprocess.Popen) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not (project / PID_FILE).exists():
        if up.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"`shrinkflow up` did not start:\n{(project / 'up.log').read_text()}")
        time.sleep(1)


def pages(project: Path, summary: str, prefect: str, mlflow: str) -> dict[str, tuple[str, str]]:
    """file name: (URL, a text to wait for). The MLflow runs are the link the run printed."""
    runs_url = re.search(r"all runs (\S+)", summary).group(1)
    version = re.search(r"registered as version (\d+)", summary).group(1)
    model = yaml.safe_load((project / "params.yaml").read_text())["gate"]["registered_model"]
    (flow_run,) = post_json(f"{prefect}/api/flow_runs/filter", {})
    (report,) = post_json(f"{prefect}/api/artifacts/filter",
                          {"artifacts": {"key": {"any_": ["compress-report"]}}})
    return {
        "prefect-flow-run.png": (f"{prefect}/runs/flow-run/{flow_run['id']}", flow_run["name"]),
        "prefect-report.png": (f"{prefect}/artifacts/artifact/{report['id']}",
                               "shrinkflow compress"),
        "mlflow-runs.png": (runs_url, "x smaller (gzip)"),
        "mlflow-model-version.png": (f"{mlflow}/#/models/{model}/versions/{version}",
                                     f"Model card: {model}"),
    }


def post_json(url: str, body: dict) -> list[dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def shoot(shots: dict[str, tuple[str, str]]) -> None:
    """Each page once its text shows and a moment after (both UIs poll their servers all along,
    so the network is never quiet; Prefect draws its run graph on a canvas, with no text)."""
    from playwright.sync_api import sync_playwright

    IMAGES.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM,
                                    args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        for name, (url, text) in shots.items():
            page.goto(url)
            page.get_by_text(text).first.wait_for(timeout=PAGE_TIMEOUT_MS)
            assistant = page.locator(ASSISTANT_CLOSE)
            if assistant.count():
                assistant.click()
            page.wait_for_timeout(SETTLE_MS)
            page.screenshot(path=str(IMAGES / name))
            save_small(IMAGES / name)
            print(f"{IMAGES / name}: {(IMAGES / name).stat().st_size // 1024} KiB")
        browser.close()


def save_small(path: Path) -> None:
    """256 colours, no dithering: a UI's flat colours survive, the file is a third or less."""
    image = Image.open(path).convert("RGB").quantize(256, dither=Image.Dither.NONE)
    image.save(path, optimize=True)


if __name__ == "__main__":
    main()
