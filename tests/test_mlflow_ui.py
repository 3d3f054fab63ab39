"""The MLflow dashboard in a real browser: after a parallel sweep, `mlflow server` on loopback
against the project's store shows the sweep's runs, and its compare view puts every run's
group_size, act_bits, top1 and mult_eliminated side by side.

Needs Debian's headless Chromium and its driver (`apt-get install chromium chromium-driver`) and
the `selenium` package; skips with the reason where they are missing.
"""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import ON_TRAINED_DIGITS, free_port, runs

from fgq_pipeline import tracking

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SERVER_START_S = 120
PAGE_LOAD_S = 60
SCREENSHOT_DIR_ENV = "FGQ_SCREENSHOT_DIR"  # also keep the screenshots there, to look at them

pytestmark = [
    pytest.mark.slow,
    ON_TRAINED_DIGITS,
    pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                       reason="Debian's chromium and chromium-driver are not installed (/usr/bin/chromium)"),
]
webdriver = pytest.importorskip("selenium.webdriver", reason="the selenium package is not installed")


@pytest.fixture
def mlflow_server(parallel_sweep):
    tmp_path, _, _ = parallel_sweep
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'store.db'}",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # no background job consumers: the UI only
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"mlflow server did not come up on {url}") from None
                time.sleep(1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def browser(tmp_path):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    # No GPU, no network beyond loopback: keep Chromium from reaching for either.
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                     "--no-first-run", "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1800,2400"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def page_text_when(driver, url: str, expected: list[str]) -> str:
    """Load ``url`` and wait until the rendered page shows every string of ``expected``."""
    driver.get(url)
    deadline = time.monotonic() + PAGE_LOAD_S
    while True:
        text = driver.find_element("tag name", "body").text
        missing = [item for item in expected if item not in text]
        if not missing:
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} never showed {missing}; the page read:\n{text[:3000]}")
        time.sleep(1)


def displayed(value: float) -> str:
    """How the MLflow UI prints a metric: rounded to three decimals, trailing zeros dropped."""
    return f"{round(value, 3):g}"


def save_screenshot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    driver.save_screenshot(str(path))
    if os.environ.get(SCREENSHOT_DIR_ENV):
        target = Path(os.environ[SCREENSHOT_DIR_ENV])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / name)
    return path


def test_mlflow_ui_shows_the_sweep_side_by_side(parallel_sweep, mlflow_server, browser, tmp_path):
    store_dir, sweep, _ = parallel_sweep
    all_runs = runs(store_dir / "store.db", "fgq-digits")
    parent_id = tracking.sweep_parent_run_id(sweep)
    jobs = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId") == parent_id]
    assert len(jobs) == 6
    experiment_id = jobs[0].info.experiment_id

    (parent,) = [r for r in all_runs if r.info.run_id == parent_id]
    runs_page = f"{mlflow_server}/#/experiments/{experiment_id}/runs"
    page_text_when(browser, runs_page, [parent.info.run_name])
    assert save_screenshot(browser, tmp_path, "mlflow_runs.png").stat().st_size > 0

    ids = urllib.parse.quote(json.dumps([r.info.run_id for r in jobs]))
    compare = f"{mlflow_server}/#/compare-runs?runs={ids}&experiments={urllib.parse.quote(json.dumps([experiment_id]))}"
    expected = ["Comparing 6 Runs", "quant.group_size", "quant.act_bits", "top1", "mult_eliminated"]
    expected += [r.info.run_name for r in jobs]
    expected += [displayed(r.data.metrics[key]) for r in jobs for key in ("top1", "mult_eliminated")]
    text = page_text_when(browser, compare, expected)
    assert save_screenshot(browser, tmp_path, "mlflow_compare_runs.png").stat().st_size > 0
    params_row = next(line for line in text.splitlines() if line.startswith("quant.group_size "))
    assert sorted(params_row.split()[1:]) == sorted(r.data.params["quant.group_size"] for r in jobs)
