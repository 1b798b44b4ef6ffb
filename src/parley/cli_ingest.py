"""`parley ingest PATH... --collection NAME`: index files and folders into a collection.

Works on the configured database directly (no running server needed), with the same
`--config` as `parley serve`: the collection (made if missing) is then searchable by the
servers on that database. Folders are walked for the formats knowledge reads (.txt, .md,
.html, .pdf); a file already in the collection (same content) is not indexed twice.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from parley.config import ConfigError, Settings, load_settings
from parley.errors import ParleyError
from parley.knowledge.parsing import MEDIA_TYPES

if TYPE_CHECKING:
    from parley.knowledge.service import KnowledgeService

errors = Console(stderr=True)
POLL_SECONDS = 0.2


def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files and folders to index.", exists=True)],
    collection: Annotated[str, typer.Option("--collection", help="The collection's name (made if missing).")],
    owner: Annotated[str | None, typer.Option("--owner", help="Its owner (default: none, seen by admins).")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", envvar="PARLEY_CONFIG", help="A parley.toml file.")
    ] = None,
) -> None:
    """Index files and folders into a collection, with a progress bar."""
    files = sorted({file for path in paths for file in _documents(path)})
    if not files:
        errors.print("[red]error:[/red] no .txt, .md, .html or .pdf files there", highlight=False)
        raise typer.Exit(1)
    try:
        settings = load_settings(config)
        failed = asyncio.run(_ingest(settings, files, collection, owner))
    except (ConfigError, ParleyError) as exc:
        errors.print(f"[red]error:[/red] {exc.message if isinstance(exc, ParleyError) else exc}", highlight=False)
        raise typer.Exit(1) from exc
    if failed:
        raise typer.Exit(1)


def _documents(path: Path) -> list[Path]:
    if path.is_file():
        return [path.resolve()]
    return [p.resolve() for p in path.rglob("*") if p.is_file() and p.suffix.lower() in MEDIA_TYPES]


async def _ingest(settings: Settings, files: list[Path], name: str, owner: str | None) -> int:
    from parley.knowledge.service import standalone_knowledge
    from parley.store import create_engine, default_database_url, migrate

    url = settings.database_url or default_database_url(settings.data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    await migrate(url)
    engine = create_engine(url)
    try:
        async with standalone_knowledge(settings.knowledge, engine) as knowledge:
            existing = [c for c in await knowledge.collections(owner) if c.name == name and c.owner == owner]
            target = existing[0] if existing else await knowledge.create_collection(name, owner)
            return await _add_all(knowledge, target.id, owner, files)
    finally:
        await engine.dispose()


async def _add_all(knowledge: KnowledgeService, collection_id: str, owner: str | None, files: list[Path]) -> int:
    failed = 0
    document_ids: dict[str, Path] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns) as progress:
        task = progress.add_task("indexing", total=len(files))
        for file in files:
            try:
                document, _ = await knowledge.add_document(
                    collection_id, owner, file.read_bytes(), title=file.stem, filename=file.name, uri=file.as_uri()
                )
            except ParleyError as exc:
                progress.console.print(f"[red]skipped[/red] {file}: {exc.message}", highlight=False)
                failed += 1
                progress.advance(task)
                continue
            document_ids[document.id] = file
        while document_ids:
            for document in await knowledge.documents(collection_id, owner):
                if document.id not in document_ids:
                    continue
                if document.state in ("ready", "failed"):
                    if document.state == "failed":
                        progress.console.print(f"[red]failed[/red] {document_ids[document.id]}: {document.error}")
                        failed += 1
                    del document_ids[document.id]
                    progress.advance(task)
            progress.update(task, description=f"indexing ({len(document_ids)} left)")
            if document_ids:
                await asyncio.sleep(POLL_SECONDS)  # polling the documents' states for the bar
    return failed
