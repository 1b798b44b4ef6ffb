"""Knowledge test helpers: a KnowledgeService on a real database, PDFs made here, and PostgreSQL
with pgvector from the `pgserver` wheel (a fixture starts it in a temporary directory).

Use the fixtures from a test module with `pytest_plugins = ["tests.support.knowledge"]`.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from parley.knowledge.config import KnowledgeSettings
from parley.knowledge.service import KnowledgeService, standalone_knowledge
from parley.store import async_url, create_engine, migrate


@contextlib.asynccontextmanager
async def knowledge_on(url: str, **settings: Any) -> AsyncIterator[KnowledgeService]:
    """A started KnowledgeService over the (migrated) database at `url`, closed afterwards."""
    await migrate(url)
    engine = create_engine(url)
    try:
        async with standalone_knowledge(KnowledgeSettings.model_validate(settings), engine) as service:
            await service.opened()
            yield service
    finally:
        await engine.dispose()


def pdf_bytes(pages: list[list[str]]) -> bytes:
    """A real PDF (Helvetica text, one list of lines per page), written out object by object."""
    objects: list[bytes] = [b"<< /Type /Catalog /Pages 2 0 R >>", b""]
    font = 3
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    kids: list[int] = []
    for lines in pages:
        escaped = [line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") for line in lines]
        body = "BT /F1 11 Tf 14 TL 72 760 Td " + " ".join(f"({line}) Tj T*" for line in escaped) + " ET"
        stream = body.encode("latin-1")
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
        content = len(objects)
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 %d 0 R >> >> "
            b"/Contents %d 0 R >>" % (font, content)
        )
        kids.append(len(objects))
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (
        b" ".join(b"%d 0 R" % kid for kid in kids),
        len(kids),
    )
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body_bytes in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body_bytes + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


@pytest.fixture(scope="session")
def pgvector_server() -> Iterator[str]:
    """A PostgreSQL server with the pgvector extension (from `pgserver`), for this run."""
    try:
        from pgserver.postgres_server import get_server
    except ImportError:
        pytest.skip("pgserver (PostgreSQL with pgvector, for tests) is not installed")
    data = Path(tempfile.mkdtemp(prefix="parley-pgvector-")) / "pgdata"
    server = get_server(data, cleanup_mode="delete")
    try:
        url = str(server.get_uri())
        problem = _vector_problem(server)
        if problem is not None:
            pytest.skip(problem)
        yield url
    finally:
        server.cleanup()


def _vector_problem(server: Any) -> str | None:
    """Why pgvector can't compute distances on this server, if it can't.

    The wheel's vector.so may be compiled for its build machine's CPU (pgvector builds with
    -march=native by default): where that CPU's instructions trap, the backend dies with SIGILL
    at the first distance. Better a skip saying so (a failure under PARLEY_REQUIRE_SERVICES)
    than a crash in the middle of a test.
    """
    try:
        vector = "[" + ",".join(["0.5"] * 256) + "]"  # (short vectors take a path that may not trap)
        server.psql(
            "CREATE EXTENSION IF NOT EXISTS vector; CREATE TEMP TABLE probe (id int, e vector(256)); "
            f"INSERT INTO probe SELECT g, '{vector}' FROM generate_series(1, 20) g; "
            f"SELECT id FROM probe ORDER BY e <#> '{vector}' LIMIT 3;"
        )
    except subprocess.CalledProcessError as exc:
        return f"pgvector from pgserver can't compute a distance on this CPU (the backend died: SIGILL?): {exc}"
    return None


async def _admin(server_url: str, statement: str) -> None:
    engine = create_async_engine(async_url(server_url), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def fresh_database(server_url: str) -> AsyncIterator[str]:
    """A new database `knowledge_*` on the server, dropped afterwards."""
    name = f"knowledge_{uuid.uuid4().hex[:12]}"
    await _admin(server_url, f'CREATE DATABASE "{name}"')
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        await _admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
