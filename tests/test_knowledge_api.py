"""`/api/collections` on a real server: uploads (multipart and JSON), states, search, refusals,
URL ingestion from an allowed host only, and PostgreSQL without pgvector answering 503."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from tests.support.knowledge import pdf_bytes
from tests.support.server import running_parley

pytest_plugins = ["tests.support.databases"]
MODELS = [{"name": "echo", "provider": "fake"}]


def _ready(client: httpx.Client, collection_id: str) -> list[dict[str, Any]]:
    for _ in range(600):
        documents: list[dict[str, Any]] = client.get(f"/api/collections/{collection_id}/documents").json()
        if all(d["state"] in ("ready", "failed") for d in documents):
            return documents
        time.sleep(0.05)
    raise AssertionError("documents never finished indexing")


@pytest.fixture
def page_server() -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 serving one HTML page (for URL ingestion)."""
    html = b"<html><body><main><h1>Owls</h1><p>Owls can turn their heads about 270 degrees.</p></main></body></html>"
    loop = asyncio.new_event_loop()

    async def page(_: web.Request) -> web.Response:
        return web.Response(body=html, content_type="text/html")

    app = web.Application()
    app.router.add_get("/owls.html", page)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    import threading

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.run_until_complete(runner.cleanup())
        loop.close()


def test_upload_list_search_and_delete_over_http(page_server: str) -> None:
    knowledge = {"url_allow_hosts": ["127.0.0.1"]}
    with running_parley(models=MODELS, knowledge=knowledge) as url, httpx.Client(base_url=url, timeout=60) as c:
        created = c.post("/api/collections", json={"name": "course", "top_k": 3})
        assert created.status_code == 201, created.text
        cid = created.json()["id"]
        pdf = c.post(
            f"/api/collections/{cid}/documents",
            files={
                "file": (
                    "sea.pdf",
                    pdf_bytes([["Intro page."], ["Tides follow the moon's gravity."]]),
                    "application/pdf",
                )
            },
            data={"title": "The sea"},
        )
        assert pdf.status_code == 202 and pdf.json()["state"] == "queued" and pdf.json()["title"] == "The sea"
        text = c.post(f"/api/collections/{cid}/documents", json={"text": "# Ants\n\nAnts farm aphids for honeydew."})
        assert text.status_code == 202, text.text
        page = c.post(f"/api/collections/{cid}/documents", json={"url": f"{page_server}/owls.html"})
        assert page.status_code == 202, page.text
        assert page.json()["uri"] == f"{page_server}/owls.html"
        documents = _ready(c, cid)
        assert sorted(d["state"] for d in documents) == ["ready"] * 3

        found = c.post(f"/api/collections/{cid}/search", json={"query": "what do tides follow"}).json()
        top = found["data"][0]
        assert (top["document_id"], top["page"], top["index"]) == (pdf.json()["id"], 2, 1)
        owls = c.post(f"/api/collections/{cid}/search", json={"query": "how far can owls turn their heads"}).json()
        assert owls["data"][0]["document_id"] == page.json()["id"]

        assert c.delete(f"/api/collections/{cid}/documents/{pdf.json()['id']}").status_code == 204
        after = c.post(f"/api/collections/{cid}/search", json={"query": "tides moon gravity"}).json()
        assert all(p["document_id"] != pdf.json()["id"] for p in after["data"])
        assert c.delete(f"/api/collections/{cid}").status_code == 204
        assert c.get(f"/api/collections/{cid}").status_code == 404


def test_refusals_are_clear_4xx_in_the_openai_shape() -> None:
    with running_parley(models=MODELS) as url, httpx.Client(base_url=url, timeout=60) as c:
        cid = c.post("/api/collections", json={"name": "c"}).json()["id"]
        cases = [
            (
                c.post(
                    f"/api/collections/{cid}/documents",
                    files={"file": ("x.pdf", b"%PDF-1.7 not really", "application/pdf")},
                ),
                400,
                "unsupported_document",
            ),
            (
                c.post(f"/api/collections/{cid}/documents", files={"file": ("x.png", b"\x89PNG\r\n", "image/png")}),
                400,
                "unsupported_document",
            ),
            (
                c.post(f"/api/collections/{cid}/documents", json={"url": "http://169.254.169.254/latest"}),
                400,
                "url_not_allowed",
            ),
            (c.post(f"/api/collections/{cid}/documents", json={"url": "file:///etc/passwd"}), 400, None),
            (c.post(f"/api/collections/{cid}/documents", json={"text": "a", "url": "http://x"}), 400, None),
            (
                c.post(f"/api/collections/{cid}/documents", content=b"raw", headers={"content-type": "text/plain"}),
                400,
                None,  # (refused at the edge: a POST body Parley reads is JSON or multipart)
            ),
            (c.post("/api/collections/kc_missing/documents", json={"text": "hello"}), 404, "collection_not_found"),
            (c.post("/api/collections", json={"name": ""}), 400, None),
            (c.post(f"/api/collections/{cid}/search", json={"query": "x", "top_k": 0}), 400, None),
        ]
        for response, status, code in cases:
            assert response.status_code == status, response.text
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}
            if code is not None:
                assert error["code"] == code
        assert c.get(f"/api/collections/{cid}/documents").json() == []


def test_postgresql_without_pgvector_answers_503_and_the_rest_works(postgres_url: str) -> None:
    with running_parley(models=MODELS, database_url=postgres_url) as url, httpx.Client(base_url=url, timeout=60) as c:
        refused = c.post("/api/collections", json={"name": "c"})
        assert refused.status_code == 503
        assert "CREATE EXTENSION vector" in refused.json()["error"]["message"]
        assert c.get("/api/conversations").status_code == 200
