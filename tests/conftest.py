"""Test-wide rules. With PARLEY_REQUIRE_SERVICES=1 (CI sets it) a skipped test is a failure:
a test that needs a service or the local model must run, not quietly step aside."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.upstream import Upstream, running_upstream

REQUIRE_SERVICES = os.environ.get("PARLEY_REQUIRE_SERVICES") == "1"

# Fixtures over both conversation backends (SQLite and PostgreSQL), for any test module.
pytest_plugins = ["tests.support.databases"]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if REQUIRE_SERVICES and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"skipped while PARLEY_REQUIRE_SERVICES=1: {reason}"
    return None


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    """A scripted OpenAI-compatible server on 127.0.0.1 (see tests/support/upstream.py)."""
    with running_upstream() as server:
        yield server
