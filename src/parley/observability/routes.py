"""The route template a request matched: a bounded label and log field, never the raw path."""

from __future__ import annotations

from starlette.types import Scope

from parley.observability.metrics import UNMATCHED_ROUTE

# Served by a middleware ahead of the router (parley.api.openai), so no route is left in its scope.
CHAT_COMPLETIONS_PATH = "/v1/chat/completions"


def route_of(scope: Scope) -> str:
    """`/api/conversations/{conversation_id}` for a conversation's page; UNMATCHED_ROUTE for a
    path no route serves (however many such paths clients try)."""
    route = scope.get("route")  # left in the scope by Starlette's router
    if route is not None:
        path: str = getattr(route, "path", UNMATCHED_ROUTE)
        return path
    path = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return CHAT_COMPLETIONS_PATH if path == CHAT_COMPLETIONS_PATH else UNMATCHED_ROUTE
