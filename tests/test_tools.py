"""Built-in tools: what a model gets back from each, and how failures read."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from parley.tools import invoke
from parley.tools.calculator import Calculator
from parley.tools.current_time import CurrentTime
from parley.tools.http_get import HttpGet


@pytest.mark.parametrize(
    ("expression", "result"),
    [("(2 + 3) * sqrt(16)", "20.0"), ("2 ** 100", str(2**100)), ("7 // 2 + 7 % 2", "4"), ("-pi + pi", "0.0")],
)
async def test_calculator_computes(expression: str, result: str) -> None:
    outcome = await invoke(Calculator(), f'{{"expression": "{expression}"}}', time_limit=5)
    assert outcome.error is None
    assert outcome.output == result


@pytest.mark.parametrize(
    ("expression", "says"),
    [
        ("__import__('os').system('true')", "not allowed"),
        ("9 ** 9 ** 9", "exponents are limited"),
        ("1 / 0", "division by zero"),
        ("[1, 2]", "not allowed"),
        ("open('/etc/passwd')", "not allowed"),
        ("2 +", "not an arithmetic expression"),
    ],
)
async def test_calculator_refuses_what_is_not_arithmetic(expression: str, says: str) -> None:
    outcome = await invoke(Calculator(), f'{{"expression": "{expression}"}}', time_limit=5)
    assert outcome.error is not None and says in outcome.error
    assert outcome.output.startswith("error: ")


async def test_arguments_that_are_not_json_or_not_the_schema_are_a_tool_error() -> None:
    broken = await invoke(Calculator(), '{"expression": "1 +', time_limit=5)
    assert broken.error is not None and "not valid JSON" in broken.error
    missing = await invoke(Calculator(), '{"formula": "1"}', time_limit=5)
    assert missing.error is not None and "'expression' is a required property" in missing.error


async def test_current_time_in_a_time_zone() -> None:
    outcome = await invoke(CurrentTime(), '{"timezone": "Asia/Karachi"}', time_limit=5)
    assert outcome.error is None
    stamp = datetime.fromisoformat(outcome.output.split(" ")[0])
    assert stamp.utcoffset() is not None and stamp.utcoffset().total_seconds() == 5 * 3600  # type: ignore[union-attr]
    assert abs((stamp - datetime.now(UTC)).total_seconds()) < 60
    unknown = await invoke(CurrentTime(), '{"timezone": "Mars/Olympus"}', time_limit=5)
    assert unknown.error is not None and "unknown time zone" in unknown.error


class _Pages(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/big":
            body = b"x" * 100_000
        elif self.path == "/away":
            self.send_response(302)
            self.send_header("Location", "http://example.invalid/")
            self.end_headers()
            return
        else:
            body = b"hello from the page"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def pages() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


async def test_http_get_fetches_allowed_hosts_only_and_caps_the_body(pages: str) -> None:
    tool = HttpGet(["127.0.0.1"], max_bytes=4096)
    try:
        page = await invoke(tool, f'{{"url": "{pages}/"}}', time_limit=5)
        assert page.error is None and "HTTP 200" in page.output and "hello from the page" in page.output
        big = await invoke(tool, f'{{"url": "{pages}/big"}}', time_limit=5)
        assert (
            big.error is None
            and "[cut at 4096 bytes]" in big.output
            and big.output.split("\n\n", 1)[1].count("x") == 4096
        )
        elsewhere = await invoke(tool, '{"url": "http://localhost:1/"}', time_limit=5)
        assert elsewhere.error is not None and "not on this server's allow-list" in elsewhere.error
        redirected = await invoke(tool, f'{{"url": "{pages}/away"}}', time_limit=5)
        assert (
            redirected.error is not None and "'example.invalid' is not on this server's allow-list" in redirected.error
        )
        scheme = await invoke(tool, '{"url": "file:///etc/passwd"}', time_limit=5)
        assert scheme.error is not None and "only http and https" in scheme.error
    finally:
        await tool.aclose()
