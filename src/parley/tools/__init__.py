"""Tools Parley runs itself: built-in ones and those of MCP servers."""

from parley.tools.base import Tool, ToolFailed, ToolOutcome, ToolSpec, invoke
from parley.tools.registry import ToolRegistry

__all__ = ["Tool", "ToolFailed", "ToolOutcome", "ToolRegistry", "ToolSpec", "invoke"]
