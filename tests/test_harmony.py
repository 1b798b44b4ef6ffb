"""The Harmony parser on the examples of OpenAI's Harmony documentation, fed whole, one character
at a time and in random pieces. Edge cases are in test_harmony_edges.py, properties over
arbitrary splits and generated transcripts in test_harmony_properties.py."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

import pytest

from parley.events import ReasoningDelta, StreamEvent, TextDelta, ToolCallDelta
from parley.models.harmony import HarmonyParser, HarmonyToolCall

# --- helpers shared by the test_harmony_* modules -------------------------------------------------


def counting_ids() -> Callable[[], str]:
    counter = itertools.count()
    return lambda: f"call_{next(counter)}"


Run = tuple[str, ...]


def normalize(events: Iterable[StreamEvent]) -> list[Run]:
    """Adjacent deltas of one kind (of one call) merged: equal for any split of the same text.

    Also checks what every consumer relies on: no empty text deltas, and a call's first delta
    (only its first) carries its id and name.
    """
    runs: list[Run] = []
    announced: set[int] = set()
    for event in events:
        if isinstance(event, TextDelta | ReasoningDelta):
            assert event.text, f"empty {type(event).__name__}"
            kind = "text" if isinstance(event, TextDelta) else "reasoning"
            if runs and runs[-1][0] == kind:
                runs[-1] = (kind, runs[-1][1] + event.text)
            else:
                runs.append((kind, event.text))
        elif isinstance(event, ToolCallDelta):
            first = event.index not in announced
            assert (event.id is not None and event.name is not None) == first, event
            announced.add(event.index)
            if runs and runs[-1][:2] == ("tool", str(event.index)):
                runs[-1] = (*runs[-1][:4], runs[-1][4] + event.arguments)
            else:
                runs.append(("tool", str(event.index), event.id or "", event.name or "", event.arguments))
        else:
            raise AssertionError(f"the parser emitted {event!r}")
    return runs


@dataclass(frozen=True)
class Merged:
    reasoning: str
    content: str
    calls: tuple[tuple[str, str], ...]  # (name, arguments) per index


def merged(events: Iterable[StreamEvent]) -> Merged:
    reasoning, content = [], []
    calls: dict[int, list[str]] = {}
    for event in events:
        if isinstance(event, ReasoningDelta):
            reasoning.append(event.text)
        elif isinstance(event, TextDelta):
            content.append(event.text)
        elif isinstance(event, ToolCallDelta):
            calls.setdefault(event.index, ["", ""])
            calls[event.index][0] += event.name or ""
            calls[event.index][1] += event.arguments
    assert sorted(calls) == list(range(len(calls))), "call indexes are 0, 1, 2, ..."
    return Merged("".join(reasoning), "".join(content), tuple((n, a) for n, a in (calls[i] for i in sorted(calls))))


def feed_pieces(
    pieces: Iterable[str],
    *,
    auto_detect: bool = True,
    prompt_tail: str | None = None,
    tool_names: Collection[str] | None = None,
) -> tuple[list[StreamEvent], HarmonyParser]:
    parser = HarmonyParser(
        auto_detect=auto_detect, prompt_tail=prompt_tail, tool_names=tool_names, call_id=counting_ids()
    )
    events: list[StreamEvent] = []
    for piece in pieces:
        events += parser.feed(piece)
    events += parser.finish()
    return events, parser


def split_at(text: str, cuts: Iterable[int]) -> list[str]:
    points = sorted({min(max(c, 0), len(text)) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in itertools.pairwise(points)]


def random_pieces(text: str, rng: random.Random) -> list[str]:
    return split_at(text, (rng.randrange(len(text) + 1) for _ in range(rng.randrange(1, max(2, len(text) // 3)))))


def ways_to_feed(text: str) -> dict[str, list[str]]:
    rng = random.Random(text)
    ways = {"whole": [text], "by character": list(text)}
    ways |= {f"random pieces #{i}": random_pieces(text, rng) for i in range(20)}
    return ways


# --- the documentation's examples (openai/harmony docs/format.md and its tests) ---------------------

REASONING_ANSWER = (
    '<|channel|>analysis<|message|>User asks: "What is 2 + 2?" Simple arithmetic. Provide answer.<|end|>'
    "<|start|>assistant<|channel|>final<|message|>2 + 2 = 4.<|return|>"
)
TOOL_CALL = (
    "<|channel|>analysis<|message|>Need to use function get_weather.<|end|>"
    "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
    '<|message|>{"location":"San Francisco"}<|call|>'
)
PREAMBLE = (
    "<|channel|>analysis<|message|>{long chain of thought}<|end|>"
    "<|start|>assistant<|channel|>commentary<|message|>**Action plan**:\n1. Generate an HTML file\n"
    "2. Generate a JavaScript for the Node.js server\n3. Start the server\n---\n"
    "Will start executing the plan step by step<|end|>"
    "<|start|>assistant<|channel|>commentary to=functions.generate_file<|constrain|>json"
    '<|message|>{"template": "basic_html", "path": "index.html"}<|call|>'
)
RECIPIENT_IN_ROLE = (
    "<|start|>assistant to=functions.get_weather<|channel|>commentary"
    ' <|constrain|>json<|message|>{"location": "Tokyo"}<|call|>'
)
CONSTRAIN_ADJACENT = (
    "<|start|>assistant to=functions.get_weather<|channel|>commentary"
    '<|constrain|>json<|message|>{"location": "Tokyo"}<|call|>'
)
CHANNEL_THEN_RECIPIENT_ADJACENT = (
    "<|start|>assistant<|channel|>commentary to=functions.get_weather"
    '<|constrain|>json<|message|>{"latitude":48.8566,"longitude":2.3522}<|call|>'
)
# the shape gpt-oss's chat template renders (and llama.cpp's tests use): the content type as a word
JSON_WORD = (
    "<|channel|>analysis<|message|>We need to call get_weather for each city.<|end|>"
    '<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{"city": "New York City"}<|call|>'
)


@dataclass(frozen=True)
class Example:
    text: str
    reasoning: str
    content: str
    calls: tuple[tuple[str, str, str | None], ...]  # name, arguments, content type
    stop: str | None


EXAMPLES = {
    "reasoning then answer": Example(
        REASONING_ANSWER,
        'User asks: "What is 2 + 2?" Simple arithmetic. Provide answer.',
        "2 + 2 = 4.",
        (),
        "<|return|>",
    ),
    "reasoning then answer, laid out on two lines": Example(
        REASONING_ANSWER.replace("<|end|>", "<|end|>\n"),
        'User asks: "What is 2 + 2?" Simple arithmetic. Provide answer.',
        "2 + 2 = 4.",
        (),
        "<|return|>",
    ),
    "tool call, recipient after the channel": Example(
        TOOL_CALL,
        "Need to use function get_weather.",
        "",
        (("get_weather", '{"location":"San Francisco"}', "json"),),
        "<|call|>",
    ),
    "preamble then tool call": Example(
        PREAMBLE,
        "{long chain of thought}",
        "**Action plan**:\n1. Generate an HTML file\n2. Generate a JavaScript for the Node.js server\n"
        "3. Start the server\n---\nWill start executing the plan step by step",
        (("generate_file", '{"template": "basic_html", "path": "index.html"}', "json"),),
        "<|call|>",
    ),
    "recipient in the role, spaced constrain": Example(
        RECIPIENT_IN_ROLE, "", "", (("get_weather", '{"location": "Tokyo"}', "json"),), "<|call|>"
    ),
    "recipient in the role, adjacent constrain": Example(
        CONSTRAIN_ADJACENT, "", "", (("get_weather", '{"location": "Tokyo"}', "json"),), "<|call|>"
    ),
    "recipient after the channel, adjacent constrain": Example(
        CHANNEL_THEN_RECIPIENT_ADJACENT,
        "",
        "",
        (("get_weather", '{"latitude":48.8566,"longitude":2.3522}', "json"),),
        "<|call|>",
    ),
    "content type as a word": Example(
        JSON_WORD,
        "We need to call get_weather for each city.",
        "",
        (("get_weather", '{"city": "New York City"}', "json"),),
        "<|call|>",
    ),
}


@pytest.mark.parametrize("name", EXAMPLES)
def test_documented_examples_parse_the_same_however_they_are_split(name: str) -> None:
    example = EXAMPLES[name]
    whole = None
    for way, pieces in ways_to_feed(example.text).items():
        events, parser = feed_pieces(pieces)
        got = merged(events)
        assert got.reasoning == example.reasoning, way
        assert got.content == example.content, way
        assert got.calls == tuple((n, a) for n, a, _ in example.calls), way
        assert [(c.name, c.arguments, c.content_type) for c in parser.tool_calls] == list(example.calls), way
        assert all(c.complete for c in parser.tool_calls), way
        assert parser.is_harmony is True
        assert parser.has_tool_calls == bool(example.calls)
        assert parser.finish_reason() == ("tool_calls" if example.calls else "stop")
        assert parser.stop_token == example.stop
        assert parser.invalid_arguments() == []
        if whole is None:
            whole = normalize(events)
        assert normalize(events) == whole, way


def test_a_tool_call_streams_its_id_and_name_first_then_its_arguments() -> None:
    parser = HarmonyParser(call_id=counting_ids())
    head = TOOL_CALL.split("<|message|>{")[0] + "<|message|>"
    assert parser.feed(head) == [
        ReasoningDelta("Need to use function get_weather."),
        ToolCallDelta(0, id="call_0", name="get_weather"),
    ]
    call = parser.tool_calls[0]
    assert call == HarmonyToolCall(0, "call_0", "get_weather", "functions.get_weather", "commentary", "json", "", False)
    assert parser.feed('{"location":') == [ToolCallDelta(0, arguments='{"location":')]
    assert parser.feed('"San Francisco"}<|ca') == [ToolCallDelta(0, arguments='"San Francisco"}')]
    assert parser.feed("ll|>") == []
    assert parser.finish() == []
    assert parser.tool_calls[0].complete and parser.tool_calls[0].arguments == '{"location":"San Francisco"}'


def test_several_calls_get_consecutive_indexes_and_fresh_ids() -> None:
    text = (
        "<|channel|>analysis<|message|>Need weather data<|end|>"
        '<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Seoul"}<|call|>'
        '<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Tokyo"}<|call|>'
    )
    events, parser = feed_pieces([text])
    assert merged(events).calls == (("get_weather", '{"city": "Seoul"}'), ("get_weather", '{"city": "Tokyo"}'))
    assert [c.id for c in parser.tool_calls] == ["call_0", "call_1"]
    real = HarmonyParser()
    real.feed(text)
    first, second = real.tool_calls
    assert first.id.startswith("call_") and second.id.startswith("call_") and first.id != second.id


def test_a_built_in_tool_call_is_reasoning_not_a_function_call() -> None:
    # the documentation: the browser and python tools are called on the analysis channel
    text = (
        "<|channel|>analysis<|message|>Let me search.<|end|>"
        '<|start|>assistant<|channel|>analysis to=browser.search code<|message|>{"query": "weather Tokyo"}<|call|>'
    )
    events, parser = feed_pieces(list(text))
    assert merged(events) == Merged('Let me search.{"query": "weather Tokyo"}', "", ())
    assert not parser.has_tool_calls and parser.finish_reason() == "stop"


def test_a_bare_recipient_is_a_call_unless_the_request_declared_other_tools() -> None:
    # openai/harmony's test_simple_tool_call: a call to "lookup_weather" without the "functions." namespace
    text = (
        '<|channel|>analysis<|message|>User asks: "What is the weather in Tokyo?" We need to use lookup_weather tool.'
        '<|end|><|start|>assistant<|channel|>analysis to=lookup_weather code<|message|>{"location": "Tokyo"}<|call|>'
    )
    reasoning = 'User asks: "What is the weather in Tokyo?" We need to use lookup_weather tool.'
    events, parser = feed_pieces([text])
    assert merged(events) == Merged(reasoning, "", (("lookup_weather", '{"location": "Tokyo"}'),))
    assert parser.tool_calls[0].content_type == "code" and parser.tool_calls[0].channel == "analysis"
    assert parser.invalid_arguments() == []  # "code" is not JSON-typed
    events, parser = feed_pieces([text], tool_names={"lookup_weather"})
    assert merged(events).calls == (("lookup_weather", '{"location": "Tokyo"}'),)
    events, parser = feed_pieces([text], tool_names={"get_weather"})
    assert merged(events) == Merged(reasoning + '{"location": "Tokyo"}', "", ())


def test_a_tool_result_the_model_writes_itself_is_not_shown_as_the_answer() -> None:
    text = (
        '<|start|>assistant<|channel|>commentary to=functions.get_weather json<|message|>{"city": "Rome"}<|call|>'
        '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>{"sunny": true}<|end|>'
        "<|start|>assistant<|channel|>final<|message|>Sunny.<|return|>"
    )
    events, _ = feed_pieces(list(text))
    assert merged(events) == Merged('{"sunny": true}', "Sunny.", (("get_weather", '{"city": "Rome"}'),))
