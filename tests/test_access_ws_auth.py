"""WebSocket authentication on a server that requires keys: by header, by subprotocol (what a
browser can do), by first frame, and the refusals without a key."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from parley.api.ws_auth import FIRST_FRAME_SECONDS
from tests.support.server import running_parley
from tests.support.ws import WAIT, chat, new_session, receive, text_of

ADMIN_KEY = secrets.token_urlsafe(32)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PARLEY_ADMIN_KEY", ADMIN_KEY)
        with running_parley(models=[{"name": "echo", "provider": "fake"}]) as url:
            yield url


@pytest.fixture(scope="module")
def key(server: str) -> str:
    made = httpx.post(
        f"{server}/api/admin/keys", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, json={"name": "browser"}
    )
    assert made.status_code == 201, made.text
    return str(made.json()["key"])


def ws_url(server: str) -> str:
    return server.replace("http://", "ws://") + f"/ws/chat/{new_session()}"


def test_a_key_in_a_header_authenticates_a_socket(server: str, key: str) -> None:
    with connect(ws_url(server), additional_headers={"Authorization": f"Bearer {key}"}, open_timeout=WAIT) as ws:
        assert text_of(chat(ws, "by header")) == "by header"


def test_a_browser_offers_its_key_as_a_subprotocol_and_gets_parley_back(server: str, key: str) -> None:
    with connect(ws_url(server), subprotocols=["parley", f"parley.key.{key}"], open_timeout=WAIT) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "parley"
        assert text_of(chat(ws, "by subprotocol")) == "by subprotocol"


def test_a_wrong_key_as_a_subprotocol_refuses_the_handshake(server: str) -> None:
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url(server), subprotocols=["parley", "parley.key.pk-" + "x" * 43], open_timeout=WAIT)  # type: ignore[list-item]
    assert refused.value.response.status_code == 401
    assert json.loads(refused.value.response.body or b"{}")["error"]["code"] == "invalid_api_key"


def test_a_key_in_the_first_frame_authenticates_a_socket(server: str, key: str) -> None:
    with connect(ws_url(server), open_timeout=WAIT) as ws:
        ws.send(json.dumps({"type": "auth", "api_key": key}))
        assert receive(ws) == {"event": "authenticated", "data": {"key": "browser"}}
        assert text_of(chat(ws, "by first frame")) == "by first frame"


@pytest.mark.parametrize(
    "first",
    [
        {"message": "no key, straight to chatting"},
        {"type": "auth", "api_key": "pk-" + "y" * 43},
        {"type": "auth"},
        {"type": "ping"},
    ],
    ids=["a-message", "a-wrong-key", "no-key-field", "a-ping"],
)
def test_a_socket_that_does_not_authenticate_first_is_told_and_closed(server: str, first: dict[str, str]) -> None:
    with connect(ws_url(server), open_timeout=WAIT) as ws:
        ws.send(json.dumps(first))
        error = receive(ws)
        assert (error["event"], error["data"]["code"], error["data"]["type"]) == (
            "error",
            "unauthorized",
            "authentication_error",
        )
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=WAIT)
        assert ws.close_code == 1008


def test_a_key_is_never_read_from_the_query_string(server: str, key: str) -> None:
    with connect(ws_url(server) + f"?api_key={key}", open_timeout=WAIT) as ws:
        ws.send(json.dumps({"message": "hello"}))
        assert receive(ws)["data"]["code"] == "unauthorized"


def test_a_socket_that_sends_nothing_is_closed_after_the_auth_window(server: str) -> None:
    with connect(ws_url(server), open_timeout=WAIT) as ws:
        error = json.loads(ws.recv(timeout=FIRST_FRAME_SECONDS + WAIT))
        assert (error["event"], error["data"]["code"]) == ("error", "unauthorized")
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=WAIT)
        assert ws.close_code == 1008
