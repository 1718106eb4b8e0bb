"""The console in a real browser: Debian's chromium, driven by Playwright for Python, against the
gateway served by uvicorn over the demo city's policies. One browser for the module, a fresh
context (no stored token, no GraphiQL tabs) per test. Every request the pages make must go to
the gateway itself: one to any other origin fails the test. Screenshots go to each test's tmp
directory. Without chromium the tests fail (never skip): `make test` installs it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Request, expect, sync_playwright

from datasets.commands import ANONYMOUS_EXAMPLE, demo_page
from datasets.demo import admin_token, issue_token, secure_demo
from gateway.config import Config
from gateway.execution.engines import create_engine
from gateway.execution.gateway import Gateway
from gateway.http.app import create_app
from tests.conftest import uvicorn_thread

# Chromium, from `make browser`: not part of the fast layer
pytestmark = pytest.mark.services

CHROMIUM = os.environ.get("CITYGATE_CHROMIUM", "/usr/bin/chromium")
# No first-run, sync, update or background traffic: the only requests are the pages' own.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT = 15_000  # ms: a page of the demo city renders in well under a second


@dataclass
class Served:
    url: str
    data_dir: Path


@pytest.fixture(scope="module")
def served(sqlite_config: Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data_dir = tmp_path_factory.mktemp("console-browser")
    config = secure_demo(sqlite_config, data_dir)
    gateway = Gateway.start(config, create_engine(config))
    page = demo_page(data_dir, ttl=3600)  # as `citygate demo` serves it
    with uvicorn_thread(create_app(gateway, example=ANONYMOUS_EXAMPLE, demo=page)) as port:
        yield Served(f"http://127.0.0.1:{port}", data_dir)
    gateway.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"no chromium at {CHROMIUM}: install it with `make browser` (apt-get install chromium)", False)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield launched
        launched.close()


@dataclass
class Tab:
    page: Page
    elsewhere: list[str]  # requests to any origin but the gateway's


@pytest.fixture
def tab(browser: Browser, served: Served) -> Iterator[Tab]:
    context: BrowserContext = browser.new_context(viewport={"width": 1400, "height": 900}, locale="zh-CN")
    elsewhere: list[str] = []

    def watch(request: Request) -> None:
        if not request.url.startswith((served.url, "data:", "blob:", "about:")):
            elsewhere.append(request.url)

    context.on("request", watch)
    page = context.new_page()
    page.set_default_timeout(WAIT)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield Tab(page, elsewhere)
    context.close()
    assert not elsewhere, f"requests left the gateway's origin: {elsewhere}"
    assert not errors, f"the page raised: {errors}"


def paste_token(page: Page, token: str) -> None:
    """Paste a token once, in the bar every console page has; the page reloads as that caller."""
    page.fill("#token", token)
    with page.expect_navigation():
        page.click("#token-form button[type=submit]")


def test_graphiql_runs_the_example_query_with_a_pasted_token(tab: Tab, served: Served, tmp_path: Path) -> None:
    page = tab.page
    page.goto(f"{served.url}/graphql")
    expect(page.locator(".graphiql-container")).to_be_visible()
    paste_token(page, issue_token(served.data_dir, "health_analyst", {}, 600))
    expect(page.locator("#token-state")).to_have_text("token set")
    editor = page.locator(".graphiql-query-editor")
    expect(editor).to_contain_text("VisitsInNancheng")
    page.click(".graphiql-execute-button")
    response = page.locator(".result-window")
    # As health_analyst: diagnoses raw, the resident's name masked to its first character.
    expect(response).to_contain_text('"health_clinic_visits_group_by"')
    expect(response).to_contain_text('"district": "南城"')
    expect(response).to_contain_text('"diagnosis"')
    assert "*" in response.inner_text()
    page.screenshot(path=tmp_path / "graphiql.png")


def test_the_catalogue_browses_to_columns_and_opens_a_sample_in_graphiql(
    tab: Tab, served: Served, tmp_path: Path
) -> None:
    page = tab.page
    page.goto(f"{served.url}/console")
    paste_token(page, issue_token(served.data_dir, "district_officer", {"district": "南城"}, 600))
    expect(page.locator("#catalogue-role")).to_contain_text("district_officer")
    page.fill("#search", "门诊")
    page.click("#search-form button[type=submit]")
    expect(page.locator("[data-department]")).to_have_count(1)
    page.click("[data-resource=health_clinic_visits]")
    row = page.locator("#resource [data-column=hospital]")
    expect(row).to_contain_text("published (发布)")
    expect(row).to_contain_text("aggregate only (k=5)")
    expect(page.locator("#resource [data-column=diagnosis]")).to_contain_text("denied")
    page.screenshot(path=tmp_path / "catalogue.png", full_page=True)
    with page.expect_navigation():
        page.click("#open-in-graphiql")
    expect(page.locator(".graphiql-query-editor")).to_contain_text("health_clinic_visits_group_by")
    page.click(".graphiql-execute-button")
    expect(page.locator(".result-window")).to_contain_text('"hospital"')
    page.screenshot(path=tmp_path / "catalogue-sample-in-graphiql.png")
    docs = os.environ.get("CITYGATE_SCREENSHOTS")  # where the README's pictures are refreshed from
    if docs:
        shutil.copy(tmp_path / "catalogue.png", Path(docs) / "console-catalogue.png")


def test_view_as_role_shows_decisions_sql_and_answer(tab: Tab, served: Served, tmp_path: Path) -> None:
    page = tab.page
    page.goto(f"{served.url}/console#view-as")
    page.fill("#admin-token", admin_token(served.data_dir))
    page.dispatch_event("#admin-token", "change")
    expect(page.locator("#role option")).to_have_count(7)  # the demo policies' roles, citizen included
    page.select_option("#role", "district_officer")
    page.fill("#claims", "district=南城")
    page.fill("#query", "{ public_security_residents(limit: 3, order_by: [{name: asc}]) { name phone district } }")
    page.click("#view-as-form button[type=submit]")
    expect(page.locator("#answer")).to_contain_text('"district": "南城"')
    residents = page.locator("[data-table='public_security.residents']")
    expect(residents).to_contain_text("row filter: district = :claims.district")
    expect(residents.locator("[data-column=phone]")).to_contain_text("partial(3,4)")
    expect(residents.locator("[data-column=phone]")).to_contain_text("rule for public_security.residents.phone")
    sql = page.locator("pre.sql").first
    expect(sql).to_contain_text("'南城'")
    expect(sql).to_contain_text("<key>")  # the tie-break on the masked key, its key redacted
    page.screenshot(path=tmp_path / "view-as.png")  # the answer, its SQL and the first decisions
    docs = os.environ.get("CITYGATE_SCREENSHOTS")
    if docs:
        shutil.copy(tmp_path / "view-as.png", Path(docs) / "console-view-as.png")


def test_graphiql_opens_with_an_example_anonymous_can_run_and_offers_the_demo_roles(tab: Tab, served: Served) -> None:
    """It once opened as anonymous with an example whose six health fields anonymous may not ask for."""
    page = tab.page
    page.goto(f"{served.url}/graphql")
    editor = page.locator(".graphiql-query-editor")
    expect(editor).to_contain_text("query Stations")
    page.click(".graphiql-execute-button")
    expect(page.locator(".result-window")).to_contain_text('"transport_stations"')
    assert '"errors"' not in page.locator(".result-window").inner_text()
    with page.expect_navigation():
        page.select_option("#demo-role", "health_analyst")
    expect(page.locator("#token-state")).to_have_text("acting as health_analyst")
    expect(editor).to_contain_text("VisitsInNancheng")  # the role's own example
    page.click(".graphiql-execute-button")
    expect(page.locator(".result-window")).to_contain_text('"health_clinic_visits_group_by"')
    assert '"errors"' not in page.locator(".result-window").inner_text()
