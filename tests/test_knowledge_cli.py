"""`parley ingest`: files and folders into a collection, from the command line (a subprocess)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from tests.support.knowledge import knowledge_on, pdf_bytes


async def test_parley_ingest_indexes_a_folder_and_reports_what_it_could_not_read(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    (docs / "deeper").mkdir(parents=True)
    (docs / "lakes.md").write_text("# Lakes\n\nLake Baikal in Siberia is the deepest lake on Earth.\n")
    (docs / "deeper" / "rivers.html").write_text(
        "<main><h1>Rivers</h1><p>The Nile flows north into the Mediterranean.</p></main>"
    )
    (docs / "deeper" / "broken.pdf").write_bytes(b"%PDF-1.4 not a real pdf")
    (docs / "ignored.png").write_bytes(b"\x89PNG")
    desert = tmp_path / "desert.pdf"
    desert.write_bytes(pdf_bytes([["The Atacama is one of the driest deserts in the world."]]))
    config = tmp_path / "parley.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n')

    result = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "parley.cli",
            "ingest",
            str(docs),
            str(desert),
            "--collection",
            "geo",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 1  # one file could not be read: said so, and the exit status shows it
    assert "broken.pdf" in result.stdout + result.stderr

    async with knowledge_on(f"sqlite:///{tmp_path / 'data' / 'parley.db'}") as kb:
        (geo,) = [c for c in await kb.collections(None) if c.name == "geo"]
        documents = await kb.documents(geo.id, None)
        assert sorted(d.title for d in documents) == ["desert", "lakes", "rivers"]
        assert {d.state for d in documents} == {"ready"}
        top = (await kb.retrieve("which desert is driest", [geo.id], None)).passages[0]
        assert top.title == "desert" and top.page == 1 and top.uri == desert.resolve().as_uri()
