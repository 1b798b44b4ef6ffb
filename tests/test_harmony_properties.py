"""Properties of the Harmony parser over arbitrary splits and generated transcripts: however the
text is cut into chunks the events merge to the same result, that result is what the transcript
says, and text is never held back longer than a possible special token."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parley.events import ReasoningDelta, TextDelta, ToolCallDelta
from parley.models.harmony import SPECIAL_TOKENS, HarmonyParser, looks_like_harmony
from tests.test_harmony import EXAMPLES, Merged, feed_pieces, merged, normalize, split_at

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

cuts = st.lists(st.integers(min_value=0, max_value=2000), max_size=40)


@SETTINGS
@given(name=st.sampled_from(sorted(EXAMPLES)), cut_points=cuts)
def test_documented_examples_merge_the_same_for_any_split(name: str, cut_points: list[int]) -> None:
    text = EXAMPLES[name].text
    whole, whole_parser = feed_pieces([text])
    events, parser = feed_pieces(split_at(text, cut_points))
    assert normalize(events) == normalize(whole)
    assert parser.tool_calls == whole_parser.tool_calls


# --- generated transcripts ---------------------------------------------------------------------------

# bodies full of the characters special tokens are made of, and pieces of the tokens themselves
FRAGMENTS = ["<", "|", ">", "<|", "|>", "<|end", "<|start", "nnel|>", "<|call|", "to=", " ", "\n", "json", "{", "}"]
body_text = (
    st.lists(
        st.one_of(
            st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=6),
            st.sampled_from(FRAGMENTS),
        ),
        max_size=12,
    )
    .map("".join)
    .filter(lambda s: not any(token in s for token in SPECIAL_TOKENS))
)
names = st.from_regex(r"[a-z_][a-z0-9_]{0,15}", fullmatch=True)


@dataclass(frozen=True)
class Message:
    kind: str  # analysis | final | preamble | call | builtin
    body: str
    name: str = ""
    recipient_first: bool = False
    content_type: str = ""

    def render(self, first: bool, start_variant: int) -> str:
        if self.kind in ("call", "builtin"):
            recipient = f" to=functions.{self.name}" if self.kind == "call" else " to=browser.search"
            channel = "commentary" if self.kind == "call" else "analysis"
            role, chan = (
                ("assistant" + recipient, channel) if self.recipient_first else ("assistant", channel + recipient)
            )
            header = f"{role}<|channel|>{chan}{self.content_type}"
        else:
            channel = {"analysis": "analysis", "final": "final", "preamble": "commentary"}[self.kind]
            header = f"assistant<|channel|>{channel}"
        if first and start_variant == 1:  # the prompt ended with "<|start|>assistant"
            return header.removeprefix("assistant") + "<|message|>" + self.body
        return "<|start|>" + header + "<|message|>" + self.body


messages = st.builds(
    Message,
    kind=st.sampled_from(["analysis", "final", "preamble", "call", "builtin"]),
    body=body_text,
    name=names,
    recipient_first=st.booleans(),
    content_type=st.sampled_from(["", " json", "<|constrain|>json", " <|constrain|>json", " code"]),
)


@st.composite
def transcripts(draw: st.DrawFn) -> tuple[str, Merged]:
    msgs = draw(st.lists(messages, min_size=1, max_size=6))
    start_variant = draw(st.integers(0, 1))
    parts, reasoning, content, calls = [], [], [], []
    for i, message in enumerate(msgs):
        last = i == len(msgs) - 1
        terminator = draw(st.sampled_from(["<|end|>", "<|call|>", "<|return|>", "" if last else "<|end|>"]))
        layout = draw(st.sampled_from(["", "\n", "\n\n"])) if not last else ""
        parts.append(message.render(i == 0, start_variant) + terminator + layout)
        if message.kind in ("analysis", "builtin"):
            reasoning.append(message.body)
        elif message.kind == "call":
            calls.append((message.name, message.body))
        else:
            content.append(message.body)
    return "".join(parts), Merged("".join(reasoning), "".join(content), tuple(calls))


@SETTINGS
@given(transcript=transcripts(), cut_points=cuts)
def test_generated_transcripts_parse_to_what_they_say_for_any_split(
    transcript: tuple[str, Merged], cut_points: list[int]
) -> None:
    text, expected = transcript
    assert looks_like_harmony(text) is True
    whole, _ = feed_pieces([text])
    events, parser = feed_pieces(split_at(text, cut_points))
    assert merged(events) == expected
    assert normalize(events) == normalize(whole)
    assert parser.has_tool_calls == bool(expected.calls)
    chars, _ = feed_pieces(list(text))
    assert normalize(chars) == normalize(whole)


@SETTINGS
@given(transcript=transcripts(), cut_points=cuts, end=st.integers(min_value=0))
def test_only_a_possible_special_token_is_held_back(
    transcript: tuple[str, Merged], cut_points: list[int], end: int
) -> None:
    """Cut a transcript anywhere: what finish() still has to flush is at most a special token's prefix."""
    text = transcript[0]
    prefix = text[: end % (len(text) + 1)]
    parser = HarmonyParser()
    for piece in split_at(prefix, cut_points):
        parser.feed(piece)
    flushed = parser.finish()
    held = "".join(
        e.text if isinstance(e, TextDelta | ReasoningDelta) else e.arguments
        for e in flushed
        if isinstance(e, TextDelta | ReasoningDelta | ToolCallDelta)
    )
    if looks_like_harmony(prefix) is None:  # too short to tell Harmony from text: it was text
        assert held == prefix and len(prefix.lstrip()) < len("<|constrain|>")
    else:
        assert not held or any(token.startswith(held) and token != held for token in SPECIAL_TOKENS), held


@SETTINGS
@given(text=st.text(), cut_points=cuts)
def test_text_that_does_not_start_like_harmony_comes_out_unchanged(text: str, cut_points: list[int]) -> None:
    if looks_like_harmony(text) is True:
        text = "x" + text
    events, parser = feed_pieces(split_at(text, cut_points))
    assert all(isinstance(e, TextDelta) for e in events)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == text
    assert parser.is_harmony is False
