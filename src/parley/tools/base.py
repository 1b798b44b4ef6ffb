"""The Tool interface, and how one call of a tool is run and reported."""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from parley.logs import current_request_id

log = logging.getLogger("parley.tools")

NO_ARGUMENTS: dict[str, Any] = {"type": "object", "properties": {}}


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """What a model is told of a tool: its name, what it does, and the JSON schema of its arguments."""

    name: str
    description: str
    parameters: dict[str, Any]

    def to_openai(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


class ToolFailed(Exception):
    """A tool could not do what it was asked; the message is for the model and the client to read."""


class Tool(ABC):
    spec: ToolSpec

    @abstractmethod
    async def run(self, arguments: dict[str, Any]) -> str:
        """Do the call; raise ToolFailed with a message the model can act on."""

    async def aclose(self) -> None:  # noqa: B027 - most tools hold nothing
        """Release what the tool holds (connections)."""

    @cached_property
    def _validator(self) -> Draft202012Validator | None:
        try:
            Draft202012Validator.check_schema(self.spec.parameters)
        except SchemaError:  # (an MCP server's schema Parley can't check against: the server checks)
            return None
        return Draft202012Validator(self.spec.parameters)

    def checked_arguments(self, raw: str) -> dict[str, Any]:
        """The call's arguments as the model wrote them, parsed and checked against the schema."""
        try:
            arguments = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError as exc:
            raise ToolFailed(f"the arguments are not valid JSON ({exc}); send a JSON object") from None
        if not isinstance(arguments, dict):
            raise ToolFailed("the arguments must be a JSON object")
        validator = self._validator
        if validator is not None:
            problem = next(iter(validator.iter_errors(arguments)), None)
            if problem is not None:
                where = "/".join(str(part) for part in problem.absolute_path) or "arguments"
                raise ToolFailed(f"invalid arguments: {where}: {problem.message}")
        return arguments


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    output: str  # what the model reads: the result, or the error
    error: str | None  # None when the call succeeded
    duration_ms: float


async def invoke(tool: Tool, raw_arguments: str, time_limit: float) -> ToolOutcome:
    """Run one call within `time_limit` seconds; every failure becomes an outcome the model can read."""
    started = time.perf_counter()
    error: str | None = None
    try:
        arguments = tool.checked_arguments(raw_arguments)
        async with asyncio.timeout(time_limit):
            output = await tool.run(arguments)
    except ToolFailed as exc:
        error = str(exc)
    except TimeoutError:
        error = f"the tool did not answer within {time_limit:g} seconds"
    except Exception:  # a defect in a tool: the model hears that it failed, the log has the details
        log.exception("%s tool %s failed", current_request_id(), tool.spec.name)
        error = f"the tool failed; the server log has the details under request id {current_request_id()}"
    duration_ms = (time.perf_counter() - started) * 1000
    if error is not None:
        return ToolOutcome(f"error: {error}", error, duration_ms)
    return ToolOutcome(output, None, duration_ms)
