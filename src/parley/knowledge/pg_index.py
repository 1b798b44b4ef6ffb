"""The index on PostgreSQL: pgvector for vectors, full-text search (`tsvector`, GIN) for keywords.

Each collection's vectors are a table of their own (`vector(dimension)`, an HNSW index for inner
product); keywords are a stored `tsvector` column of `knowledge_chunks` with a GIN index, kept by
PostgreSQL as rows come and go. Both need `CREATE EXTENSION vector` on the database (done here when the
role may; otherwise knowledge answers 503 saying so, and the rest of Parley works).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from parley.knowledge.index import KEYWORD_RANK_BUDGET, KnowledgeUnavailable, informative_terms, query_terms

NEEDS_PGVECTOR = (
    "knowledge on PostgreSQL needs the pgvector extension: install it on the server and run "
    "`CREATE EXTENSION vector;` in Parley's database"
)
_TS_CONFIG = "english"
# How many chunks hold each query word, estimated from the statistics ANALYZE keeps of the
# commonest lexemes (pg_stats.most_common_elems: a fraction of rows each): counting them was as
# slow as the ranking it saves. A word not listed is rare (0); a PostgreSQL stop word is left out.
_MATCHES_ESTIMATE = text(
    "SELECT t.term, coalesce(max(s.freq), 0) * greatest(max(c.reltuples), 0) "
    "FROM unnest(CAST(:terms AS text[])) AS t(term) "
    f"CROSS JOIN LATERAL unnest(tsvector_to_array(to_tsvector('{_TS_CONFIG}', t.term))) AS l(lexeme) "
    "LEFT JOIN (SELECT e.elem, e.freq FROM pg_stats AS ps, "
    "unnest(CAST(CAST(ps.most_common_elems AS text) AS text[]), ps.most_common_elem_freqs) AS e(elem, freq) "
    "WHERE ps.schemaname = current_schema() AND ps.tablename = 'knowledge_chunks' "
    "AND ps.attname = 'search_words') AS s ON s.elem = l.lexeme "
    "CROSS JOIN (SELECT reltuples FROM pg_class WHERE oid = CAST('knowledge_chunks' AS regclass)) AS c "
    "GROUP BY t.term"
)


def _literal(vector: Sequence[float]) -> str:
    return "[" + ",".join(f"{float(value):.7g}" for value in vector) + "]"


class PostgresIndex:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @classmethod
    async def open(cls, engine: AsyncEngine) -> PostgresIndex:
        try:
            async with engine.begin() as connection:
                await connection.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
                # Stored, not an expression index: ranking reads each match's words, and computing
                # them per query for thousands of matches took hundreds of ms at 10,000 chunks.
                await connection.execute(
                    text(
                        "ALTER TABLE knowledge_chunks ADD COLUMN IF NOT EXISTS search_words tsvector "
                        f"GENERATED ALWAYS AS (to_tsvector('{_TS_CONFIG}', text)) STORED"
                    )
                )
                await connection.execute(
                    text(
                        "CREATE INDEX IF NOT EXISTS ix_knowledge_chunks_words ON knowledge_chunks "
                        "USING GIN (search_words)"
                    )
                )
                await connection.execute(text("DROP INDEX IF EXISTS ix_knowledge_chunks_fts"))
        except DBAPIError as exc:
            raise KnowledgeUnavailable(NEEDS_PGVECTOR, detail=repr(exc)) from exc
        return cls(engine)

    async def create(self, vector_table: str, keyword_table: str, dimension: int) -> None:
        async with self._engine.begin() as connection:
            await connection.execute(
                text(
                    f"CREATE TABLE IF NOT EXISTS {vector_table} "
                    f"(id BIGINT PRIMARY KEY, embedding vector({dimension}) NOT NULL)"
                )
            )
            await connection.execute(
                text(
                    f"CREATE INDEX IF NOT EXISTS {vector_table}_hnsw ON {vector_table} "
                    "USING hnsw (embedding vector_ip_ops)"
                )
            )

    async def add(
        self,
        vector_table: str,
        keyword_table: str,
        chunk_ids: Sequence[int],
        texts: Sequence[str],
        vectors: Sequence[Sequence[float]],
    ) -> None:
        await self.add_vectors(vector_table, chunk_ids, vectors)  # (keywords: the GIN index follows the chunks)

    async def add_vectors(
        self, vector_table: str, chunk_ids: Sequence[int], vectors: Sequence[Sequence[float]]
    ) -> None:
        if not chunk_ids:
            return
        async with self._engine.begin() as connection:
            await connection.execute(
                text(
                    f"INSERT INTO {vector_table} (id, embedding) VALUES (:id, CAST(:embedding AS vector)) "
                    "ON CONFLICT (id) DO UPDATE SET embedding = EXCLUDED.embedding"
                ),
                [{"id": i, "embedding": _literal(v)} for i, v in zip(chunk_ids, vectors, strict=True)],
            )

    async def remove(self, vector_table: str, keyword_table: str, chunk_ids: Sequence[int]) -> None:
        if not chunk_ids:
            return
        async with self._engine.begin() as connection:
            await connection.execute(text(f"DELETE FROM {vector_table} WHERE id = ANY(:ids)"), {"ids": list(chunk_ids)})

    async def drop(self, vector_table: str, keyword_table: str | None) -> None:
        async with self._engine.begin() as connection:
            await connection.execute(text(f"DROP TABLE IF EXISTS {vector_table}"))

    async def nearest(self, vector_table: str, vector: Sequence[float], n: int) -> list[tuple[int, float]]:
        async with self._engine.connect() as connection:
            await connection.execute(text(f"SET LOCAL hnsw.ef_search = {max(40, n)}"))
            rows = await connection.execute(
                text(
                    f"SELECT id, -(embedding <#> CAST(:q AS vector)) AS similarity FROM {vector_table} "
                    "ORDER BY embedding <#> CAST(:q AS vector) LIMIT :n"
                ),
                {"q": _literal(vector), "n": n},
            )
            return [(int(row[0]), float(row[1])) for row in rows]

    async def keyword(self, keyword_table: str, collection_id: str, query: str, n: int) -> list[int]:
        terms = query_terms(query)
        if not terms:
            return []
        async with self._engine.connect() as connection:
            counts = await connection.execute(_MATCHES_ESTIMATE, {"terms": terms})
            chosen = informative_terms([(str(row[0]), int(row[1])) for row in counts])
            if not chosen:
                return []
            rows = await connection.execute(
                text(
                    # Any word may match (OR), as FTS5 does: plainto_tsquery's stems, joined by | not &.
                    "WITH q AS (SELECT CAST(replace(CAST(plainto_tsquery("
                    f"'{_TS_CONFIG}', :words) AS text), '&', '|') AS tsquery) AS query) "
                    "SELECT m.id FROM (SELECT c.id, c.search_words FROM knowledge_chunks c, q "
                    "WHERE c.collection_id = :collection AND c.search_words @@ q.query LIMIT :budget) AS m, q "
                    "ORDER BY ts_rank(m.search_words, q.query) DESC LIMIT :n"
                ),
                {"words": " ".join(chosen), "collection": collection_id, "budget": KEYWORD_RANK_BUDGET, "n": n},
            )
            return [int(row[0]) for row in rows]

    async def aclose(self) -> None:
        return None
