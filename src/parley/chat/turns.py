"""A turn of a stored conversation: history in, the reply saved whatever becomes of it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from parley.access.principal import OPEN, Principal
from parley.chat.autosave import ReplyAutosave
from parley.chat.citing import Grounding, retrieval_query
from parley.chat.context import history_window
from parley.chat.run import Run
from parley.chat.service import ChatService, with_system_prompt
from parley.knowledge.config import KnowledgeSettings
from parley.logs import current_request_id
from parley.models.base import ChatMessage, ChatRequest, GenerationParams
from parley.store.conversations import ConversationStore, new_conversation_id
from parley.store.errors import ReplyNotSaved
from parley.store.records import RecentHistory

log = logging.getLogger("parley.chat")


@dataclass(frozen=True, slots=True)
class Turn:
    run: Run
    conversation_id: str
    message_id: str  # the reply's
    agent: str | None
    truncated_messages: int  # earlier messages left out to fit the model's context
    user_message_id: str  # the user's message of this turn


class ConversationChat:
    def __init__(
        self, chat: ChatService, store: ConversationStore, autosave: ReplyAutosave, grounding: Grounding | None = None
    ) -> None:
        self._chat = chat
        self._store = store
        self._autosave = autosave
        self._grounding = grounding or Grounding(None, KnowledgeSettings())

    async def start(
        self,
        message: str,
        *,
        conversation_id: str | None = None,
        model: str | None = None,
        agent: str | None = None,
        params: GenerationParams | None = None,
        context: Sequence[ChatMessage] = (),
        principal: Principal = OPEN,
        collections: Sequence[str] = (),
    ) -> Turn:
        """Save the user's message, start the reply, and arrange for the reply to be saved.

        Everything that can refuse the request (unknown model or agent, a message too long for
        the model, a collection not found) is checked before anything is written. `context`: system
        messages the model sees after the agent's prompt (e.g. the page a reader is on), kept like it
        whatever fitting leaves out, and not stored with the conversation. `collections`: knowledge
        collections (with the agent's) whose passages the reply cites (`parley.chat.citing`).
        """
        params = params or GenerationParams()
        owner = principal.owner  # another owner's conversation is not found, before anything is written
        entry, agent_config = self._chat.resolve(model, agent, principal)
        window = history_window(entry.model.context_size)
        recent = RecentHistory([], 0)
        if conversation_id is not None:  # (a new, client-chosen id is created with the turn)
            recent = await self._store.turn_history(conversation_id, window, owner=owner)
        user = ChatMessage(role="user", content=message)
        grounding = self._grounding
        searched = grounding.collections_for(collections, agent_config)
        found = await grounding.retrieve(retrieval_query(message, recent.messages), searched, owner)

        def prompt(history: list[ChatMessage], passages: ChatMessage | None) -> list[ChatMessage]:
            grounded = [*context, passages, *history, user] if passages is not None else [*context, *history, user]
            request = ChatRequest(messages=grounded, params=params)
            return with_system_prompt(request, agent_config, apply_actions=True).messages

        # Room for the reply the model will be asked for: the request's max_tokens, else the model's default.
        max_tokens = params.max_tokens if params.max_tokens is not None else entry.config.defaults.max_tokens
        fitted, sources = await grounding.fit(entry.model, prompt, recent.messages, found, max_tokens)
        admitted = await self._chat.admit(
            principal, entry, ChatRequest(messages=fitted.messages, params=params), agent_config
        )
        try:
            opened = await self._store.open_turn(
                conversation_id or new_conversation_id(), message, model=entry.config.name, agent=agent, owner=owner
            )
        except BaseException:
            await admitted.release()
            raise
        conversation, reply_id = opened.conversation_id, opened.reply_id
        if opened.user_position != recent.next_position:
            # Another server added to the conversation between the read and this write: the model
            # sees the conversation as it now is (the newest message alone fitted, so it still does).
            recent = await self._store.turn_history(conversation, window, before=opened.user_position, owner=owner)
            fitted, sources = await grounding.fit(entry.model, prompt, recent.messages, found, max_tokens)
        # Begun once the turn is stored: a run is work the server's drain waits for until it is closed.
        run = self._chat.begin(
            entry,
            ChatRequest(messages=fitted.messages, params=params),
            admitted,
            agent_config,
            knowledge=grounding.search_tools(owner),
        )
        run.sources = sources
        store_reasoning = entry.config.store_reasoning
        self._autosave.watch(reply_id, run, keep_reasoning=store_reasoning)

        async def save(ended: Run) -> None:
            self._autosave.forget(reply_id)
            try:
                await self._store.finish_reply(
                    reply_id,
                    conversation,
                    content=ended.text,
                    reasoning=ended.reasoning if store_reasoning else None,
                    tool_calls=ended.tool_calls or None,
                    usage=ended.usage,
                    timing=ended.timing(),
                    finish_reason=ended.finish_reason,
                    status=ended.outcome or "cancelled",
                    error=ended.error,
                    steps=ended.steps.messages if ended.steps else (),
                    agent=ended.steps.agents[-1] if ended.steps else agent,
                    sources=[asdict(passage) for passage in sources.passages] if sources is not None else None,
                )
            except Exception as exc:  # the client is told (instead of message_complete); details to the log
                log.exception(
                    "%s could not save reply %s of conversation %s", current_request_id(), reply_id, conversation
                )
                raise ReplyNotSaved() from exc

        run.on_end(save)
        return Turn(run, conversation, reply_id, agent, fitted.dropped, opened.user_message_id)
