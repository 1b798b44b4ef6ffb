"""`search_knowledge`: an agent's tool over its own knowledge collections, for one caller.

Made per run (the collections are the agent's, the owner the caller's), so an agent never
searches another owner's documents. The result lists numbered passages the model can cite.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from parley.knowledge.base import KnowledgeBase
from parley.tools.base import Tool, ToolFailed, ToolSpec

MAX_RESULTS = 10
_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "query": {"type": "string", "minLength": 1, "description": "What to look for, in plain words."},
        "top_k": {"type": "integer", "minimum": 1, "maximum": MAX_RESULTS, "description": "How many passages."},
    },
    "required": ["query"],
    "additionalProperties": False,
}


class SearchKnowledge(Tool):
    def __init__(self, knowledge: KnowledgeBase, collections: Sequence[str], owner: str | None) -> None:
        self._knowledge = knowledge
        self._collections = list(collections)
        self._owner = owner
        self.spec = ToolSpec(
            name="search_knowledge",
            description=(
                "Search the agent's document collections; returns numbered passages with their titles. "
                "Cite a passage you use as [n]."
            ),
            parameters=_PARAMETERS,
        )

    async def run(self, arguments: dict[str, Any]) -> str:
        query = str(arguments["query"]).strip()
        if not query:
            raise ToolFailed("query is empty: say what to look for")
        found = await self._knowledge.retrieve(
            query, self._collections, self._owner, top_k=int(arguments.get("top_k") or 5)
        )
        lines: list[str] = []
        for number, passage in enumerate(found.passages, 1):
            page = f", page {passage.page}" if passage.page is not None else ""
            lines.append(f"[{number}] {passage.title}{page}\n{passage.text}")
        if not lines:
            lines.append("No passage matched.")
        if found.pending:
            titles = ", ".join(pending.title for pending in found.pending)
            lines.append(f"Still being indexed, not searched yet: {titles}")
        return "\n\n".join(lines)
