"""Knowledge end to end on a real server: documents uploaded over HTTP, indexed by the real
knowledge base (WordLlama, sqlite-vec, FTS5), then cited by `/api/chat` and `/v1`."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from httpx_sse import connect_sse

from tests.support.server import running_parley
from tests.support.upstream import Upstream, new_marker, running_upstream

ETNA = "# Volcanoes\n\nMount Etna, on Sicily, is the most active volcano in Europe and erupts every few years."
ALETSCH = "# Glaciers\n\nThe Aletsch glacier in the Swiss Alps is the largest glacier of the Alps, 20 km long."
BREAD = "# Baking\n\nSourdough bread rises with wild yeast and lactic acid bacteria kept in a starter."


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with running_upstream() as server:
        yield server


@pytest.fixture(scope="module")
def server(upstream: Upstream) -> Iterator[tuple[str, str]]:
    """A server with one collection of three ready documents: (its URL, the collection's id)."""
    models = [{"name": "text", "provider": "openai", "base_url": upstream.base_url + "/v1"}]
    with running_parley(models=models) as url, httpx.Client(base_url=url, timeout=30) as client:
        collection = client.post("/api/collections", json={"name": "geography"}).json()["id"]
        for text in (ETNA, ALETSCH, BREAD):
            title = text.splitlines()[0].lstrip("# ")
            added = client.post(f"/api/collections/{collection}/documents", json={"text": text, "title": title})
            assert added.status_code == 202
        for _ in range(600):
            documents = client.get(f"/api/collections/{collection}/documents").json()
            if all(document["state"] == "ready" for document in documents):
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"documents never became ready: {documents}")
        yield url, collection


def sse(url: str, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    with (
        httpx.Client(base_url=url, timeout=30) as client,
        connect_sse(client, "POST", "/api/chat", json=body) as source,
    ):
        assert source.response.status_code == 200, source.response.read()
        return [(event.event, json.loads(event.data)) for event in source.iter_sse()]


def test_a_question_is_answered_from_the_uploaded_document(server: tuple[str, str], upstream: Upstream) -> None:
    url, collection = server
    marker = new_marker()
    events = sse(url, {"message": f"Which volcano is the most active in Europe? {marker}", "collections": [collection]})
    assert [name for name, _ in events][:2] == ["message_start", "sources"]
    passages = events[1][1]["passages"]
    assert "Mount Etna" in passages[0]["text"]  # the right passage ranks first
    assert passages[0]["index"] == 1 and passages[0]["title"] == "Volcanoes"
    prompt = "\n".join(str(m["content"]) for m in upstream.find(marker).body["messages"] if m["role"] == "system")
    assert "Mount Etna, on Sicily" in prompt and "[1]" in prompt
    conversation = events[0][1]["conversation_id"]
    stored = httpx.get(f"{url}/api/conversations/{conversation}").json()["messages"][-1]
    assert stored["sources"] == passages


def test_v1_carries_the_sources_and_another_owner_gets_404(server: tuple[str, str]) -> None:
    url, collection = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    reply = client.chat.completions.create(
        model="text",
        messages=[{"role": "user", "content": "How long is the Aletsch glacier?"}],
        extra_body={"parley_collections": [collection]},
    )
    sources = (reply.model_extra or {})["parley"]["sources"]["passages"]
    assert "Aletsch" in sources[0]["text"]
    refused = httpx.post(
        f"{url}/api/chat",
        json={"message": "volcano?", "collections": [collection], "stream": False},
        headers={"X-Parley-User": "mallory"},
    )
    assert refused.status_code == 404
    assert refused.json()["error"]["code"] == "collection_not_found"
