"""The Harmony parser's edge cases: chunks split inside tokens, streams starting mid-header or cut
off, plain text passed through, malformed output, and the JSON check of call arguments."""

from __future__ import annotations

from collections.abc import Collection

import pytest

from parley.events import ReasoningDelta, TextDelta, ToolCallDelta
from parley.models.harmony import (
    MAX_HEADER_CHARS,
    ArgumentsError,
    HarmonyParser,
    HarmonyToolCall,
    invalid_json_arguments,
    looks_like_harmony,
    parse_harmony,
)
from tests.test_harmony import Merged, counting_ids, feed_pieces, merged, normalize, ways_to_feed

FINAL = "<|start|>assistant<|channel|>final<|message|>"


def parse_every_way(
    text: str, *, auto_detect: bool = True, prompt_tail: str | None = None, tool_names: Collection[str] | None = None
) -> Merged:
    """The merged result, after checking that every way of feeding the text gives the same events."""
    results = {
        way: normalize(feed_pieces(pieces, auto_detect=auto_detect, prompt_tail=prompt_tail, tool_names=tool_names)[0])
        for way, pieces in ways_to_feed(text).items()
    }
    whole = results["whole"]
    assert all(result == whole for result in results.values()), results
    return merged(feed_pieces([text], auto_detect=auto_detect, prompt_tail=prompt_tail, tool_names=tool_names)[0])


# --- streaming: emit at once, hold back only what may be a special token ----------------------------


def test_text_is_emitted_as_it_arrives_not_when_the_message_ends() -> None:
    parser = HarmonyParser()
    assert parser.feed("<|channel|>analysis<|message|>Think") == [ReasoningDelta("Think")]
    assert parser.feed("ing hard") == [ReasoningDelta("ing hard")]
    assert parser.feed("<|end|><|start|>assistant<|channel|>final<|message|>4") == [TextDelta("4")]


@pytest.mark.parametrize(
    ("chunk", "emitted", "held"),
    [
        ("a<b", "a<b", ""),
        ("a <", "a ", "<"),
        ("a <|", "a ", "<|"),
        ("a <|re", "a ", "<|re"),
        ("a <|retu", "a ", "<|retu"),
        ("a <|rex", "a <|rex", ""),
        ("a <|x|> b", "a <|x|> b", ""),
        ("x < y || z |> w", "x < y || z |> w", ""),
    ],
)
def test_only_a_possible_special_token_prefix_is_held_back(chunk: str, emitted: str, held: str) -> None:
    parser = HarmonyParser()
    parser.feed(FINAL)
    assert merged(parser.feed(chunk)).content == emitted
    assert merged(parser.finish()).content == held  # a cut-off stream: the held text is not lost


def test_a_special_token_split_across_chunks_is_recognised() -> None:
    parser = HarmonyParser()
    events = [
        e for piece in ["<|cha", "nnel|>fin", "al<|mes", "sage|>Hi <|", "ret", "urn|>"] for e in parser.feed(piece)
    ]
    assert events == [TextDelta("Hi ")] and parser.stop_token == "<|return|>"
    assert parser.finish() == []


def test_text_that_only_resembles_special_tokens_is_kept_exactly() -> None:
    body = "a <|b|> c <|<|endx <| |> <|im_end|> <|start <<|| ||>> done"
    got = parse_every_way(FINAL + body + "<|end|>")
    assert got.content == body


def test_multi_byte_text_passes_through_untouched() -> None:
    body = "東京の天気は☀️ 20°C — naïve café 👩🏽‍💻"
    got = parse_every_way("<|channel|>analysis<|message|>" + body + "<|end|>" + FINAL + body + "<|return|>")
    assert got == Merged(body, body, ())


# --- where a completion starts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        ' to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>',
        'to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>{"city": "Paris"}<|call|>',
        '<|channel|>commentary to=functions.get_weather<|constrain|>json<|message|>{"city": "Paris"}<|call|>',
    ],
)
def test_a_completion_starting_mid_header_after_the_prompts_start_assistant(text: str) -> None:
    assert parse_every_way(text).calls == (("get_weather", '{"city": "Paris"}'),)
    assert parse_harmony(text).tool_calls[0].content_type == "json"


def test_the_prompt_tail_sets_where_the_completion_starts() -> None:
    # a template that forces the final channel: the completion is the answer's text
    got = parse_every_way("4, of course.<|return|>", prompt_tail=FINAL)
    assert got == Merged("", "4, of course.", ())
    got = parse_every_way("analysis<|message|>hmm<|end|>", prompt_tail="<|start|>assistant<|channel|>")
    assert got == Merged("hmm", "", ())
    # the prompt opened a call: the first feed announces it
    events, parser = feed_pieces(
        ['"Paris"}', "<|call|>"],
        prompt_tail='<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{"city": ',
    )
    assert events[0] == ToolCallDelta(0, id="call_0", name="get_weather", arguments='{"city": "Paris"}')
    assert parser.invalid_arguments() == [] and parser.tool_calls[0].complete


def test_leading_whitespace_before_harmony_is_dropped() -> None:
    assert parse_every_way("\n  " + FINAL + "Hi<|return|>") == Merged("", "Hi", ())


# --- plain text ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "Hello! 2 + 2 = 4.",
        "to do: buy milk",
        "t",
        "<b>bold</b> and <|end|> later",
        "<|im_start|>assistant\nHi<|im_end|>",
        "<|sta",
        "a < b and b <| c",
        "",
    ],
)
def test_text_that_does_not_start_like_harmony_passes_through_untouched(text: str) -> None:
    for way, pieces in ways_to_feed(text).items() if text else [("empty", [""])]:
        events, parser = feed_pieces(pieces)
        assert all(isinstance(e, TextDelta) for e in events), way
        assert "".join(e.text for e in events if isinstance(e, TextDelta)) == text, way
        assert parser.is_harmony is False, way
        assert not parser.has_tool_calls


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Sure, let me think. <|channel|>analysis<|message|>hmm<|end|>"
            "<|start|>assistant<|channel|>final<|message|>Answer<|return|>",
            Merged("hmm", "Sure, let me think. Answer", ()),
        ),
        (" " * 300 + "<|start|>assistant<|channel|>final<|message|>x", Merged("", " " * 300 + "x", ())),
        (
            "Checking. <|start|>assistant<|channel|>commentary to=functions.get_weather"
            ' <|constrain|>json<|message|>{"city": "Paris"}<|call|>',
            Merged("", "Checking. ", (("get_weather", '{"city": "Paris"}'),)),
        ),
    ],
)
def test_plain_text_that_switches_to_harmony_is_parsed_from_there(text: str, expected: Merged) -> None:
    assert parse_every_way(text) == expected


def test_plain_text_is_decided_at_its_first_characters() -> None:
    parser = HarmonyParser()
    assert parser.feed("He") == [TextDelta("He")]
    assert parser.is_harmony is False
    assert parser.feed("llo <|end|>") == [TextDelta("llo <|end|>")]
    parser = HarmonyParser()
    assert parser.feed("<|") == [] and parser.is_harmony is None
    assert parser.feed("chan") == [] and parser.is_harmony is None
    assert parser.feed("nel|>final<|message|>Hi") == [TextDelta("Hi")] and parser.is_harmony is True


def test_looks_like_harmony() -> None:
    assert looks_like_harmony("<|channel|>analysis") is True
    assert looks_like_harmony("<|start|>") is True
    assert looks_like_harmony(" to=functions.f") is True
    assert looks_like_harmony("\n<|end|>") is True
    for undecided in ["", " ", "<", "<|", "<|chan", "t", " to"]:
        assert looks_like_harmony(undecided) is None, undecided
    for plain in ["Hello", "<b>", "<|im_start|>", "tom", "to =", " " * 300]:
        assert looks_like_harmony(plain) is False, plain


def test_without_auto_detection_stray_text_is_content() -> None:
    got = parse_every_way("The answer is 4." + FINAL + "Four.<|return|>", auto_detect=False)
    assert got == Merged("", "The answer is 4.Four.", ())


# --- message boundaries, cut-offs and malformed output --------------------------------------------------


def test_a_stream_cut_off_mid_message_flushes_what_was_open() -> None:
    parser = HarmonyParser()
    events = parser.feed("<|channel|>analysis<|message|>Thinking about <|")
    assert events == [ReasoningDelta("Thinking about ")]
    assert parser.finish() == [ReasoningDelta("<|")]
    assert parser.stop_token is None
    assert parser.finish() == []
    with pytest.raises(RuntimeError):
        parser.feed("more")


def test_a_call_cut_off_is_incomplete_and_its_arguments_are_reported() -> None:
    text = '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"location": "Tok'
    events, parser = feed_pieces(list(text))
    assert merged(events).calls == (("get_weather", '{"location": "Tok'),)
    (call,) = parser.tool_calls
    assert not call.complete
    (error,) = parser.invalid_arguments()
    assert error.index == 0 and error.name == "get_weather" and not error.complete
    assert "not valid JSON" in error.error


def test_a_stream_cut_off_inside_a_header_emits_nothing_for_it() -> None:
    got = parse_every_way("<|channel|>analysis<|message|>ok<|end|><|start|>assistant<|channel|>fin")
    assert got == Merged("ok", "", ())


def test_every_terminator_ends_a_message_and_a_new_start_ends_an_open_one() -> None:
    text = (
        "<|channel|>analysis<|message|>a<|end|>"
        "<|start|>assistant<|channel|>commentary<|message|>b<|end|>"
        '<|start|>assistant<|channel|>commentary to=functions.f json<|message|>{"x": 1}<|end|>'
        '<|start|>assistant<|channel|>commentary to=functions.g json<|message|>{"y": 2}'
        "<|start|>assistant<|channel|>final<|message|>c<|return|>"
        "<|start|>assistant<|channel|>analysis<|message|>d<|call|>"
    )
    assert parse_every_way(text) == Merged("ad", "bc", (("f", '{"x": 1}'), ("g", '{"y": 2}')))
    calls = parse_harmony(text).tool_calls
    assert [c.complete for c in calls] == [True, False]


def test_a_channel_token_without_start_opens_an_assistant_message() -> None:
    text = "<|channel|>analysis<|message|>a<|end|><|channel|>final<|message|>b<|channel|>analysis<|message|>c"
    assert parse_every_way(text) == Merged("ac", "b", ())


def test_text_between_messages_is_content_and_whitespace_there_is_layout() -> None:
    text = "<|channel|>analysis<|message|>a<|end|>\n\nstray <|message|> text\n" + FINAL + "b<|return|>\n tail"
    assert parse_every_way(text) == Merged("a", "stray <|message|> text\nbtail", ())


def test_a_message_without_a_channel_is_content() -> None:
    assert parse_every_way("<|start|>assistant<|message|>Hi<|end|><|message|>there") == Merged("", "Hithere", ())


def test_a_message_in_another_role_is_not_the_answer() -> None:
    got = parse_every_way("<|start|>user<|message|>And 9 / 2?<|end|>" + FINAL + "4.5<|return|>")
    assert got == Merged("And 9 / 2?", "4.5", ())


def test_a_header_that_never_ends_is_passed_on_as_text() -> None:
    junk = "<|start|>" + "x" * (MAX_HEADER_CHARS + 50) + "<|message|>more"
    got = parse_every_way(junk)
    assert got == Merged("", "x" * (MAX_HEADER_CHARS + 50) + "<|message|>more", ())


# --- the JSON check ---------------------------------------------------------------------------------------


def call(arguments: str, content_type: str | None = "json", index: int = 0) -> HarmonyToolCall:
    return HarmonyToolCall(index, f"call_{index}", "f", "functions.f", "commentary", content_type, arguments, True)


def test_invalid_json_arguments_of_json_typed_calls_are_reported() -> None:
    calls = [
        call('{"ok": true}', index=0),
        call('{"location": "Tokyo"', index=1),
        call('"Tokyo"', index=2),
        call("", index=3),
        call("not json", content_type=None, index=4),
        call("print(1)", content_type="code", index=5),
    ]
    errors = invalid_json_arguments(calls)
    assert [e.index for e in errors] == [1, 2, 3]
    assert "not valid JSON" in errors[0].error and "not an object" in errors[1].error
    assert [e.index for e in invalid_json_arguments(calls, include_untyped=True)] == [1, 2, 3, 4]
    assert errors[0] == ArgumentsError(1, "f", errors[0].error, True)


def test_the_parser_checks_the_arguments_it_streamed() -> None:
    text = (
        '<|channel|>commentary to=functions.a json<|message|>{"x": 1}<|call|>'
        '<|start|>assistant<|channel|>commentary to=functions.b <|constrain|>json<|message|>{"x": 1,}<|call|>'
        "<|start|>assistant<|channel|>commentary to=functions.c<|message|>{oops<|call|>"
    )
    parser = HarmonyParser(call_id=counting_ids())
    parser.feed(text)
    assert [e.name for e in parser.invalid_arguments()] == ["b"]
    assert [e.name for e in parser.invalid_arguments(include_untyped=True)] == ["b", "c"]
    assert parser.finish_reason("length") == "length" and parser.finish_reason("stop") == "tool_calls"
