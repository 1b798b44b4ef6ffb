"""The chat page at `/`: static assets inside the package, served by Parley itself."""

from parley.web.page import ChatPage

__all__ = ["ChatPage"]
