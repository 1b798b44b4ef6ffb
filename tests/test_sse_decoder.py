"""The upstream SSE decoder: the same payloads however the bytes are split, in every framing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from parley.models.sse_decoder import MAX_EVENT_BYTES, SSEDecodeError, SSEDecoder

# Data values never hold a newline (one would end the line); anything else goes, spaces and colons too.
VALUES = st.text(alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"]), max_size=40)
EVENTS = st.lists(
    st.tuples(
        st.lists(VALUES, min_size=1, max_size=3),  # its data lines
        st.booleans(),  # an `event:` and `id:` line before them
        st.booleans(),  # a comment line after them
        st.booleans(),  # "data:value" rather than "data: value"
    ),
    max_size=12,
)


def encode(events: list[tuple[list[str], bool, bool, bool]], newline: str) -> bytes:
    lines: list[str] = []
    for data, fields, comment, tight in events:
        if fields:
            lines += ["event: chunk", "id: 7"]
        lines += [("data:" if tight else "data: ") + value for value in data]
        if comment:
            lines.append(": keep-alive")
        lines.append("")
    return "".join(line + newline for line in lines).encode()


def decode(body: bytes, cuts: list[int]) -> list[bytes]:
    decoder = SSEDecoder()
    payloads: list[bytes] = []
    start = 0
    for cut in sorted(cut % (len(body) + 1) for cut in cuts):
        payloads += decoder.feed(body[start:cut])
        start = cut
    payloads += decoder.feed(body[start:])
    return payloads + decoder.finish()


@given(events=EVENTS, newline=st.sampled_from(["\n", "\r\n"]), cuts=st.lists(st.integers(min_value=0), max_size=8))
def test_payloads_do_not_depend_on_where_reads_split_the_stream(
    events: list[tuple[list[str], bool, bool, bool]], newline: str, cuts: list[int]
) -> None:
    expected = [
        "\n".join(value if not tight else value.removeprefix(" ") for value in data).encode()
        for data, _, _, tight in events
    ]
    assert decode(encode(events, newline), cuts) == expected


def test_the_usual_framing_and_an_unterminated_last_event() -> None:
    body = b'data: {"a":1}\n\ndata: {"b":2}\n\n: ping\n\ndata: [DONE]'
    decoder = SSEDecoder()
    assert decoder.feed(body) == [b'{"a":1}', b'{"b":2}']
    assert decoder.finish() == [b"[DONE]"]


def test_an_endless_line_is_refused() -> None:
    decoder = SSEDecoder()
    with pytest.raises(SSEDecodeError, match="16 MiB"):
        decoder.feed(b"data: " + b"x" * MAX_EVENT_BYTES)
