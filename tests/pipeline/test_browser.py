"""What a user sees, in a real browser: the MLflow UI served as `make ui` serves it, after a `dvc repro`.

Headless Chromium (Debian's `chromium`; `.ci/run` installs it) driven through its DevTools
protocol: the run tree, a student's metric charts (the training curve first), and the study
report inside MLflow's artifact preview with every figure loaded. Screenshots go to the test's
temporary folder, or to `$KDFLOW_SCREENSHOTS` (e.g. `docs/figures`) when set.
"""
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.helpers.browser import Browser, chromium_path
from tests.helpers.project import BIN, ROOT, free_port, make_project, mlflow_runs, project_env, run, wait_for
from tests.helpers.study import TINY_STUDY

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(chromium_path() is None, reason="no chromium: apt-get install -y chromium fonts-dejavu-core"),
]

STUDY = dict(TINY_STUDY, students=dict(TINY_STUDY["students"], methods=["ce", "kd", "dhkd"]),
             methods={"ce": {}, "kd": {}, "dhkd": {"aux_head": "linear"}})
ML = "workflowType=machine_learning"  # MLflow 3 opens its GenAI pages without it


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """A project after `dvc repro`, its MLflow UI started by `make ui` on a free loopback port."""
    dest = make_project(tmp_path_factory.mktemp("browser"), STUDY)
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(ROOT / name, dest / name)
    env = project_env(dest)
    run([str(BIN / "dvc"), "repro"], dest, env, timeout=600)
    port = free_port()
    log = open(dest / "ui.log", "w")
    make = subprocess.Popen(["make", "-o", ".venv/.installed", "ui", f"PORT_MLFLOW={port}"], cwd=dest, env=env,
                            start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(f"http://127.0.0.1:{port}/health", 120)
        yield dest, f"http://127.0.0.1:{port}", mlflow_runs(dest / "mlflow.db")
    finally:
        os.killpg(make.pid, signal.SIGINT)
        make.wait(30)
        log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    b = Browser(tmp_path_factory.mktemp("chromium"), width=1400, height=1000)
    yield b
    b.close()


def screenshot(browser: Browser, name: str, tmp_path: Path) -> Path:
    folder = Path(os.environ.get("KDFLOW_SCREENSHOTS", tmp_path))
    path = (ROOT / folder if not folder.is_absolute() else folder) / name
    browser.screenshot(path)
    return path


def close_assistant(browser: Browser) -> None:
    """MLflow 3.17 opens an assistant panel beside every page; a user closes it."""
    browser.evaluate("(() => { const b = document.querySelector('button[aria-label=\"Close\"]'); if (b) b.click(); })()")


def test_the_run_tree(ui, browser, tmp_path):
    _, base, runs = ui
    parent = next(r for r in runs.values() if r["tags"].get("role") == "pipeline")
    browser.goto(f"{base}/#/experiments/{parent['experiment']}/runs?{ML}")
    browser.wait_for(f"document.body.innerText.includes({parent['name']!r})", 60)
    assert "Model training" in browser.evaluate("document.body.innerText")
    # one parent row; its children appear under it once expanded
    assert browser.evaluate("document.querySelectorAll('button[data-component-id*=\"runnamecellrenderer\"]').length") == 1
    browser.evaluate("document.querySelector('button[data-component-id*=\"runnamecellrenderer\"]').click()")
    for child in ("teacher resnet8", "ce seed 0", "kd seed 0", "dhkd seed 0"):
        browser.wait_for(f"Array.from(document.querySelectorAll('a')).some(a => a.innerText === {child!r})", 30)
    close_assistant(browser)
    screenshot(browser, "mlflow_runs.png", tmp_path)


def test_a_student_run_opens_on_its_training_curve(ui, browser, tmp_path):
    _, base, runs = ui
    run_id, student = next((r, v) for r, v in runs.items() if v["name"] == "dhkd seed 0")
    browser.goto(f"{base}/#/experiments/{student['experiment']}/runs/{run_id}/model-metrics?{ML}")
    # the first chart on the page is a line (a curve over the epochs), and it is the training loss
    browser.wait_for("!!document.querySelector('.js-plotly-plot path.js-line')", 60)
    first = browser.evaluate("document.querySelector('.js-plotly-plot').parentElement.parentElement.parentElement.innerText")
    text = browser.evaluate("document.body.innerText")
    assert text.index("dhkd seed 0 (epoch/loss)") < text.index("final"), text[:2000]
    assert "dhkd seed 0 (epoch/loss)" in first, first
    points = browser.evaluate("document.querySelector('.js-plotly-plot path.js-line').getAttribute('d')")
    assert points.count("L") >= 1  # a line through the epochs, not a bar
    close_assistant(browser)
    screenshot(browser, "mlflow_run.png", tmp_path)


def test_the_report_inside_mlflow_shows_every_figure(ui, browser, tmp_path):
    dest, base, runs = ui
    parent = next(r for r, v in runs.items() if v["tags"].get("role") == "pipeline")
    browser.goto(f"{base}/#/experiments/{runs[parent]['experiment']}/runs/{parent}/artifacts/report.html?{ML}")
    frame = None
    for _ in range(100):
        frames = [f for f in browser.frames() if f.get("url", "").startswith("blob:")]
        if frames:
            frame = frames[0]
            break
        browser.evaluate("new Promise(r => setTimeout(r, 300))")
    assert frame is not None, "MLflow's artifact preview did not open report.html"
    context = browser.frame_context(frame["id"])
    browser.wait_for("document.images.length > 0 && Array.from(document.images).every(i => i.complete)", 30, context)
    widths = browser.evaluate("Array.from(document.images).map(i => i.naturalWidth)", context)
    figures = sorted(p.name for p in (dest / "results/figures").glob("*.png"))
    assert len(widths) == len(figures) >= 4 and all(w > 0 for w in widths), (widths, figures)
    body = browser.evaluate("document.body.innerText", context)
    assert parent in body and "Conclusion" in body and "n/a" in body
    close_assistant(browser)
    screenshot(browser, "mlflow_report.png", tmp_path)
