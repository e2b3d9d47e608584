"""Settings, Playground and export in headless Chromium against a live stack (fake provider,
gateway with 2 workers, ingester, Redis, ClickHouse), checked through the official SDK and the
rows in ClickHouse: a key created in Settings is shown once and works; editing its rate limit
makes the next requests 429 with the new policy; revoking it gives 401 within the key cache
TTL; a route changed in Settings is followed by the next requests without a restart; the
Playground streams an answer, and "Open in Playground" reproduces a request; export downloads
exactly the filtered rows. Screenshots go to test-artifacts/screenshots/."""

from __future__ import annotations

import csv
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from devstack.fake_openai import REPLY_TEXT
from devstack.servers import ClickHouseServer, RedisServer
from gateway.admin.secrets import new_master_key
from tests.e2e.harness import Floopy
from tests.integration.analytics.conftest import drop_database, new_database

from .conftest import PAGE_TIMEOUT_S, _driver, screenshot

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ORG, OPS_ORG = "org-ui", "org-ops"
ADMIN = "sk-floopy-ui-admin"
READER = "sk-floopy-ui-read"
OPS = "sk-floopy-ui-ops"
TTL_S = 1.0
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]


@dataclass
class Live:
    stack: Floopy
    driver: WebDriver
    downloads: Path

    @property
    def url(self) -> str:
        return self.stack.gateway_url

    def open(self, page: str, key: str = ADMIN) -> None:
        self.driver.get(f"{self.url}/console?key={key}#/{page}")
        self.wait_ready()

    def wait_ready(self) -> None:
        WebDriverWait(self.driver, PAGE_TIMEOUT_S).until(
            lambda d: d.find_element(By.ID, "main").get_attribute("data-ready") == "1"
        )
        assert self.driver.find_element(By.ID, "banner").text == ""

    def until(self, condition: Callable[[WebDriver], object], timeout_s: float = 20) -> None:
        """Wait for ``condition``; an element replaced while it is read (a section re-rendered
        after a save) is read again."""
        WebDriverWait(
            self.driver, timeout_s, ignored_exceptions=(StaleElementReferenceException,)
        ).until(condition)

    def wait(self, css: str, timeout_s: float = 20) -> WebElement:
        try:
            self.until(
                lambda d: any(e.is_displayed() for e in d.find_elements(By.CSS_SELECTOR, css)),
                timeout_s,
            )
        except TimeoutException:
            screenshot(self.driver, "failed-wait")  # what the page showed instead
            raise
        return next(e for e in self.driver.find_elements(By.CSS_SELECTOR, css) if e.is_displayed())

    def fill(self, form: WebElement, name: str, value: str) -> None:
        field = form.find_element(By.NAME, name)
        field.clear()
        field.send_keys(value)

    def sdk(self, key: str) -> openai.OpenAI:
        return self.stack.sdk(key, max_retries=0)


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
    clickhouse_server: ClickHouseServer,
) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("live-console")
    stack = Floopy(root, redis_server, clickhouse_server)
    ch = new_database(clickhouse_server)  # schema and rollup tables before the pages ask
    stack.database = ch.database
    stack.config = {
        "orgs": {ORG: {"name": "UI"}, OPS_ORG: {"name": "Operators"}},
        "keys": {
            "key-ui-admin": {"org": ORG, "secret": ADMIN, "permissions": ["proxy", "admin"]},
            "key-ui-read": {"org": ORG, "secret": READER, "permissions": ["read"]},
            "key-ui-ops": {"org": OPS_ORG, "secret": OPS, "permissions": ["proxy", "admin"]},
        },
    }
    upstream = {"base_url": f"http://127.0.0.1:{stack.provider_port}/v1", "api_key": "sk-up"}
    providers = [{"name": "primary", **upstream}, {"name": "backup", **upstream}]
    downloads = root / "downloads"
    downloads.mkdir()
    driver = None
    try:
        stack.start_provider()
        stack.start_ingester()
        stack.start_gateway(
            workers=2,
            FLOOPY_GATEWAY_PROVIDERS=json.dumps(providers),
            FLOOPY_GATEWAY_OPERATOR_ORGS=json.dumps([OPS_ORG]),
            FLOOPY_GATEWAY_KEY_CACHE_TTL_S=str(TTL_S),
            FLOOPY_GATEWAY_MASTER_KEY=new_master_key(),
            FLOOPY_GATEWAY_CLICKHOUSE__PORT=str(clickhouse_server.port),
            FLOOPY_GATEWAY_CLICKHOUSE__DATABASE=ch.database,
        )
        driver = _driver(Path(tempfile.mkdtemp(dir=root)), downloads)
        yield Live(stack, driver, downloads)
    finally:
        if driver is not None:
            driver.quit()
        stack.stop_all()
        drop_database(ch)


@pytest.fixture(scope="module")
def created_key(live: Live) -> dict[str, str]:
    """A key made in Settings > API keys (the first test checks it is shown once and works)."""
    live.open("settings?tab=keys")
    live.driver.find_element(By.ID, "create-key").click()
    form = live.wait("#settings-form")
    live.fill(form, "name", "ui-made")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    secret = live.wait("#new-secret").text
    screenshot(live.driver, "settings-new-key")
    rows = live.driver.find_elements(By.CSS_SELECTOR, "#keys-table tbody tr")
    key_id = next(str(r.get_attribute("data-id")) for r in rows if r.text.startswith("ui-made"))
    return {"secret": secret, "key_id": key_id}


def _key_row(live: Live, key_id: str) -> WebElement:
    return live.driver.find_element(By.CSS_SELECTOR, f"#keys-table tr[data-id='{key_id}']")


def test_a_key_created_in_settings_is_shown_once_and_works(
    live: Live, created_key: dict[str, str]
) -> None:
    secret = created_key["secret"]
    assert secret.startswith("sk-floopy-") and len(secret) > 40
    reply = live.sdk(secret).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HELLO
    )
    assert reply.http_response.status_code == 200
    live.open("settings?tab=keys")
    row = _key_row(live, created_key["key_id"])
    assert "active" in row.text and "proxy" in row.text
    assert secret not in live.driver.page_source  # shown once, never again


def test_editing_the_rate_limit_in_settings_makes_the_next_requests_429(
    live: Live, created_key: dict[str, str]
) -> None:
    live.open("settings?tab=keys")
    _key_row(live, created_key["key_id"]).find_element(By.CSS_SELECTOR, ".edit").click()
    form = live.wait("#settings-form")
    live.fill(form, "rate_limit_policy", "2;w=3600")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    live.until(lambda d: not d.find_element(By.ID, "panel").is_displayed())
    assert "2;w=3600" in _key_row(live, created_key["key_id"]).text
    time.sleep(TTL_S + 0.2)  # every worker's key cache has expired
    client = live.sdk(created_key["secret"])
    refusal: openai.RateLimitError | None = None
    for _ in range(4):
        try:
            client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        except openai.RateLimitError as exc:
            refusal = exc
            break
    assert refusal is not None, "the edited limit of 2 per hour never refused"
    assert '"key";q=2;w=3600' in refusal.response.headers["ratelimit-policy"]
    assert refusal.response.json()["error"]["code"] == "RATE_LIMIT_EXCEEDED"


def test_revoking_in_settings_gives_401_within_the_key_cache_ttl(
    live: Live, created_key: dict[str, str]
) -> None:
    live.open("settings?tab=keys")
    revoke = _key_row(live, created_key["key_id"]).find_element(By.CSS_SELECTOR, ".danger")
    revoke.click()
    assert revoke.text == "Confirm revoke"
    revoke.click()
    revoked_at = time.monotonic()
    live.until(lambda d: "revoked" in _key_row(live, created_key["key_id"]).text)

    def refused() -> bool:
        try:  # a new client, so a new connection: granian spreads them over both workers
            live.sdk(created_key["secret"]).chat.completions.create(
                model="gpt-4o-mini", messages=HELLO
            )
        except openai.AuthenticationError:
            return True
        except openai.RateLimitError:
            return False
        return False

    # refused by both workers: the one that revoked at once, the other within the TTL
    live.stack.wait_for(
        lambda: all(refused() for _ in range(8)), timeout_s=10, what="revocation everywhere"
    )
    assert time.monotonic() - revoked_at <= TTL_S + 1.5


def _provider_of_next_request(live: Live) -> str:
    reply = live.sdk(ADMIN).chat.completions.with_raw_response.create(
        model="gpt-4o",
        messages=HELLO,
        extra_headers={"Floopy-Cache-Enabled": "false"},  # a cache hit calls no provider
    )
    return str(reply.headers["floopy-provider"])


def test_a_route_changed_in_settings_is_followed_without_a_restart(live: Live) -> None:
    assert _provider_of_next_request(live) == "primary"
    live.open("settings?tab=routing", key=OPS)
    states = live.driver.find_elements(By.CSS_SELECTOR, "#providers-table td.breaker")
    assert [s.text for s in states] == ["closed", "closed"]
    live.driver.find_element(By.ID, "add-route").click()
    form = live.wait("#settings-form")
    live.fill(form, "model", "gpt-4o")
    live.fill(form, "targets", "backup, primary")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    live.wait("#routes-table tr[data-id='gpt-4o']")
    changed_at = time.monotonic()
    # followed by both workers (each polls on its own clock): 8 requests in a row on backup
    live.stack.wait_for(
        lambda: {_provider_of_next_request(live) for _ in range(8)} == {"backup"},
        timeout_s=15,
        what="the new route on every worker",
    )
    assert time.monotonic() - changed_at < 10  # the workers poll every 2 s
    screenshot(live.driver, "settings-routing")


def test_playground_streams_and_open_in_playground_reproduces_a_request(live: Live) -> None:
    listed = httpx.get(f"{live.url}/v1/models", headers={"Authorization": f"Bearer {ADMIN}"})
    if listed.status_code == 200:  # the gateway lists models: the Playground offers exactly them
        offered = sorted(m["id"] for m in listed.json()["data"])
    else:  # not yet: what the routes and providers name
        routing = httpx.get(
            f"{live.url}/admin/routing", headers={"Authorization": f"Bearer {ADMIN}"}
        )
        offered = routing.json()["models"]
    live.open("playground")
    options = live.driver.find_elements(By.CSS_SELECTOR, "#pg-models option")
    assert [o.get_attribute("value") for o in options] == offered
    form = live.driver.find_element(By.ID, "pg-form")
    model = form.find_element(By.ID, "pg-model")
    model.clear()
    model.send_keys("gpt-4o-mini")
    form.find_element(By.CSS_SELECTOR, ".pg-message .content").send_keys("Say hello to Ada")
    form.find_element(By.ID, "pg-temperature").send_keys("0.3")
    assert form.find_element(By.ID, "pg-stream").is_selected()
    form.find_element(By.ID, "pg-run").click()
    result = live.wait(".pg-result[data-model='gpt-4o-mini']")
    live.until(lambda d: result.find_element(By.CSS_SELECTOR, ".answer").text == REPLY_TEXT)
    live.until(lambda d: "$" in result.find_element(By.CSS_SELECTOR, ".stats").text)
    assert "streamed" in result.find_element(By.CSS_SELECTOR, ".status").text
    link = result.find_element(By.CSS_SELECTOR, "a.record-link")
    request_id = str(link.get_attribute("href")).rsplit("=", 1)[1]
    screenshot(live.driver, "playground")
    rows = live.stack.query(
        "SELECT stream, property_keys, property_values, request_header_keys, "
        "response_header_keys FROM requests FINAL WHERE request_id = %(id)s",
        {"id": request_id},
    )
    stream, prop_keys, prop_values, request_headers, response_headers = rows[0]
    assert stream == 1 and dict(zip(prop_keys, prop_values, strict=True)) == {
        "source": "playground"
    }
    assert "floopy-property-source" in request_headers and "authorization" not in request_headers
    assert "floopy-request-id" in response_headers

    link.click()  # back to its record, then "Open in Playground"
    live.wait_ready()
    panel = live.wait("#request-headers")
    assert "floopy-property-source" in panel.text and "authorization" not in panel.text.lower()
    live.driver.execute_script(
        "arguments[0].scrollIntoView()", live.driver.find_element(By.ID, "response-body")
    )
    screenshot(live.driver, "requests-headers")
    live.driver.execute_script("document.getElementById('panel').scrollTop = 0")
    live.driver.find_element(By.ID, "open-in-playground").click()
    loaded = live.wait("#pg-form[data-loaded-from]")
    assert loaded.get_attribute("data-loaded-from") == request_id
    assert loaded.find_element(By.ID, "pg-model").get_attribute("value") == "gpt-4o-mini"
    assert loaded.find_element(By.ID, "pg-temperature").get_attribute("value") == "0.3"
    assert loaded.find_element(By.ID, "pg-stream").is_selected()
    contents = [
        m.get_attribute("value")
        for m in loaded.find_elements(By.CSS_SELECTOR, ".pg-message .content")
    ]
    assert contents == ["Say hello to Ada"]

    loaded.find_element(By.ID, "pg-model-b").send_keys("gpt-4o")  # side by side
    loaded.find_element(By.ID, "pg-stream").click()
    loaded.find_element(By.ID, "pg-run").click()
    for name in ("gpt-4o-mini", "gpt-4o"):
        column = live.wait(f".pg-result[data-model='{name}']")

        def priced(d: WebDriver, c: WebElement = column) -> bool:
            return "$" in c.find_element(By.CSS_SELECTOR, ".stats").text

        live.until(priced)
        assert column.find_element(By.CSS_SELECTOR, ".answer").text == REPLY_TEXT
    screenshot(live.driver, "playground-compare")


def _downloaded(live: Live, suffix: str, before: set[Path]) -> Path:
    def done() -> bool:
        return any(p.suffix == suffix and p not in before for p in live.downloads.iterdir())

    live.stack.wait_for(done, timeout_s=20, what=f"a {suffix} download")
    return next(p for p in live.downloads.iterdir() if p.suffix == suffix and p not in before)


def test_export_downloads_exactly_the_filtered_rows(live: Live) -> None:
    live.open("requests?property=source:playground")
    shown = [
        str(r.get_attribute("data-id"))
        for r in live.driver.find_elements(By.CSS_SELECTOR, "#requests-table tbody tr")
    ]
    want = live.stack.query(
        "SELECT request_id FROM requests FINAL WHERE has(property_values, 'playground') "
        "ORDER BY created_at_ms DESC, request_id DESC"
    )
    assert shown == [r[0] for r in want] and len(shown) == 3
    before = set(live.downloads.iterdir())
    live.driver.find_element(By.ID, "export-csv").click()
    with _downloaded(live, ".csv", before).open() as f:
        assert [row["request_id"] for row in csv.DictReader(f)] == shown
    before = set(live.downloads.iterdir())
    live.driver.find_element(By.ID, "export-jsonl").click()
    lines = _downloaded(live, ".jsonl", before).read_text().splitlines()
    assert [json.loads(line)["request_id"] for line in lines] == shown


def test_settings_read_only_for_a_read_key_and_the_audit_log(live: Live) -> None:
    live.open("settings?tab=keys", key=READER)
    assert live.driver.find_element(By.ID, "read-only").is_displayed()
    assert not live.driver.find_elements(By.ID, "create-key")
    assert not live.driver.find_elements(By.CSS_SELECTOR, "#keys-table .edit")
    screenshot(live.driver, "settings-keys-read-only")
    live.open("settings?tab=routing", key=READER)
    assert not live.driver.find_elements(By.ID, "add-route")
    assert "backup → primary" in live.driver.find_element(By.ID, "routes-table").text

    live.open("settings?tab=audit")
    actions = [
        r.get_attribute("data-action")
        for r in live.driver.find_elements(By.CSS_SELECTOR, "#audit-table tbody tr")
    ]
    assert actions[:3] == ["key.revoke", "key.update", "key.create"]
    table = live.driver.find_element(By.ID, "audit-table").text
    assert 'limits.rate_limit_policy: "" → "2;w=3600"' in table
    assert "sk-floopy-" not in table
    screenshot(live.driver, "settings-audit")
    live.open("settings?tab=audit", key=OPS)
    assert "route.put" in live.driver.find_element(By.ID, "audit-table").text

    live.open("settings?tab=limits")
    cards = live.driver.find_element(By.ID, "plan-cards").text
    assert "10,000 requests per minute" in cards and "no quota" in cards
    assert "operator action" in live.driver.find_element(By.ID, "main").text
    screenshot(live.driver, "settings-limits")


def test_cache_and_firewall_render_the_orgs_fields(live: Live) -> None:
    org: dict[str, Any] = httpx.get(
        f"{live.url}/admin/orgs/{ORG}", headers={"Authorization": f"Bearer {ADMIN}"}
    ).json()
    live.open("settings?tab=cache")
    for section in ("cache", "firewall"):
        box = live.driver.find_element(By.ID, f"section-{section}")
        if org.get(section) is None:
            assert "not configured yet" in box.text
        else:
            names = {e.get_attribute("name") for e in box.find_elements(By.CSS_SELECTOR, "[name]")}
            assert names == set(org[section])
    screenshot(live.driver, "settings-cache")
    if org.get("firewall") is None:
        return
    box = live.driver.find_element(By.ID, "section-firewall")
    box.find_element(By.NAME, "honour_header").click()
    live.fill(box, "flag_threshold", "0.4")
    box.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    live.until(
        lambda _: (
            not httpx.get(
                f"{live.url}/admin/orgs/{ORG}", headers={"Authorization": f"Bearer {ADMIN}"}
            ).json()["firewall"]["honour_header"]
        )
    )
    saved = httpx.get(
        f"{live.url}/admin/orgs/{ORG}", headers={"Authorization": f"Bearer {ADMIN}"}
    ).json()["firewall"]
    assert saved == {**org["firewall"], "honour_header": False, "flag_threshold": 0.4}
    live.open("settings?tab=audit")
    newest = live.driver.find_element(By.CSS_SELECTOR, "#audit-table tbody tr")
    assert newest.get_attribute("data-action") == "firewall.put"
    assert "honour_header: true → false" in newest.text


def test_an_omitted_body_is_not_stored_and_the_panel_says_why(live: Live) -> None:
    reply = live.sdk(ADMIN).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "private prompt"}],
        extra_headers={"floopy-omit-request": "true", "floopy-user-id": "omit-check"},
    )
    request_id = reply.headers["floopy-request-id"]
    live.stack.wait_for(
        lambda: bool(
            live.stack.query("SELECT 1 FROM requests WHERE request_id = %(id)s", {"id": request_id})
        ),
        what="the record",
    )
    ((request_body, response_body, redacted),) = live.stack.query(
        "SELECT request_body, response_body, bodies_redacted FROM requests FINAL "
        "WHERE request_id = %(id)s",
        {"id": request_id},
    )
    assert request_body == "" and REPLY_TEXT in response_body and redacted == 1
    live.open(f"requests?open={request_id}")
    panel = live.wait("#request-body")
    assert panel.text == "(not stored: floopy-omit-request)"
    assert REPLY_TEXT in live.driver.find_element(By.ID, "response-body").text
    assert not live.driver.find_element(By.ID, "open-in-playground").is_enabled()
