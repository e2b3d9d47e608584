"""Headless Chromium (Debian's ``chromium`` + ``chromedriver``, driven by Selenium) against a real
gateway process serving the console, over a ClickHouse database filled through the ingester's
``Delivery`` and rolled up by the real rollup job. Screenshots go to
``test-artifacts/screenshots/``."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from devstack.servers import ClickHouseServer, RedisServer, free_port
from ingester.rollups import Rollups
from shared.records import RequestRecord
from shared.settings import ClickHouseSettings
from tests.integration.analytics.conftest import (
    dataset,
    drop_database,
    make_deliver,
    new_database,
)

SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
KEYS = {
    "sk-floopy-acme-read": {"org_id": "org-acme", "key_id": "k-acme"},
    "sk-floopy-globex-read": {"org_id": "org-globex", "key_id": "k-globex"},
}
PAGE_TIMEOUT_S = 30
CHROME_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1440,1000",
)


@dataclass
class Console:
    url: str
    records: list[RequestRecord]
    driver: webdriver.Chrome

    def open(self, page: str, key: str = "sk-floopy-acme-read") -> None:
        self.driver.get(f"{self.url}/console?key={key}#/{page}")
        self.wait_ready()

    def wait_ready(self) -> None:
        def ready(d: WebDriver) -> bool:
            main = d.find_element(By.ID, "main")
            return main.get_attribute("data-ready") == "1"

        WebDriverWait(self.driver, PAGE_TIMEOUT_S).until(ready)

    def screenshot(self, name: str) -> Path:
        return screenshot(self.driver, name)


def screenshot(driver: WebDriver, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(path))
    return path


def _start_gateway(
    root: Path, redis: RedisServer, ch: ClickHouseSettings
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "FLOOPY_GATEWAY_PORT": str(port),
        "FLOOPY_GATEWAY_REDIS__URL": redis.url,
        "FLOOPY_GATEWAY_API_KEYS": json.dumps(KEYS),
        "FLOOPY_GATEWAY_CLICKHOUSE__PORT": str(ch.port),
        "FLOOPY_GATEWAY_CLICKHOUSE__DATABASE": ch.database,
        "FLOOPY_GATEWAY_ACCESS_LOG": "false",
    }
    with (root / "gateway.log").open("ab") as log:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "floopy-gateway")],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    # a wait, not a measure: two workers loading the embedder on a loaded machine took 65 s
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    raise TimeoutError(f"gateway did not start; see {root}/gateway.log")


def _driver(profile: Path, downloads: Path | None = None) -> webdriver.Chrome:
    """``downloads``: where files the page downloads land (no prompt)."""
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (*CHROME_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    # the console log, where Chromium reports every Content-Security-Policy violation
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    if downloads is not None:
        prefs = {
            "download.default_directory": str(downloads),
            "download.prompt_for_download": False,
        }
        options.add_experimental_option("prefs", prefs)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    if downloads is not None:
        driver.execute_cdp_cmd(
            "Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
        )
    # A chromium that stops answering fails the test after these, instead of hanging it (and
    # pytest-timeout on the module is the backstop for chromedriver itself).
    driver.set_page_load_timeout(PAGE_TIMEOUT_S)
    driver.set_script_timeout(PAGE_TIMEOUT_S)
    return driver


@pytest.fixture(scope="module")
def console(
    clickhouse_server: ClickHouseServer,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Console]:
    root = tmp_path_factory.mktemp("browser")
    ch = new_database(clickhouse_server)
    records = dataset(800, seed=3, days=2)
    deliver, delivery = make_deliver(ch, root / "dead")
    deliver(records)
    deliver(records[:300])  # redelivery: the pages must still count each request once
    delivery.close()
    rollups = Rollups(ch, overlap_s=0)
    rollups.run_changed()
    rollups.close()
    proc, url = _start_gateway(root, redis_server, ch)
    driver = _driver(Path(tempfile.mkdtemp(dir=root)))
    try:
        yield Console(url, records, driver)
    finally:
        driver.quit()
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        drop_database(ch)
