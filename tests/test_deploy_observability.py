"""The example Grafana dashboard and Prometheus scrape config in deploy/: the dashboard's queries
name only metrics a running Parley exports (with the type their suffix needs), and it covers what
an operator watches; the scrape config reads the admin key from a file, never inline."""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml  # type: ignore[import-untyped]  # (PyYAML, with uvicorn[standard]; no stubs installed)
from prometheus_client.parser import text_string_to_metric_families

from tests.support.server import running_parley
from tests.support.upstream import Upstream, new_marker

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
DASHBOARD = DEPLOY / "grafana" / "parley-dashboard.json"
SCRAPE_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
METRIC_NAME = re.compile(r"\bparley_[a-z_]+\b")
ADMIN_KEY_ENV = "PARLEY_TEST_DASHBOARD_ADMIN_KEY"
ADMIN_KEY = "pk-admin-" + uuid.uuid4().hex
# A sample name's suffix, and the family type that has it.
SUFFIX_TYPES = {"_total": "counter", "_bucket": "histogram", "_count": "histogram", "_sum": "histogram"}


def dashboard_exprs() -> list[str]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert exprs, "the dashboard has no queries"
    return exprs


@pytest.fixture(scope="module")
def exported(upstream: Upstream) -> dict[str, str]:
    """Parley's metric families after a chat, by name: their type."""
    os.environ[ADMIN_KEY_ENV] = ADMIN_KEY
    models = [{"name": "text", "provider": "openai", "base_url": upstream.base_url + "/v1"}]
    try:
        # Keys off (an admin key alone would turn them on): the chats here are a client's without a key.
        with running_parley(models=models, admin_key_env=ADMIN_KEY_ENV, auth="off") as url:
            openai.OpenAI(base_url=url + "/v1", api_key="unused").chat.completions.create(
                model="text", messages=[{"role": "user", "content": new_marker()}]
            )
            reply = httpx.get(url + "/metrics", headers={"x-api-key": ADMIN_KEY})
    finally:
        del os.environ[ADMIN_KEY_ENV]
    assert reply.status_code == 200
    return {family.name: family.type for family in text_string_to_metric_families(reply.text)}


def test_every_metric_the_dashboard_queries_is_exported(exported: dict[str, str]) -> None:
    for expr in dashboard_exprs():
        for name in METRIC_NAME.findall(expr):
            suffix = next((s for s in SUFFIX_TYPES if name.endswith(s)), None)
            if suffix is None:
                assert exported.get(name) == "gauge", f"{name} (in {expr}) is not an exported gauge"
            else:
                family = name.removesuffix(suffix)
                assert exported.get(family) == SUFFIX_TYPES[suffix], f"{name} (in {expr}) is not exported"


def test_the_dashboard_shows_what_an_operator_watches() -> None:
    queried = {name for expr in dashboard_exprs() for name in METRIC_NAME.findall(expr)}
    assert {
        "parley_http_requests_total",
        "parley_time_to_first_token_seconds_bucket",
        "parley_prompt_tokens_total",
        "parley_completion_tokens_total",
        "parley_streams_in_progress",
        "parley_rate_limited_total",
        "parley_upstream_errors_total",
        "parley_local_queue_length",
        "parley_local_queue_wait_seconds_bucket",
        "parley_store_write_seconds_bucket",
    } <= queried
    ttft = [expr for expr in dashboard_exprs() if "parley_time_to_first_token_seconds_bucket" in expr]
    assert any("histogram_quantile(0.5," in expr for expr in ttft)
    assert any("histogram_quantile(0.95," in expr for expr in ttft)


def test_the_dashboards_panels_use_the_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])


def test_the_scrape_config_reads_the_admin_key_from_a_file() -> None:
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "parley"]
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"]["type"] == "Bearer"
    assert job["authorization"]["credentials_file"].startswith("/")
    assert "credentials" not in job["authorization"]
    assert job["static_configs"][0]["targets"]
