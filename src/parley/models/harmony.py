"""Harmony (gpt-oss) output parsed at the text level, as it streams.

gpt-oss writes messages like ``<|start|>assistant<|channel|>analysis<|message|>...<|end|>``; the
special tokens arrive literally in the text (``openai-harmony`` needs a vocabulary download, so
it is not used). `HarmonyParser` turns that text into Parley's events:

- the ``analysis`` channel, and messages to built-in tools (``python``, ``browser.*``), become
  `ReasoningDelta`;
- the ``final`` channel, recipient-less ``commentary`` (preambles) and header-less text become
  `TextDelta`;
- a message to ``functions.NAME`` (on any channel; the recipient may sit before or after the
  channel, the content type may be `` json`` or ``<|constrain|>json``) becomes a tool call:
  a first `ToolCallDelta` with a generated ``call_...`` id and the name, then its arguments as
  they stream.

Chunks may split anywhere. Text is emitted as soon as it arrives: only a suffix that could still
become a special token (at most 12 characters) is held back; a message header is buffered until
its ``<|message|>``. Feeding the same text in any pieces gives the same merged result.
A stream that does not start like Harmony passes through untouched as `TextDelta`.

Malformed output degrades to text, never lost: whitespace between messages is layout, other
text there is content; a message written in another role's name (a tool result the model made
up) is reasoning; a "header" over MAX_HEADER_CHARS is content.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field, replace
from typing import Final, Literal, cast

from parley.events import FinishReason, ReasoningDelta, StreamEvent, TextDelta, ToolCallDelta

START: Final = "<|start|>"
END: Final = "<|end|>"
MESSAGE: Final = "<|message|>"
CHANNEL: Final = "<|channel|>"
CONSTRAIN: Final = "<|constrain|>"
RETURN: Final = "<|return|>"
CALL: Final = "<|call|>"
SPECIAL_TOKENS: Final = (START, END, MESSAGE, CHANNEL, CONSTRAIN, RETURN, CALL)

StopToken = Literal["<|end|>", "<|call|>", "<|return|>"]

MAX_HEADER_CHARS: Final = 512
"""A "header" longer than this is not one: its text is passed on as content."""
MAX_LEADING_SPACE: Final = 256
"""Auto-detection gives up (plain text) after this much leading whitespace."""

_TOKENS: Final = frozenset(SPECIAL_TOKENS)
_TERMINATORS: Final = frozenset((END, CALL, RETURN))
_PARTIALS: Final = frozenset(t[:k] for t in SPECIAL_TOKENS for k in range(1, len(t)))
_LONGEST: Final = max(len(t) for t in SPECIAL_TOKENS)
_HEADER_WORD: Final = re.compile(r"<\|(?:channel|constrain)\|>|to=[^\s<]*|[^\s<]+|<")
_BUILTIN_NAMESPACES: Final = frozenset(("python", "browser", "container"))
_NOT_TOOLS: Final = frozenset(("assistant", "user", "system", "developer", "all"))

# parser states
_DETECT: Final = 0  # deciding whether the stream is Harmony at all
_PLAIN: Final = 1  # it is not: pass everything through
_BETWEEN: Final = 2  # outside a message
_HEADER: Final = 3  # between <|start|> (or <|channel|>) and <|message|>
_CONTENT: Final = 4  # inside a message body
# where a message body goes
_TEXT: Final = 0
_REASONING: Final = 1
_TOOL: Final = 2


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def looks_like_harmony(prefix: str) -> bool | None:
    """Whether a stream starting with `prefix` is Harmony; None if more text is needed to tell.

    Harmony starts (after optional whitespace) with a special token, or with ``to=`` when the
    prompt ended inside a header (``<|start|>assistant``). The answer never changes as the
    prefix grows.
    """
    kind = _classify_start(prefix)
    return None if kind is None else kind != "other"


def _classify_start(prefix: str) -> Literal["token", "recipient", "other"] | None:
    rest = prefix.lstrip()
    if len(prefix) - len(rest) > MAX_LEADING_SPACE:
        return "other"
    if not rest:
        return None
    if rest.startswith("<|"):
        if any(rest.startswith(token) for token in SPECIAL_TOKENS):
            return "token"
        return None if rest in _PARTIALS else "other"
    if rest.startswith("to="):
        return "recipient"
    return None if "to=".startswith(rest) or rest == "<" else "other"


@dataclass(frozen=True, slots=True)
class HarmonyToolCall:
    """One tool call as parsed so far (`complete` once its message was terminated)."""

    index: int
    id: str
    name: str
    recipient: str
    channel: str | None
    content_type: str | None
    arguments: str
    complete: bool

    @property
    def is_json(self) -> bool:
        return self.content_type is not None and "json" in self.content_type.lower()

    def json_error(self) -> str | None:
        """Why the arguments are not a JSON object, or None if they are."""
        try:
            value = json.loads(self.arguments)
        except json.JSONDecodeError as exc:
            return f"arguments are not valid JSON: {exc.msg} at character {exc.pos}"
        if not isinstance(value, dict):
            return f"arguments are JSON but not an object: {type(value).__name__}"
        return None


@dataclass(frozen=True, slots=True)
class ArgumentsError:
    index: int
    name: str
    error: str
    complete: bool


def invalid_json_arguments(calls: Iterable[HarmonyToolCall], *, include_untyped: bool = False) -> list[ArgumentsError]:
    """The calls declared as JSON (``json`` / ``<|constrain|>json``) whose arguments aren't a JSON object.

    With `include_untyped`, calls that declared no content type are checked too. A call cut off
    before its ``<|call|>`` has ``complete=False`` in its error.
    """
    errors = []
    for call in calls:
        if call.is_json or (include_untyped and call.content_type is None):
            error = call.json_error()
            if error is not None:
                errors.append(ArgumentsError(call.index, call.name, error, call.complete))
    return errors


@dataclass(slots=True)
class _Call:
    head: HarmonyToolCall  # as announced: no arguments yet
    parts: list[str] = field(default_factory=list)
    complete: bool = False

    def snapshot(self) -> HarmonyToolCall:
        return replace(self.head, arguments="".join(self.parts), complete=self.complete)


@dataclass(frozen=True, slots=True)
class _Header:
    role: str | None
    channel: str | None
    recipient: str | None
    content_type: str | None


def _parse_header(header: str, implicit_role: bool) -> _Header:
    role = channel = recipient = content_type = None
    expect = "" if implicit_role else "role"
    for word in _HEADER_WORD.findall(header):
        if word == CHANNEL:
            expect = "channel"
        elif word == CONSTRAIN:
            expect = "type"
        elif word.startswith("to="):
            recipient = word[3:] or recipient
        elif expect == "role":
            role, expect = word, ""
        elif expect == "channel":
            channel, expect = word, ""
        elif expect == "type" or content_type is None:
            content_type, expect = word, ""
    return _Header(role if not implicit_role else "assistant", channel, recipient, content_type)


class HarmonyParser:
    """Incremental Harmony parser: `feed` text as it arrives, then `finish` once.

    - `auto_detect`: a stream that doesn't start like Harmony passes through as `TextDelta`.
      With ``False`` the text is always parsed as Harmony (stray text becomes content).
    - `prompt_tail`: the end of the prompt the completion continues, e.g. ``"<|start|>assistant"``
      or ``"<|start|>assistant<|channel|>final<|message|>"``; parsed first, silently, and implies
      Harmony.
    - `tool_names`: the request's function names. A recipient without the ``functions.`` prefix
      is a tool call if it is one of them; without the list, any recipient other than a
      built-in tool (``python``, ``browser.*``, ``container.*``) or a role is.
    """

    def __init__(
        self,
        *,
        auto_detect: bool = True,
        prompt_tail: str | None = None,
        tool_names: Collection[str] | None = None,
        call_id: Callable[[], str] = new_call_id,
    ) -> None:
        self._auto_detect = auto_detect
        self._tool_names = frozenset(tool_names) if tool_names is not None else None
        self._call_id = call_id
        self._state: int = _DETECT
        self._is_harmony: bool | None = None
        self._pending = ""  # undecided prefix (_DETECT) or a suffix that may become a special token
        self._header = ""
        self._implicit_role = False
        self._target: int = _TEXT
        self._calls: list[_Call] = []
        self._call: _Call | None = None
        self._stop: StopToken | None = None
        self._finished = False
        self._carry: list[StreamEvent] = []  # a tool call opened by the prompt tail, announced by the first feed
        if prompt_tail is not None:
            self._is_harmony, self._state = True, _BETWEEN
            self._run(prompt_tail, self._carry)
            self._carry = [e for e in self._carry if isinstance(e, ToolCallDelta)]
            self._stop = None

    # --- what the caller reads -------------------------------------------------------------------

    @property
    def is_harmony(self) -> bool | None:
        """None until the start of the stream has decided it."""
        return self._is_harmony

    @property
    def passes_through(self) -> bool:
        """Plain text, nothing held back: text without a `<` would come out exactly as it went in."""
        return self._state == _PLAIN and not self._pending

    @property
    def has_tool_calls(self) -> bool:
        return bool(self._calls)

    @property
    def tool_calls(self) -> tuple[HarmonyToolCall, ...]:
        return tuple(call.snapshot() for call in self._calls)

    @property
    def stop_token(self) -> StopToken | None:
        """The last terminator seen: ``<|return|>``, ``<|call|>`` or ``<|end|>``."""
        return self._stop

    def finish_reason(self, upstream: FinishReason = "stop") -> FinishReason:
        """The reason to report: ``tool_calls`` instead of a plain ``stop`` once a call was made."""
        return "tool_calls" if self._calls and upstream == "stop" else upstream

    def invalid_arguments(self, *, include_untyped: bool = False) -> list[ArgumentsError]:
        return invalid_json_arguments(self.tool_calls, include_untyped=include_untyped)

    # --- feeding ---------------------------------------------------------------------------------

    def feed(self, text: str) -> list[StreamEvent]:
        if self._finished:
            raise RuntimeError("HarmonyParser.feed() after finish()")
        if not text:
            return []
        state = self._state
        if state == _PLAIN:
            if "<" not in text and not self._pending:  # most tokens of a plain reply
                return [TextDelta(text)]
            return self._plain(text)
        out: list[StreamEvent] = []
        if state == _CONTENT and not self._pending and not self._carry and "<" not in text:  # most tokens
            self._emit(text, out)
            return out
        if self._carry:
            out, self._carry = self._carry, []
        if state == _DETECT:
            self._detect(text, out, final=False)
        else:
            self._run(self._pending + text if self._pending else text, out)
        return out

    def finish(self) -> list[StreamEvent]:
        """Flush what is open: held-back text, an unterminated message. Idempotent."""
        if self._finished:
            return []
        out, self._carry = self._carry, []
        if self._state == _DETECT:
            self._detect("", out, final=True)
        pending, self._pending = self._pending, ""
        if pending and self._state == _PLAIN:
            out.append(TextDelta(pending))
        elif pending:
            self._text(pending, out)
        if self._state == _CONTENT:
            self._close(complete=False)
        self._finished = True
        return out

    def _plain(self, text: str) -> list[StreamEvent]:
        """Plain text so far: a reply that switches to Harmony markup midway is parsed from there on
        (small models write a sentence, then remember their format)."""
        buf = self._pending + text
        self._pending = ""
        out: list[StreamEvent] = []
        start = 0
        while (i := buf.find("<|", start)) >= 0:
            if buf.startswith((START, CHANNEL), i):
                if i:
                    out.append(TextDelta(buf[:i]))
                self._is_harmony, self._state = True, _BETWEEN
                self._run(buf[i:], out)
                return out
            if len(buf) - i < _LONGEST and buf[i:] in _PARTIALS:  # may still become a special token
                self._pending, buf = buf[i:], buf[:i]
                break
            start = i + 2
        else:
            if buf.endswith("<"):
                self._pending, buf = "<", buf[:-1]
        if buf:
            out.append(TextDelta(buf))
        return out

    def _detect(self, text: str, out: list[StreamEvent], *, final: bool) -> None:
        buf = self._pending + text
        kind = _classify_start(buf)
        if kind is None:
            if not final:
                self._pending = buf
                return
            kind = "other"
        self._pending = ""
        if kind == "other" and self._auto_detect:
            self._state, self._is_harmony = _PLAIN, False
            if buf:
                out += self._plain(buf)
            return
        self._is_harmony = True
        if kind == "recipient":  # the prompt ended with "<|start|>assistant"
            self._state, self._header, self._implicit_role = _HEADER, "", True
        else:
            self._state = _BETWEEN
        self._run(buf, out)

    def _run(self, buf: str, out: list[StreamEvent]) -> None:
        pos, n = 0, len(buf)
        while pos < n:
            i = buf.find("<|", pos)
            if i < 0:
                end = n - 1 if buf[-1] == "<" else n
                if end > pos:
                    self._text(buf[pos:end], out)
                pos = end
                break
            if i > pos:
                self._text(buf[pos:i], out)
            j = buf.find("|>", i + 2, i + _LONGEST)
            if j >= 0:
                token = buf[i : j + 2]
                if token in _TOKENS:
                    self._token(token, out)
                    pos = j + 2
                    continue
            elif n - i < _LONGEST and buf[i:] in _PARTIALS:
                pos = i  # may still become a special token: hold it back
                break
            self._text("<", out)  # a "<|" that starts no special token is text
            pos = i + 1
        self._pending = buf[pos:]

    def _text(self, text: str, out: list[StreamEvent]) -> None:
        state = self._state
        if state == _CONTENT:
            self._emit(text, out)
        elif state == _HEADER:
            self._header += text
            if len(self._header) > MAX_HEADER_CHARS:
                self._header_was_text(out)
        else:  # between messages: whitespace is layout, anything else is stray content
            text = text.lstrip()
            if text:
                self._state, self._target = _CONTENT, _TEXT
                self._emit(text, out)

    def _emit(self, text: str, out: list[StreamEvent]) -> None:
        target = self._target
        last = out[-1] if out else None
        if target == _TEXT:
            if type(last) is TextDelta:
                out[-1] = TextDelta(last.text + text)
            else:
                out.append(TextDelta(text))
        elif target == _REASONING:
            if type(last) is ReasoningDelta:
                out[-1] = ReasoningDelta(last.text + text)
            else:
                out.append(ReasoningDelta(text))
        else:
            call = cast(_Call, self._call)
            call.parts.append(text)
            index = call.head.index
            if type(last) is ToolCallDelta and last.index == index:
                out[-1] = ToolCallDelta(index, last.id, last.name, last.arguments + text)
            else:
                out.append(ToolCallDelta(index, arguments=text))

    def _token(self, token: str, out: list[StreamEvent]) -> None:
        state = self._state
        if token in _TERMINATORS:
            self._stop = cast(StopToken, token)
            if state == _CONTENT:
                self._close(complete=True)
            self._state, self._header = _BETWEEN, ""
        elif token == START:
            if state == _CONTENT:
                self._close(complete=False)
            self._state, self._header, self._implicit_role = _HEADER, "", False
        elif token == MESSAGE:
            if state == _CONTENT:
                self._emit(token, out)
            else:
                header = self._header if state == _HEADER else ""
                implicit = self._implicit_role if state == _HEADER else True
                self._open(_parse_header(header, implicit), out)
        elif state == _HEADER:  # <|channel|> or <|constrain|> inside a header
            self._header += token
            if len(self._header) > MAX_HEADER_CHARS:
                self._header_was_text(out)
        elif state == _CONTENT and token == CONSTRAIN:
            self._emit(token, out)
        else:  # a header without <|start|>: the role is the assistant's
            if state == _CONTENT:
                self._close(complete=False)
            self._state, self._header, self._implicit_role = _HEADER, token, True

    def _header_was_text(self, out: list[StreamEvent]) -> None:
        header, self._header = self._header, ""
        self._state, self._target = _CONTENT, _TEXT
        self._emit(header, out)

    def _open(self, header: _Header, out: list[StreamEvent]) -> None:
        self._state, self._header = _CONTENT, ""
        name = self._function_name(header.recipient) if header.recipient else None
        if header.role not in (None, "assistant"):
            self._target = _REASONING  # a message the model wrote in another role's name
        elif name is not None:
            recipient, index = cast(str, header.recipient), len(self._calls)
            head = HarmonyToolCall(
                index, self._call_id(), name, recipient, header.channel, header.content_type, "", False
            )
            self._call, self._target = _Call(head), _TOOL
            self._calls.append(self._call)
            out.append(ToolCallDelta(index, head.id, name))
        elif header.recipient or header.channel == "analysis":
            self._target = _REASONING  # chain of thought, or a call to a built-in tool
        else:
            self._target = _TEXT

    def _function_name(self, recipient: str) -> str | None:
        if recipient.startswith("functions."):
            return recipient[len("functions.") :] or None
        if self._tool_names is not None:
            return recipient if recipient in self._tool_names else None
        if recipient.split(".", 1)[0] in _BUILTIN_NAMESPACES or recipient in _NOT_TOOLS:
            return None
        return recipient

    def _close(self, *, complete: bool) -> None:
        if self._call is not None:
            self._call.complete = complete
            self._call = None
        self._state = _BETWEEN


@dataclass(frozen=True, slots=True)
class ParsedHarmony:
    is_harmony: bool
    reasoning: str
    content: str
    tool_calls: tuple[HarmonyToolCall, ...]
    stop_token: StopToken | None


def parse_harmony(
    text: str,
    *,
    auto_detect: bool = True,
    prompt_tail: str | None = None,
    tool_names: Collection[str] | None = None,
) -> ParsedHarmony:
    """Parse a whole completion (the non-streaming path): same rules as `HarmonyParser`."""
    parser = HarmonyParser(auto_detect=auto_detect, prompt_tail=prompt_tail, tool_names=tool_names)
    events = parser.feed(text) + parser.finish()
    reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    content = "".join(e.text for e in events if isinstance(e, TextDelta))
    return ParsedHarmony(bool(parser.is_harmony), reasoning, content, parser.tool_calls, parser.stop_token)
