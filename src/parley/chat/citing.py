"""Answers that cite: retrieve passages for a turn, put them in the prompt, fit them to the context.

The retrieval query is the user's message, preceded by the previous user message when the
conversation has one: a follow-up such as "and how long does it last?" is searched together with
the question that says what "it" is. (One turn back: further back drifts off topic more often
than it resolves a reference.)

The passages reach the model as one system message after the agent's prompt, numbered as the
`sources` event numbers them, with the instruction to cite them as [1], [2]. Context fitting counts
that message like every other: passages may fill at most `knowledge.context_share` of the prompt's
budget, and when the conversation does not fit, passages go (lowest score first) before history.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from parley.chat.agents import KnowledgeTools
from parley.chat.context import FittedHistory, fit_to_context, reply_reserve
from parley.config import AgentConfig
from parley.errors import InvalidRequest
from parley.events import SourcePassage, Sources
from parley.knowledge.base import KnowledgeBase
from parley.knowledge.config import KnowledgeSettings
from parley.models.base import ChatMessage, Model
from parley.tools.base import Tool
from parley.tools.search_knowledge import SearchKnowledge

CITATION_INSTRUCTION = (
    "Answer using the numbered passages below when they are relevant. Cite each passage you use as [1], [2] "
    "(its number in square brackets) right after the statement it supports. If the passages do not answer "
    "the question, say so instead of guessing."
)

Prompt = Callable[[list[ChatMessage], ChatMessage | None], list[ChatMessage]]


def retrieval_query(message: str, history: Sequence[ChatMessage]) -> str:
    """What a turn searches with: the message, after the previous user message if there is one."""
    previous = next((m.text() for m in reversed(history) if m.role == "user" and m.text().strip()), None)
    return message if previous is None else f"{previous}\n{message}"


def passages_message(sources: Sources) -> ChatMessage | None:
    """The system message that carries the passages (None when there is nothing to say)."""
    if not sources.passages and not sources.pending:
        return None
    parts = [CITATION_INSTRUCTION]
    for passage in sources.passages:
        where = f", page {passage.page}" if passage.page is not None else ""
        parts.append(f"[{passage.index}] {passage.title}{where}\n{passage.text}")
    if not sources.passages:
        parts.append("No passage of the searched collections matched this question.")
    if sources.pending:
        titles = ", ".join(pending.title for pending in sources.pending)
        parts.append(f"Still being indexed, so not searched yet: {titles}. Tell the user so if it matters.")
    return ChatMessage(role="system", content="\n\n".join(parts))


def without_lowest(sources: Sources) -> Sources:
    """The sources less their lowest-scored passage, renumbered from 1 in their order."""
    lowest = min(range(len(sources.passages)), key=lambda i: sources.passages[i].score)
    kept = [passage for i, passage in enumerate(sources.passages) if i != lowest]
    return Sources(_renumbered(kept), sources.pending)


def _renumbered(passages: Sequence[SourcePassage]) -> list[SourcePassage]:
    return [passage if passage.index == n else replace(passage, index=n) for n, passage in enumerate(passages, 1)]


class Grounding:
    """Retrieval for chat turns, over the server's knowledge base (None: a server without one)."""

    def __init__(self, knowledge: KnowledgeBase | None, settings: KnowledgeSettings) -> None:
        self.knowledge = knowledge
        self._share = settings.context_share

    @staticmethod
    def collections_for(requested: Sequence[str], agent: AgentConfig | None) -> list[str]:
        """The request's collections, then the agent's, each once."""
        both = [*requested, *(agent.collections if agent is not None else ())]
        return list(dict.fromkeys(both))

    async def retrieve(self, query: str, collections: Sequence[str], owner: str | None) -> Sources | None:
        """The turn's sources (None without collections). Another owner's collection is a 404, as a missing one."""
        if not collections:
            return None
        if self.knowledge is None:
            raise InvalidRequest(
                "this server has no knowledge base to search", param="collections", code="knowledge_unavailable"
            )
        await self.knowledge.check_collections(collections, owner)
        found = await self.knowledge.retrieve(query, collections, owner)
        return Sources(_renumbered(found.passages), list(found.pending))

    async def fit(
        self,
        model: Model,
        prompt: Prompt,
        history: list[ChatMessage],
        sources: Sources | None,
        max_tokens: int | None,
    ) -> tuple[FittedHistory, Sources | None]:
        """The fitted prompt with as many passages as room allows: within the share of the budget
        passages may fill, and never at the cost of history that fits without them."""
        baseline = await fit_to_context(model, prompt(history, None), max_tokens)
        if sources is None:
            return baseline, None
        sources = await self._within_share(model, sources, max_tokens)
        while True:
            message = passages_message(sources)
            if message is None:
                return baseline, sources
            try:
                fitted = await fit_to_context(model, prompt(history, message), max_tokens)
            except InvalidRequest as exc:
                if exc.code != "context_length_exceeded":
                    raise
            else:
                if fitted.dropped <= baseline.dropped:
                    return fitted, sources
            if not sources.passages:  # only the pending note, and it would cost history
                return baseline, sources
            sources = without_lowest(sources)

    async def _within_share(self, model: Model, sources: Sources, max_tokens: int | None) -> Sources:
        context = model.context_size
        if context is None:
            return sources
        allowed = self._share * (context - reply_reserve(context, max_tokens))
        while sources.passages:
            message = passages_message(sources)
            if message is None or await model.count_tokens([message]) <= allowed:
                break
            sources = without_lowest(sources)
        return sources

    def search_tools(self, owner: str | None) -> KnowledgeTools:
        """`search_knowledge` over an agent's collections, for this caller (None: nothing to search)."""
        knowledge = self.knowledge

        def search_tool(agent: AgentConfig) -> Tool | None:
            if not agent.collections or knowledge is None:
                return None
            return SearchKnowledge(knowledge, agent.collections, owner)

        return search_tool

    @staticmethod
    def ground(messages: list[ChatMessage], sources: Sources | None) -> list[ChatMessage]:
        """`messages` (a client's, on `/v1`) with the passages after their leading system messages."""
        message = passages_message(sources) if sources is not None else None
        if message is None:
            return messages
        lead = 0
        while lead < len(messages) and messages[lead].role in ("system", "developer"):
            lead += 1
        return [*messages[:lead], message, *messages[lead:]]
