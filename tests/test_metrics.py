"""Prometheus metrics at /metrics: a real Parley in front of a real upstream, scraped and read with
prometheus-client's own parser. The counters move after chats on every transport, label sets stay
bounded, and only the admin key (or the separate metrics port) reads them."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator

import httpx
import openai
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from parley.config import ConfigError, load_settings
from parley.observability import Metrics
from tests.support.process import free_port
from tests.support.server import running_parley
from tests.support.upstream import PROMPT_TOKENS, TEXT_PIECES, TEXT_REPLY, Upstream, new_marker
from tests.support.ws import chat, new_session, socket

ADMIN_KEY_ENV = "PARLEY_TEST_METRICS_ADMIN_KEY"
ADMIN_KEY = "pk-admin-" + uuid.uuid4().hex
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str, headers: dict[str, str] | None = None) -> Samples:
    """Every sample of the exposition, by (sample name, labels)."""
    reply = httpx.get(url, headers=ADMIN if headers is None else headers)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    return {dict(labels)[label] for sample, labels in samples if sample == name and label in dict(labels)}


@pytest.fixture(scope="module")
def parley(upstream: Upstream) -> Iterator[str]:
    os.environ[ADMIN_KEY_ENV] = ADMIN_KEY
    try:
        # Keys off (an admin key alone would turn them on): the chats here are a client's without a key.
        with running_parley(models=upstream.parley_models(), admin_key_env=ADMIN_KEY_ENV, auth="off") as url:
            yield url
    finally:
        del os.environ[ADMIN_KEY_ENV]


def metrics_of(parley: str) -> Samples:
    return scrape(parley + "/metrics")


# -- who may read them --


def test_metrics_need_a_key_and_answer_401_in_the_openai_shape(parley: str) -> None:
    reply = httpx.get(parley + "/metrics")
    assert reply.status_code == 401
    assert reply.headers["www-authenticate"].startswith("Bearer")
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "admin key" in error["message"]


@pytest.mark.parametrize(
    "headers", [{"Authorization": "Bearer pk-someone-else"}, {"x-api-key": "pk-someone-else"}, {"x-api-key": "x"}]
)
def test_another_key_is_refused_with_403(parley: str, headers: dict[str, str]) -> None:
    reply = httpx.get(parley + "/metrics", headers=headers)
    assert reply.status_code == 403
    assert reply.json()["error"]["code"] == "admin_key_required"
    assert ADMIN_KEY not in reply.text


@pytest.mark.parametrize("headers", [ADMIN, {"x-api-key": ADMIN_KEY}, {"Authorization": f"bearer  {ADMIN_KEY}"}])
def test_the_admin_key_reads_them_as_bearer_or_x_api_key(parley: str, headers: dict[str, str]) -> None:
    samples = scrape(parley + "/metrics", headers)
    assert label_values(samples, "parley_http_requests_total", "route")


def test_without_an_admin_key_or_metrics_port_metrics_are_off() -> None:
    with running_parley(models=[{"name": "echo", "provider": "fake"}], admin_key_env="PARLEY_TEST_UNSET_KEY") as url:
        reply = httpx.get(url + "/metrics", headers=ADMIN)
    assert reply.status_code == 404
    assert reply.json()["error"]["message"] == "metrics are off: see the metrics settings"


def test_metrics_port_serves_them_without_a_key_and_the_main_port_does_not(upstream: Upstream) -> None:
    port = free_port()
    models = [{"name": "text", "provider": "openai", "base_url": upstream.base_url + "/v1"}]
    with running_parley(models=models, metrics_port=port, admin_key_env="PARLEY_TEST_UNSET_KEY") as url:
        openai.OpenAI(base_url=url + "/v1", api_key="unused").chat.completions.create(
            model="text", messages=[{"role": "user", "content": new_marker()}]
        )
        samples = scrape(f"http://127.0.0.1:{port}/metrics", headers={})
        assert value(samples, "parley_completion_tokens_total", model="text", key="open") == len(TEXT_PIECES)
        assert httpx.get(url + "/metrics", headers=ADMIN).status_code == 404
    with pytest.raises(httpx.ConnectError):  # the metrics port closes with the app
        httpx.get(f"http://127.0.0.1:{port}/metrics")


# -- what they count --


def test_a_streamed_chat_on_v1_moves_requests_tokens_and_time_to_first_token(parley: str) -> None:
    before = metrics_of(parley)
    client = openai.OpenAI(base_url=parley + "/v1", api_key="unused")
    stream = client.chat.completions.create(
        model="text",
        messages=[{"role": "user", "content": new_marker()}],
        stream=True,
        stream_options={"include_usage": True},
    )
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices) == TEXT_REPLY
    after = metrics_of(parley)
    route = {"route": "/v1/chat/completions", "method": "POST", "status": "200"}
    assert moved(before, after, "parley_http_requests_total", **route) == 1
    assert moved(before, after, "parley_http_request_duration_seconds_count", route="/v1/chat/completions") == 1
    assert moved(before, after, "parley_prompt_tokens_total", model="text", key="open") == PROMPT_TOKENS
    assert moved(before, after, "parley_completion_tokens_total", model="text", key="open") == len(TEXT_PIECES)
    assert moved(before, after, "parley_time_to_first_token_seconds_count", model="text") == 1
    assert moved(before, after, "parley_time_to_first_token_seconds_sum", model="text") > 0
    assert moved(before, after, "parley_generation_duration_seconds_count", model="text") == 1
    assert moved(before, after, "parley_generations_total", model="text", outcome="complete") == 1


def test_api_chat_and_the_websocket_are_counted_by_the_same_generation_metrics(parley: str) -> None:
    before = metrics_of(parley)
    reply = httpx.post(parley + "/api/chat", json={"message": new_marker(), "model": "text", "stream": False})
    assert reply.status_code == 200, reply.text
    with socket(parley, new_session()) as ws:
        assert chat(ws, new_marker(), model="text")[-1]["event"] == "message_complete"
    after = metrics_of(parley)
    assert moved(before, after, "parley_http_requests_total", route="/api/chat", method="POST", status="200") == 1
    assert moved(before, after, "parley_completion_tokens_total", model="text", key="open") == 2 * len(TEXT_PIECES)
    assert moved(before, after, "parley_generations_total", model="text", outcome="complete") == 2


def test_streams_in_progress_rise_during_a_slow_stream_and_fall_after(parley: str) -> None:
    body = {"model": "slow", "messages": [{"role": "user", "content": new_marker()}], "stream": True}
    assert value(metrics_of(parley), "parley_streams_in_progress", model="slow") == 0
    with httpx.stream("POST", parley + "/v1/chat/completions", json=body, timeout=30) as reply:
        assert reply.status_code == 200
        lines = reply.iter_lines()
        while "tick" not in next(lines):
            pass
        assert value(metrics_of(parley), "parley_streams_in_progress", model="slow") == 1
    # The client left: Parley cancels the run, and the gauge comes back down.
    deadline = time.monotonic() + 15
    while value(samples := metrics_of(parley), "parley_streams_in_progress", model="slow") != 0:
        assert time.monotonic() < deadline, "the stream was never counted as ended"
        time.sleep(0.05)
    assert value(samples, "parley_generations_total", model="slow", outcome="cancelled") >= 1


@pytest.mark.parametrize(
    ("model", "kind"),
    [
        ("status-500", "server_error"),
        ("status-429", "rate_limited"),
        ("status-401", "auth"),
        ("unreachable", "unreachable"),
        ("error-mid", "error_event"),
        ("stall-timeout", "timeout"),
    ],
)
def test_upstream_failures_are_counted_by_kind(parley: str, model: str, kind: str) -> None:
    before = value(metrics_of(parley), "parley_upstream_errors_total", model=model, kind=kind)
    body = {"model": model, "messages": [{"role": "user", "content": new_marker()}]}
    reply = httpx.post(parley + "/v1/chat/completions", json=body, timeout=30)
    assert reply.status_code >= 400
    after = metrics_of(parley)
    assert value(after, "parley_upstream_errors_total", model=model, kind=kind) == before + 1
    assert value(after, "parley_generations_total", model=model, outcome="failed") >= 1


def test_route_labels_are_templates_however_many_paths_clients_try(parley: str) -> None:
    before = metrics_of(parley)
    for number in range(50):
        assert httpx.get(f"{parley}/no-such-page-{uuid.uuid4().hex}/{number}").status_code == 404
        conversation = f"conv_{uuid.uuid4().hex}"
        assert httpx.get(f"{parley}/api/conversations/{conversation}").status_code == 404
    after = metrics_of(parley)
    routes = label_values(after, "parley_http_requests_total", "route")
    assert routes - label_values(before, "parley_http_requests_total", "route") <= {
        "unmatched",
        "/api/conversations/{conversation_id}",
    }
    assert not [route for route in routes if "conv_" in route or "no-such-page" in route]
    assert moved(before, after, "parley_http_requests_total", route="unmatched", method="GET", status="404") == 50
    templated = {"route": "/api/conversations/{conversation_id}", "method": "GET", "status": "404"}
    assert value(after, "parley_http_requests_total", **templated) >= 50


def test_odd_methods_share_one_label(parley: str) -> None:
    for method in ("BREW", "WHEN", "PROPFIND"):
        httpx.request(method, parley + "/health")
    methods = label_values(metrics_of(parley), "parley_http_requests_total", "method")
    assert "OTHER" in methods
    assert not methods & {"BREW", "WHEN", "PROPFIND"}


def test_the_store_writers_batches_are_timed(parley: str) -> None:
    before = metrics_of(parley)
    httpx.post(parley + "/api/chat", json={"message": new_marker(), "model": "text", "stream": False})
    after = metrics_of(parley)
    assert value(after, "parley_store_write_seconds_count") > value(before, "parley_store_write_seconds_count")
    assert value(after, "parley_store_writes_total") > value(before, "parley_store_writes_total")
    assert ("parley_store_queued_writes", frozenset()) in after


# -- the families themselves, read through prometheus-client's own exposition and parser --


def exposed(metrics: Metrics) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def test_histogram_buckets_are_cumulative_and_include_their_bound() -> None:
    metrics = Metrics()
    for seconds in (0.005, 0.0051, 100.0):
        metrics.time_to_first_token.labels("m").observe(seconds)
    samples = exposed(metrics)
    bucket = "parley_time_to_first_token_seconds_bucket"
    assert value(samples, bucket, model="m", le="0.005") == 1
    assert value(samples, bucket, model="m", le="0.01") == 2
    assert value(samples, bucket, model="m", le="30.0") == 2
    assert value(samples, bucket, model="m", le="+Inf") == 3
    assert value(samples, "parley_time_to_first_token_seconds_count", model="m") == 3
    assert value(samples, "parley_time_to_first_token_seconds_sum", model="m") == pytest.approx(100.0101)


def test_rate_limit_refusals_are_counted_by_kind_and_key_alias() -> None:
    """The function the limits gate calls when it refuses a request."""
    metrics = Metrics()
    metrics.rate_limited("requests", "team-a")
    metrics.rate_limited("requests", "team-a")
    metrics.rate_limited("daily_tokens", "team-b")
    samples = exposed(metrics)
    assert value(samples, "parley_rate_limited_total", kind="requests", key="team-a") == 2
    assert value(samples, "parley_rate_limited_total", kind="daily_tokens", key="team-b") == 1


def test_a_metrics_port_equal_to_the_port_is_refused_at_startup() -> None:
    with pytest.raises(ConfigError, match="metrics_port must differ from port"):
        load_settings(port=9100, metrics_port=9100)
