"""The chat page at `/` in a real headless Chromium, against a real Parley and a scripted upstream."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Locator, Page, Route, expect

from tests.support.agent_plans import BILLING_PROMPT, TRIAGE_PROMPT
from tests.support.browser import chromium, page_for
from tests.support.overlap_knowledge import Passage, WordOverlapKnowledge
from tests.support.server import running_parley
from tests.support.upstream import Upstream, new_marker

STREAM_TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def parley(upstream: Upstream) -> Iterator[str]:
    models: list[dict[str, Any]] = upstream.parley_models()
    for plan in ("agent-calc", "agent-handoff"):
        models.append({"name": plan, "provider": "openai", "base_url": upstream.base_url + "/v1"})
    agents = [
        {"name": "calc", "model": "agent-calc", "tools": ["calculator"], "description": "Does sums"},
        {"name": "triage", "model": "agent-handoff", "system_prompt": TRIAGE_PROMPT, "handoffs": ["billing"]},
        {"name": "billing", "model": "agent-handoff", "system_prompt": BILLING_PROMPT},
        {"name": "librarian", "model": "echo-raw", "collections": ["atlas"], "description": "Cites the atlas"},
    ]
    atlas = WordOverlapKnowledge()
    atlas.add("atlas", [Passage("doc-etna", "Volcanoes", "Mount Etna is the most active volcano in Europe.", page=3)])
    with running_parley(models=models, agents=agents, knowledge_base=atlas) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Browser, parley: str, request: pytest.FixtureRequest) -> Iterator[Page]:
    with page_for(browser, request, base_url=parley) as opened:
        opened.set_default_timeout(STREAM_TIMEOUT_MS)
        expect.set_options(timeout=STREAM_TIMEOUT_MS)
        yield opened


def open_page(page: Page, model: str) -> None:
    page.goto("/")
    page.locator("#model option[value='text']").wait_for(state="attached")
    page.select_option("#model", model)


def send(page: Page, text: str) -> Locator:
    """Types and sends a message with Enter; the reply's element."""
    replies = page.locator(".message.assistant")
    before = replies.count()
    page.fill("#input", text)
    page.press("#input", "Enter")
    expect(replies).to_have_count(before + 1)
    return replies.last


def finished(reply: Locator) -> None:
    expect(reply).to_have_attribute("aria-busy", "false")


def test_a_reply_streams_in_and_the_stop_button_cancels_it(page: Page, upstream: Upstream) -> None:
    open_page(page, "slow")
    marker = new_marker()
    reply = send(page, marker)
    body = reply.locator(".body")
    expect(body).to_contain_text("tick")
    expect(page.locator("#stop")).to_be_visible()
    expect(page.locator("#send")).to_be_hidden()
    first = len(body.inner_text())
    page.wait_for_function(
        "([sel, n]) => document.querySelector(sel).innerText.length > n + 20",
        arg=[".message.assistant:last-child .body", first],
    )  # it grows while the upstream sends: streamed, not delivered at the end
    page.click("#stop")
    finished(reply)
    expect(reply.locator(".status")).to_have_text("Stopped.")
    expect(page.locator("#send")).to_be_visible()
    seen = upstream.find(marker)
    assert seen.wait_ended(), "the upstream generation did not stop"
    assert seen.client_closed and not seen.completed
    expect(page.locator(".message.user").last).to_have_text(marker)


def test_keyboard_enter_sends_shift_enter_breaks_the_line_escape_stops(page: Page, upstream: Upstream) -> None:
    open_page(page, "slow")
    marker = new_marker()
    page.fill("#input", f"first line {marker}")
    page.press("#input", "Shift+Enter")
    page.keyboard.type("second line")
    assert page.input_value("#input") == f"first line {marker}\nsecond line"
    expect(page.locator(".message")).to_have_count(0)
    page.press("#input", "Enter")
    expect(page.locator(".message.user")).to_have_text(f"first line {marker}\nsecond line")
    assert page.input_value("#input") == ""
    reply = page.locator(".message.assistant").last
    expect(reply.locator(".body")).to_contain_text("tick")
    page.keyboard.press("Escape")
    finished(reply)
    expect(reply.locator(".status")).to_have_text("Stopped.")
    assert upstream.find(marker).wait_ended()


def test_a_reload_mid_reply_shows_the_conversation_and_the_reply_so_far(page: Page, upstream: Upstream) -> None:
    open_page(page, "slow")
    marker = new_marker()
    reply = send(page, marker)
    expect(reply.locator(".body")).to_contain_text("tick")
    expect(page).to_have_url(re.compile(r"#conversation=conv_"))
    address = page.url
    ticks = reply.locator(".body").inner_text().count("tick")
    page.reload()
    assert page.url == address
    expect(page.locator(".message.user")).to_have_text(marker)
    reply = page.locator(".message.assistant")
    expect(reply).to_have_count(1)
    # The reply went on on the server while the page reloaded, and the page follows it live again.
    page.wait_for_function(
        "n => document.querySelector('.message.assistant .body').textContent.split('tick').length - 1 > n",
        arg=ticks + 2,
    )
    expect(reply).to_have_attribute("aria-busy", "true")
    expect(reply.locator(".status")).not_to_have_text(re.compile(r"Stopped"))
    expect(page.locator("#conversations li.active")).to_have_count(1)
    page.keyboard.press("Escape")  # if it is still going, stop it (the next tests share the upstream)
    finished(reply)


def test_switching_between_conversations(page: Page) -> None:
    open_page(page, "echo-raw")
    first, second = f"first {new_marker()}", f"second {new_marker()}"
    finished(send(page, first))
    first_address = page.url
    page.click("#new-chat")
    expect(page.locator(".message")).to_have_count(0)
    finished(send(page, second))
    assert page.url != first_address
    expect(page.locator(".message.assistant .body")).to_have_text(second)
    titles = page.locator("#conversations li .title")
    expect(titles.first).to_have_text(second)  # newest first
    page.locator("#conversations li", has_text=first).locator(".open").click()
    expect(page.locator(".message.user")).to_have_text([first])
    expect(page.locator(".message.assistant .body")).to_have_text([first])
    assert page.url == first_address
    # Continuing the first conversation: the upstream hears its history too.
    finished(send(page, "and again"))
    expect(page.locator(".message.user")).to_have_text([first, "and again"])
    page.locator("#conversations li", has_text=second).locator(".open").click()
    expect(page.locator(".message.user")).to_have_text([second])


def test_markup_in_a_reply_is_rendered_inert(page: Page) -> None:
    open_page(page, "echo-raw")  # the upstream sends the message back as the reply
    hostile = (
        "Look: <img src=x onerror=\"window.__pwned='img'\"> and [click me](javascript:window.__pwned='link') "
        "<script>window.__pwned='script'</script> <a href=\"javascript:window.__pwned='a'\">raw link</a> "
        "<svg onload=\"window.__pwned='svg'\"></svg>\n\n```python\nprint('<b>code</b>')\n```\n\n**bold**"
    )
    reply = send(page, hostile)
    finished(reply)
    body = reply.locator(".body")
    expect(body.locator("strong")).to_have_text("bold")
    expect(body.locator("pre code")).to_have_text("print('<b>code</b>')")
    hrefs = body.locator("a").evaluate_all("links => links.map(link => link.getAttribute('href'))")
    assert not any(href and "javascript" in href.lower() for href in hrefs), hrefs
    handlers = body.evaluate(
        "root => [...root.querySelectorAll('*')].flatMap(e => [...e.attributes].map(a => a.name))"
        ".filter(name => name.startsWith('on'))"
    )
    assert handlers == []
    expect(body.locator("script")).to_have_count(0)
    body.get_by_text("click me").click()
    body.get_by_text("raw link").click()
    page.wait_for_timeout(300)  # give any handler that survived the chance to run
    assert page.evaluate("window.__pwned") is None
    # The user's own message is shown as text, not markup.
    expect(page.locator(".message.user").last).to_have_text(hostile)


def test_reasoning_is_folded_away_and_a_finish_reason_other_than_stop_is_shown(page: Page) -> None:
    open_page(page, "reasoning")
    reply = send(page, new_marker())
    finished(reply)
    fold = reply.locator("details.reasoning")
    expect(fold).to_be_visible()
    assert fold.get_attribute("open") is None
    expect(fold.locator(".fold-body")).to_be_hidden()
    fold.locator("summary").click()
    expect(fold.locator(".fold-body")).to_have_text("Six times seven is forty-two.")
    expect(reply.locator(".body")).to_have_text("42")
    expect(reply.locator(".status")).to_be_hidden()
    page.select_option("#model", "tools")  # tool calls left to the client: finish reason `tool_calls`
    reply = send(page, new_marker())
    finished(reply)
    expect(reply.locator(".status")).to_have_text("Finish reason: tool_calls")


def test_failures_before_and_during_a_reply_are_said(page: Page) -> None:
    open_page(page, "error-mid")  # one piece, then the upstream fails
    reply = send(page, new_marker())
    finished(reply)
    expect(reply.locator(".body")).to_have_text("Partial")
    expect(reply.locator(".status.error")).to_have_text(re.compile(r"^Error: .+"))
    page.select_option("#model", "status-500")  # refused before the stream starts
    page.fill("#input", "this message is kept")
    page.press("#input", "Enter")
    expect(page.locator("#notice")).to_be_visible()
    expect(page.locator("#notice")).not_to_be_empty()
    assert page.input_value("#input") == "this message is kept"  # to send again
    expect(page.locator(".message.assistant")).to_have_count(1)


def ask_agent(page: Page, agent: str, text: str) -> Locator:
    """Picks `agent` on a fresh page and sends `text`; the finished reply's element."""
    page.goto("/")
    page.locator(f"#agent option[value='{agent}']").wait_for(state="attached")
    page.select_option("#agent", agent)
    reply = send(page, text)
    finished(reply)
    return reply


def test_the_sources_a_reply_drew_on_are_shown(page: Page) -> None:
    reply = ask_agent(page, "librarian", "which volcano is the most active?")
    sources = reply.locator("details.sources")
    expect(sources).to_be_visible()
    sources.locator("summary").click()
    expect(sources.locator("li strong")).to_have_text("[1] Volcanoes, page 3")
    expect(sources.locator("li blockquote")).to_have_text("Mount Etna is the most active volcano in Europe.")
    page.reload()  # the stored reply keeps its sources
    expect(page.locator(".message.assistant").last.locator("details.sources li strong")).to_have_text(
        "[1] Volcanoes, page 3"
    )


def test_an_agents_tool_steps_are_shown(page: Page) -> None:
    reply = ask_agent(page, "calc", "what is 6 times 7?")
    expect(page.locator("#agent option[value='calc']")).to_have_text("calc — Does sums")
    steps = reply.locator("details.steps")
    expect(steps).to_be_visible()
    steps.locator("summary").click()
    expect(steps.locator(".tool-call strong")).to_have_text("calculator")
    expect(steps.locator(".tool-call .result")).to_have_text("42")
    expect(steps.locator(".step")).to_have_text("Step 2")
    page.reload()  # the stored reply shows its steps too
    stored = page.locator(".message.assistant").last
    expect(stored.locator(".tool-call .result")).to_have_text("42")


def test_a_handoff_to_another_agent_is_shown(page: Page) -> None:
    page.goto("/")
    page.locator("#agent option[value='triage']").wait_for(state="attached")
    page.select_option("#agent", "triage")
    reply = send(page, "my invoice question")
    finished(reply)
    reply.locator("details.steps summary").click()
    expect(reply.locator(".handoff")).to_have_text("Handed over from triage to billing")
    expect(reply.locator(".body")).to_have_text("Billing here: your invoice is paid.")


def test_a_reply_sent_while_the_page_loads_stays_live(page: Page) -> None:
    held: list[Route] = []  # the page's first look at the conversation list, answered late
    page.route(
        re.compile(r"/api/conversations\?limit="), lambda route: held.append(route) if not held else route.continue_()
    )
    page.goto("/")
    page.locator("#agent option[value='triage']").wait_for(state="attached")
    page.select_option("#agent", "triage")
    reply = send(page, "my invoice question")
    finished(reply)
    held[0].continue_()  # the page is done loading only now
    page.wait_for_load_state("networkidle")
    reply.locator("details.steps summary").click()
    expect(reply.locator(".handoff")).to_have_text(
        "Handed over from triage to billing"
    )  # (the live view: a stored one has no handoff line)
    expect(page.locator(".message.assistant")).to_have_count(1)


def test_rename_export_and_delete_a_conversation(page: Page) -> None:
    open_page(page, "echo-raw")
    marker = new_marker()
    finished(send(page, marker))
    item = page.locator("#conversations li.active")
    expect(item).to_have_count(1)
    item.locator("summary").click()
    item.get_by_role("button", name="Rename").click()
    page.fill("#conversations input", "Renamed in the browser")
    page.press("#conversations input", "Enter")
    expect(page.locator("#conversations li.active .title")).to_have_text("Renamed in the browser")
    item = page.locator("#conversations li.active")
    item.locator("summary").click()
    with page.expect_download() as download:
        item.get_by_role("button", name="Export Markdown").click()
    path = download.value.path()
    assert download.value.suggested_filename.endswith(".md")
    assert marker in path.read_text()
    page.once("dialog", lambda dialog: dialog.accept())
    item.locator("summary").click()
    item.get_by_role("button", name="Delete").click()
    expect(page.locator("#conversations li", has_text="Renamed in the browser")).to_have_count(0)
    expect(page.locator(".message")).to_have_count(0)
    expect(page).not_to_have_url(re.compile("conversation="))
