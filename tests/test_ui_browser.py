"""The MLflow UI as a new user meets it: a real `mlflow server`, a small real sweep and a
promote run as the CLI, then Debian's headless Chromium (driven by selenium) opens the
URLs the sweep printed and finds the trials by name with their fid, a sample grid, and
the champion in the registry. Screenshots, each taken once what it shows has loaded and
checked not blank, go under the test's tmp_path, and to benchmarks/ui_screenshots/ when
GAN_PIPELINES_SCREENSHOTS=1 (so a person can look)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import CHROMEDRIVER, CHROMIUM, missing_outside_ci

SHOTS_ENV = "GAN_PIPELINES_SCREENSHOTS"
REPO = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(missing_outside_ci(not (CHROMIUM.exists() and CHROMEDRIVER.exists())),
                       reason="needs Debian's chromium and chromium-driver (.ci/run installs them)"),
]

# A budget no periodic eval fits in: epochs 1 and 2 are not scored, the last one is; every
# epoch still has its sample grid.
EPOCHS = 3
SPACE = {"params": {
    "dataset": "mnist-5k", "arch": "mlp", "mlp_width": 16, "epochs": EPOCHS, "eval_every": 1,
    "eval_samples": 200, "latent_dim": 16, "batch_size": 128, "device": "cpu", "eval_budget": 1e-6,
    "lr_g": {"type": "float", "low": 1e-4, "high": 2e-3, "log": True},
    "loss": {"type": "categorical", "choices": ["bce", "hinge"]},
}}


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> tuple[str, str]:
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout, done.stderr


def _wait_for(driver, check, what: str, timeout: float = 45):
    """check(driver)'s first truthy value."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if found := check(driver):
            return found
        time.sleep(0.5)
    raise AssertionError(f"the page never showed {what}; it shows: {_text(driver)[:1500]}")


def _text(driver) -> str:
    return driver.find_element("tag name", "body").text


# Every image in the window has arrived and decoded (none still loading, none broken).
_IMAGES_LOADED = """
return document.readyState === "complete" && [...document.images].filter(i => {
    const r = i.getBoundingClientRect();
    return r.width > 0 && r.height > 0 && r.bottom > 0 && r.top < innerHeight;
}).every(i => i.complete && i.naturalWidth > 0);
"""
# The sample grid: an image of at least 512 px, loaded.
_GRID = "return [...document.images].find(i => i.complete && i.naturalWidth >= 512) || null;"
# A chart (Plotly's svg) at its full size with a line drawn in it.
_CHART = """
return [...document.querySelectorAll(".js-plotly-plot")].find(p => {
    const r = p.getBoundingClientRect();
    return r.width > 200 && r.height > 100 && [...p.querySelectorAll("path.js-line")].some(
        l => (l.getAttribute("d") || "").length > 10);
}) || null;
"""


def _colours(image) -> int:
    """How many distinct colours an image has (4096: that many or more)."""
    found = image.convert("RGB").getcolors(maxcolors=4096)
    return 4096 if found is None else len(found)


def _shot(driver, folder: Path, name: str, target: str | None = None) -> None:
    """A screenshot once the page's images have loaded and, with `target` (a script
    returning the element the shot is for), once that element shows: the page is not
    blank, and neither is the target's own region (a black grid shows as 8 colours, a real
    one as hundreds)."""
    from PIL import Image

    _wait_for(driver, lambda d: d.execute_script(_IMAGES_LOADED), f"{name}: its images loaded")
    box = None
    if target is not None:
        element = _wait_for(driver, lambda d: d.execute_script(target), f"{name}: what it is for")
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
        box = driver.execute_script("const r = arguments[0].getBoundingClientRect(), k = devicePixelRatio;"
                                    "return [r.left * k, r.top * k, r.right * k, r.bottom * k];", element)
    path = folder / f"{name}.png"
    driver.save_screenshot(str(path))
    with Image.open(path) as shot:
        page = _colours(shot)
        region = _colours(shot.crop(tuple(round(v) for v in box))) if box else None
    assert page > 16, f"{path} is blank ({page} colours)"
    assert region is None or region > 64, f"{path}: what it is for is blank ({region} colours in {box})"


def test_a_new_user_finds_the_best_trial_its_samples_and_the_champion(mlflow_server, browser, tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", None)  # the product's own sampling, short trials too
    space = tmp_path / "ui.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    out, progress = _cli(["sweep", "--space", str(space), "--trials", "3", "--concurrency", "2", "--scheduler", "none",
                "--name", "ui", "--experiment", "ui-test", "--ray-storage", str(tmp_path / "ray")], env, tmp_path)
    _cli(["promote", "--sweep", "ui", "--model-name", "ui-gen"], env, tmp_path)
    urls = dict(re.findall(r"^\s+(trials, best first|best trial|sweep report):\s+(\S+)$", out, re.M))
    assert set(urls) == {"trials, best first", "best trial", "sweep report"}, out

    from pipelines.tracking.store import client_for

    client = client_for(mlflow_server)
    best_id = urls["best trial"].split("/runs/")[1].split("?")[0]
    best = client.get_run(best_id)
    trials = client.search_runs([best.info.experiment_id], "tags.sweep_name = 'ui' and tags.tune_trial_id LIKE '%'")
    names = [t.info.run_name for t in trials]
    assert len(names) == 3 and all(n.startswith("t0") and len(n) <= 32 for n in names)
    assert all(f"{n}:" in progress for n in names), progress  # the console names trials as MLflow does
    assert "gan-pipeline promote --sweep ui" in out  # what to do next
    shots = tmp_path / "screenshots"
    shots.mkdir()

    # 1. the printed trials URL: the runs table (not the GenAI view), every trial by its
    # name, the fid columns, best first
    browser.get(urls["trials, best first"])
    browser.execute_script("localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false')")  # room for the table
    browser.get(urls["trials, best first"])
    _wait_for(browser, lambda d: all(n in _text(d) for n in names), f"the trial names {names}")
    def headers(d) -> list[str]:
        return [h.text for h in d.find_elements("css selector", "[role=columnheader]")]

    _wait_for(browser, lambda d: {"best_fid", "fid", "lr_g", "loss"} <= set(headers(d)), "the fid and param columns")
    text = _text(browser)
    assert text.index(best.info.run_name) < min(text.index(n) for n in names if n != best.info.run_name)
    _shot(browser, shots, "1_trials_best_first")

    # 2. the best trial's page: its description says how it ended and its rank
    browser.get(urls["best trial"])
    _wait_for(browser, lambda d: "#1 of 3" in _text(d), "the best trial's description")
    _shot(browser, shots, "2_best_trial")

    # 3. a sample grid, under the name every trial shares
    grid = f"{urls['best trial'].split('?')[0]}/artifactPath/grids/epoch_002.png?workflowType=machine_learning"
    browser.get(grid)

    def image_loaded(d) -> bool:
        return any(d.execute_script("return arguments[0].naturalWidth", img) >= 512
                   for img in d.find_elements("tag name", "img"))

    _wait_for(browser, image_loaded, "the 512 px sample grid")
    _shot(browser, shots, "3_sample_grid", target=_GRID)
    # ...and every trial has one at every epoch, scored or not (the budget scored only the last)
    for t in trials:
        assert [m.value for m in client.get_metric_history(t.info.run_id, "epoch")] == [EPOCHS]  # one eval scored
        base = urls["best trial"].split("/runs/")[0] + f"/runs/{t.info.run_id}"
        for epoch in range(1, EPOCHS + 1):
            browser.get(f"{base}/artifactPath/grids/epoch_{epoch:03d}.png?workflowType=machine_learning")
            _wait_for(browser, image_loaded, f"{t.info.run_name}'s grid of epoch {epoch}")

    # 3b. the shortest trial's page has system metrics charts (sampled however short it ran)
    shortest = min(trials, key=lambda t: t.data.metrics.get("system/wall_s", 1e9))
    assert any(k.startswith("system/cpu") for k in shortest.data.metrics), shortest.data.metrics
    browser.get(urls["best trial"].split("/runs/")[0] + f"/runs/{shortest.info.run_id}/system-metrics"
                "?workflowType=machine_learning")
    _wait_for(browser, lambda d: "cpu_utilization_percentage" in _text(d), "a system metrics chart")
    _shot(browser, shots, "3b_system_metrics_shortest_trial", target=_CHART)

    # 4. the sweep's report: the parent's description has the top trials as a table
    browser.get(urls["sweep report"])
    _wait_for(browser, lambda d: all(n in _text(d) for n in names), "the parent's table of trials")
    _shot(browser, shots, "4_sweep_report")

    # 5. the registry: the champion alias on the promoted version
    browser.get(f"{mlflow_server}/#/models/ui-gen")
    _wait_for(browser, lambda d: "champion" in _text(d), "the champion alias")
    _shot(browser, shots, "5_registry_champion")

    if os.environ.get(SHOTS_ENV):
        dest = REPO / "benchmarks" / "ui_screenshots"
        dest.mkdir(parents=True, exist_ok=True)
        for png in shots.glob("*.png"):
            shutil.copy(png, dest / png.name)
