"""Raw model output normalised once, whichever provider produced it.

Harmony (gpt-oss) text becomes reasoning, content and tool calls here, for the in-process model
and for any upstream that returns raw Harmony in `content`; the per-model reasoning policy is
applied here too, so no transport ever sees what the model's config withholds.
"""

from __future__ import annotations

from typing import Literal

from parley.events import EventBatch, Finish, ReasoningDelta, StreamEvent, TextDelta
from parley.models.base import ChatRequest
from parley.models.harmony import HarmonyParser

HarmonyMode = Literal["auto", "on", "off"]
# Where a Harmony prompt leaves off: the chat template ends with the assistant's header start.
HARMONY_PROMPT_TAIL = "<|start|>assistant"


def tool_names(request: ChatRequest) -> list[str]:
    names = []
    for tool in request.tools or []:
        function = tool.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            names.append(function["name"])
    return names


class Normaliser:
    """Applied to each batch a model yields: Harmony parsed, reasoning withheld if configured.

    A plain function of batches, not a stream wrapping the model's stream: the run calls it as
    the batches pass, which spares every batch a generator hop.
    """

    def __init__(self, parser: HarmonyParser | None, *, send_reasoning: bool) -> None:
        self._parser = parser
        self._send_reasoning = send_reasoning

    @classmethod
    def for_request(
        cls, mode: HarmonyMode, template_is_harmony: bool, request: ChatRequest, *, send_reasoning: bool
    ) -> Normaliser | None:
        """The normaliser a request needs, or None if the model's batches pass as they are."""
        parser = _harmony_parser(mode, template_is_harmony, request)
        return None if parser is None and send_reasoning else cls(parser, send_reasoning=send_reasoning)

    def __call__(self, batch: EventBatch) -> EventBatch:
        if self._parser is not None:
            batch = self._parsed(batch, self._parser)
        if not self._send_reasoning:
            batch = [event for event in batch if not isinstance(event, ReasoningDelta)]
        return batch

    def _parsed(self, batch: EventBatch, parser: HarmonyParser) -> EventBatch:
        if parser.passes_through:  # plain text so far: a batch with no markup in sight passes as it came
            for event in batch:
                if type(event) is TextDelta and "<" in event.text:
                    break
            else:
                return batch
        out: list[StreamEvent] = []
        for event in batch:
            if isinstance(event, TextDelta):
                out += parser.feed(event.text)
            elif isinstance(event, Finish):
                out += parser.finish()
                out.append(Finish(parser.finish_reason(event.reason)))
            else:
                out.append(event)
        return out


def _harmony_parser(mode: HarmonyMode, template_is_harmony: bool, request: ChatRequest) -> HarmonyParser | None:
    if mode == "off":
        return None
    names = tool_names(request) or None
    if mode == "on" or template_is_harmony:
        return HarmonyParser(auto_detect=False, prompt_tail=HARMONY_PROMPT_TAIL, tool_names=names)
    return HarmonyParser(auto_detect=True, tool_names=names)
