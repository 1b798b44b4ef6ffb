"""Browsers on other sites are refused unless listed in cors_origins; curl-style bodies are read as JSON."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Origin

from tests.support.server import running_parley
from tests.support.upstream import Upstream

ALLOWED = "https://app.example"
EVIL = "https://evil.example"
BODY_OF_TEXT = {"content-type": "text/plain"}


@pytest.fixture(scope="module")
def url(upstream: Upstream) -> Iterator[str]:
    models = [{"name": "echo", "provider": "fake"}, *upstream.parley_models()]
    with running_parley(models=models, cors_origins=[ALLOWED]) as base_url:
        yield base_url


def post(url: str, **kwargs: Any) -> httpx.Response:
    # (a generous timeout: a server's first chat, on a machine busy with other tests, has taken over 5 s)
    return httpx.post(url, timeout=30, **kwargs)


def get(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(url, timeout=30, **kwargs)


def completion(marker: str) -> bytes:
    return json.dumps({"model": "text", "messages": [{"role": "user", "content": marker}]}).encode()


def chat_body(conversation_id: str) -> bytes:
    return json.dumps({"message": "hi", "conversation_id": conversation_id, "stream": False}).encode()


def assert_refused(reply: httpx.Response, *, mentions: str) -> dict[str, Any]:
    assert reply.status_code == 403, reply.text
    assert reply.headers["content-type"] == "application/json"
    assert "access-control-allow-origin" not in reply.headers
    error: dict[str, Any] = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "origin_not_allowed"
    assert mentions in error["message"]
    assert "cors_origins" in error["message"]
    return error


def stored(url: str, conversation_id: str) -> bool:
    reply = get(f"{url}/api/conversations/{conversation_id}")
    assert reply.status_code in (200, 404), reply.text
    return reply.status_code == 200


def test_a_cross_site_completion_is_refused_before_any_generation(url: str, upstream: Upstream) -> None:
    refused = post(
        f"{url}/v1/chat/completions", content=completion("from-evil"), headers={"origin": EVIL, **BODY_OF_TEXT}
    )
    assert_refused(refused, mentions=EVIL)
    served = post(f"{url}/v1/chat/completions", content=completion("from-curl"), headers=BODY_OF_TEXT)
    assert served.status_code == 200, served.text
    upstream.find("from-curl")
    assert not [seen for seen in upstream.requests if "from-evil" in seen.last_user_text]


def test_a_cross_site_chat_is_refused_and_nothing_is_stored(url: str) -> None:
    conversation_id = f"evil-{uuid.uuid4().hex}"
    refused = post(f"{url}/api/chat", content=chat_body(conversation_id), headers={"origin": EVIL, **BODY_OF_TEXT})
    assert_refused(refused, mentions=EVIL)
    assert not stored(url, conversation_id)


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "null"},  # a sandboxed frame or a file: page
        {"origin": EVIL, "sec-fetch-site": "cross-site"},
        {"origin": "https://app.example.evil.example"},
        {"sec-fetch-site": "cross-site", "sec-fetch-mode": "no-cors"},  # a browser that sent no Origin
    ],
)
def test_other_cross_site_forms_are_refused(url: str, headers: dict[str, str]) -> None:
    conversation_id = f"evil-{uuid.uuid4().hex}"
    refused = post(f"{url}/api/chat", content=chat_body(conversation_id), headers={**headers, **BODY_OF_TEXT})
    assert_refused(refused, mentions=headers.get("origin", "cross-site"))
    assert not stored(url, conversation_id)


def test_a_listed_origin_is_served_with_cors_headers(url: str) -> None:
    conversation_id = f"app-{uuid.uuid4().hex}"
    reply = post(f"{url}/api/chat", content=chat_body(conversation_id), headers={"origin": ALLOWED})
    assert reply.status_code == 200, reply.text
    assert reply.headers["access-control-allow-origin"] == ALLOWED
    assert "x-request-id" in reply.headers["access-control-expose-headers"]
    assert stored(url, conversation_id)
    completion_reply = post(f"{url}/v1/chat/completions", content=completion("app"), headers={"origin": ALLOWED})
    assert completion_reply.status_code == 200, completion_reply.text
    assert completion_reply.headers["access-control-allow-origin"] == ALLOWED


@pytest.mark.parametrize(
    "same_origin",
    [
        lambda url: {"origin": url},  # the Origin's host:port is the Host
        lambda url: {"origin": "https://parley.internal", "sec-fetch-site": "same-origin"},  # behind a proxy
    ],
    ids=["host", "sec-fetch-site"],
)
def test_a_page_served_by_parley_itself_is_served(url: str, same_origin: Any) -> None:
    conversation_id = f"same-{uuid.uuid4().hex}"
    reply = post(f"{url}/api/chat", content=chat_body(conversation_id), headers=same_origin(url))
    assert reply.status_code == 200, reply.text
    assert "access-control-allow-origin" not in reply.headers
    assert stored(url, conversation_id)


def test_a_link_from_another_site_still_opens_a_page(url: str) -> None:
    reply = get(f"{url}/health", headers={"sec-fetch-site": "cross-site", "sec-fetch-mode": "navigate"})
    assert reply.status_code == 200, reply.text


def test_a_refused_preflight_answers_json(url: str) -> None:
    preflight = {"access-control-request-method": "POST", "access-control-request-headers": "content-type"}
    refused = httpx.options(f"{url}/v1/chat/completions", headers={"origin": EVIL, **preflight})
    assert_refused(refused, mentions=EVIL)
    allowed = httpx.options(f"{url}/v1/chat/completions", headers={"origin": ALLOWED, **preflight})
    assert allowed.status_code == 200, allowed.text
    assert allowed.headers["access-control-allow-origin"] == ALLOWED
    assert "POST" in allowed.headers["access-control-allow-methods"]
    bad_method = httpx.options(
        f"{url}/v1/chat/completions", headers={"origin": ALLOWED, "access-control-request-method": "PUT"}
    )
    assert bad_method.status_code == 403, bad_method.text
    assert bad_method.json()["error"]["code"] == "cors_method_not_allowed"


@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded", "text/plain; charset=utf-8", None],
    ids=["curl-form", "text", "none"],
)
@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
def test_json_is_read_whatever_the_content_type_without_an_origin(
    url: str, path: str, content_type: str | None
) -> None:
    conversation_id = f"curl-{uuid.uuid4().hex}"
    body = chat_body(conversation_id) if path == "/api/chat" else completion("curl")
    headers = {"content-type": content_type} if content_type else {}
    with httpx.Client() as client:
        request = client.build_request("POST", f"{url}{path}", content=body, headers=headers)
        assert request.headers.get("content-type") == content_type  # httpx adds none for raw content
        reply = client.send(request)
    assert reply.status_code == 200, reply.text
    if path == "/api/chat":
        assert reply.json()["conversation_id"] == conversation_id
        assert stored(url, conversation_id)
    else:
        assert reply.json()["choices"][0]["message"]["content"]


def test_a_multipart_body_is_not_read_as_json(url: str) -> None:
    reply = post(f"{url}/api/chat", files={"message": ("m.txt", b"hi")})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["code"] != "invalid_json"  # not parsed as JSON (document uploads will use it)


def ws_url(url: str) -> str:
    return url.replace("http://", "ws://") + f"/ws/chat/ws-{uuid.uuid4().hex}"


def test_a_cross_site_websocket_handshake_is_refused(url: str) -> None:
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url(url), origin=Origin(EVIL), open_timeout=15)
    response = refused.value.response
    assert response.status_code == 403
    error = json.loads(response.body or b"{}")["error"]
    assert error["code"] == "origin_not_allowed"
    assert EVIL in error["message"]


@pytest.mark.parametrize("origin", [ALLOWED, "same-origin"])
def test_a_listed_or_same_origin_websocket_is_accepted(url: str, origin: str) -> None:
    sent_origin = url if origin == "same-origin" else origin
    with connect(ws_url(url), origin=Origin(sent_origin), open_timeout=15) as ws:
        ws.send(json.dumps({"message": "hello there", "model": "echo"}))
        frames: list[dict[str, Any]] = []
        while not frames or frames[-1]["event"] not in ("message_complete", "error"):
            frames.append(json.loads(ws.recv(timeout=15)))
    assert frames[-1]["event"] == "message_complete", frames


def test_without_cors_origins_only_same_origin_browsers_are_served() -> None:
    with running_parley(models=[{"name": "echo", "provider": "fake"}]) as base_url:
        conversation_id = f"evil-{uuid.uuid4().hex}"
        refused = post(f"{base_url}/api/chat", content=chat_body(conversation_id), headers={"origin": EVIL})
        assert_refused(refused, mentions=EVIL)
        assert not stored(base_url, conversation_id)
        same = post(f"{base_url}/api/chat", content=chat_body(conversation_id), headers={"origin": base_url})
        assert same.status_code == 200, same.text
        assert "access-control-allow-origin" not in same.headers
