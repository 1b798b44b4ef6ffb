"""How the chat page is served: `/` for a browser (StreamForge's JSON for its clients), its
assets under versioned URLs, its security headers, `/api/agents`, and the page on a server
that requires keys (public, asking for the key, never putting it in a URL)."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import expect

from tests.support.browser import chromium, page_for
from tests.support.server import running_parley

HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
MODELS = [{"name": "echo", "provider": "fake"}]
AGENTS = [
    {"name": "pirate", "system_prompt": "Arr.", "model": "echo", "description": "Talks like a pirate"},
    {"name": "plain"},
]
ADMIN_KEY_ENV = "PARLEY_TEST_PAGE_ADMIN_KEY"
ADMIN_KEY = secrets.token_urlsafe(32)


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with running_parley(models=MODELS, agents=AGENTS) as url, httpx.Client(base_url=url) as client:
        yield client


@pytest.fixture(scope="module")
def keyed_url() -> Iterator[str]:
    os.environ[ADMIN_KEY_ENV] = ADMIN_KEY
    try:
        with running_parley(models=MODELS, admin_key_env=ADMIN_KEY_ENV, auth="required") as url:
            yield url
    finally:
        del os.environ[ADMIN_KEY_ENV]


def asset_urls(html: str) -> list[str]:
    """The URLs the page loads (its icon is an empty `data:` URL, so the browser asks for none)."""
    return [url for url in re.findall(r'(?:src|href)="([^"]+)"', html) if url != "data:,"]


def test_a_browser_gets_the_page_and_streamforge_clients_keep_their_json(http: httpx.Client) -> None:
    page = http.get("/", headers=HTML)
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["cache-control"] == "no-cache"
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy and "unsafe" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert re.search(r"<script(?![^>]*\bsrc=)", page.text) is None, "an inline script"
    assert {"Accept"} <= {value.strip() for value in page.headers["vary"].split(",")}
    for accept in ("application/json", "*/*"):
        root = http.get("/", headers={"Accept": accept})
        assert root.headers["content-type"] == "application/json"
        assert root.json()["name"] == "Parley"
        assert root.headers["vary"] == "Accept"


def test_assets_have_versioned_urls_types_and_a_long_cache(http: httpx.Client) -> None:
    urls = asset_urls(http.get("/", headers=HTML).text)
    assert {url.rsplit("/", 1)[1] for url in urls} == {"style.css", "app.js"}
    version = urls[0].split("/")[2]
    types = {"style.css": "text/css", "app.js": "text/javascript", "vendor/purify.es.mjs": "text/javascript"}
    for name, kind in {**types, "markdown.js": "text/javascript", "vendor/marked.esm.js": "text/javascript"}.items():
        reply = http.get(f"/assets/{version}/{name}")
        assert reply.status_code == 200, name
        assert reply.headers["content-type"].startswith(kind)
        assert reply.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert "sourceMappingURL" not in reply.text
    for missing in (f"/assets/{version}/nothing.js", "/assets/0123456789ab/app.js", f"/assets/{version}/VERSIONS"):
        reply = http.get(missing)
        assert reply.status_code == 404, missing
        assert set(reply.json()["error"]) == {"message", "type", "param", "code"}


def test_the_page_loads_nothing_from_another_host(http: httpx.Client) -> None:
    html = http.get("/", headers=HTML).text
    assert all(url.startswith("/assets/") for url in asset_urls(html))
    version = asset_urls(html)[0].split("/")[2]
    for name in ("app.js", "api.js", "view.js", "markdown.js", "style.css"):
        text = http.get(f"/assets/{version}/{name}").text
        imports = re.findall(r'^import [^;]*? from "([^"]+)";', text, re.MULTILINE)
        assert all(module.startswith("./") for module in imports), (name, imports)
        assert re.search(r"url\(|@import", text) is None, name


def test_agents_are_listed_for_the_picker(http: httpx.Client) -> None:
    reply = http.get("/api/agents")
    assert reply.status_code == 200
    assert reply.json()["data"] == [
        {"name": "pirate", "description": "Talks like a pirate", "model": "echo"},
        {"name": "plain", "description": "", "model": None},
        {"name": "default", "description": "", "model": None},
    ]
    operation = http.get("/openapi.json").json()["paths"]["/api/agents"]["get"]
    assert "200" in operation["responses"] and "422" not in operation["responses"]
    assert "/assets/{version}/{name}" not in http.get("/openapi.json").json()["paths"]


def test_with_keys_required_the_page_is_public_and_asks_for_the_key(
    keyed_url: str, request: pytest.FixtureRequest
) -> None:
    assert httpx.get(keyed_url + "/", headers=HTML).status_code == 200
    assert httpx.get(keyed_url + "/").status_code == 401  # StreamForge's JSON still needs a key
    assert httpx.get(keyed_url + "/api/agents").status_code == 401
    with chromium() as browser, page_for(browser, request, base_url=keyed_url) as page:
        sent: list[str] = []
        page.on("request", lambda sent_request: sent.append(sent_request.url))
        page.goto("/")
        expect(page.locator("#key-form")).to_be_visible()
        page.fill("#key", ADMIN_KEY)
        page.press("#key", "Enter")
        expect(page.locator("#key-form")).to_be_hidden()
        expect(page.locator("#model option[value='echo']")).to_be_attached()
        page.fill("#input", "hello with a key")
        page.press("#input", "Enter")
        expect(page.locator(".message.assistant .body")).to_have_text("hello with a key")
        assert page.evaluate("localStorage.getItem('parley.key')") == ADMIN_KEY
        page.reload()  # the key is remembered
        expect(page.locator(".message.assistant .body")).to_have_text("hello with a key")
        expect(page.locator("#key-form")).to_be_hidden()
        assert sent and not any(ADMIN_KEY in url for url in [*sent, page.url])
        assert all(url.startswith(keyed_url + "/") for url in sent), "a request to another host"


def test_narrow_screens_and_themes(http: httpx.Client, request: pytest.FixtureRequest) -> None:
    url = str(http.base_url).rstrip("/")
    with (
        chromium() as browser,
        page_for(browser, request, base_url=url, viewport={"width": 360, "height": 700}) as page,
    ):
        page.goto("/")
        expect(page.locator("#sidebar")).not_to_be_in_viewport()
        page.click("#toggle-sidebar")
        expect(page.locator("#sidebar")).to_be_in_viewport()
        expect(page.locator("#toggle-sidebar")).to_have_attribute("aria-expanded", "true")
        page.click("#close-sidebar")
        expect(page.locator("#sidebar")).not_to_be_in_viewport()
        background = "getComputedStyle(document.body).backgroundColor"
        page.click("#theme")  # system -> light
        expect(page.locator("#theme")).to_have_text("Theme: light")
        light = page.evaluate(background)
        page.click("#theme")  # -> dark
        expect(page.locator("#theme")).to_have_text("Theme: dark")
        assert page.evaluate(background) != light
        page.reload()
        expect(page.locator("#theme")).to_have_text("Theme: dark")
        # A 1280-pixel window at 200% zoom is 640 CSS pixels wide: nothing runs off the side.
        page.set_viewport_size({"width": 640, "height": 700})
        assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
        expect(page.locator("#input")).to_be_in_viewport()
