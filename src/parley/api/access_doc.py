"""The OpenAPI document's account of access: who may call what, and the errors that follow.

Every operation but `/health`, `/ready` and the docs documents a 401 (a server that requires keys
answers it without a valid key); the admin API its 403, 404 and 409. On a server that requires
keys, the document also names the two ways to send one (security schemes), so Swagger UI's
"Authorize" button works.
"""

from __future__ import annotations

from typing import Any

from parley.access.edge import PUBLIC_PATHS

Schema = dict[str, Any]
ADMIN_PREFIX = "/api/admin/"
SECURITY_SCHEMES: Schema = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer pk-...`"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
}
_UNAUTHORIZED = (
    "No API key, or one that is unknown, revoked or expired (`missing_api_key`, `invalid_api_key`), on a "
    "server that requires keys; with `WWW-Authenticate: Bearer`."
)


def access_errors(path: str, operation: Schema, reasons: dict[int, list[str]], chat: bool) -> None:
    """Add the access reasons for each status to `reasons` (status: why)."""
    if path in PUBLIC_PATHS:
        return
    reasons[401] = [_UNAUTHORIZED]
    unavailable = reasons.setdefault(503, [])
    if not any("store_unavailable" in why for why in unavailable):
        unavailable.append("A key not checked lately could not be, the store being unreachable (`store_unavailable`).")
    if chat:
        reasons[403].append("A model or agent the key may not use (`model_not_allowed`, `agent_not_allowed`).")
    if path.startswith(ADMIN_PREFIX):
        reasons[403].append("Not the admin key (`admin_key_required`).")
        if "{" in path:
            reasons[404] = ["No API key with that id or name (`key_not_found`)."]
        if "requestBody" in operation:
            reasons[409] = ["Another key has that name (`key_name_taken`); revoked keys keep theirs."]


def add_security(schema: Schema) -> None:
    """Name how keys are sent (on a server that requires them)."""
    schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
    for path, methods in schema.get("paths", {}).items():
        if path in PUBLIC_PATHS:
            continue
        for operation in methods.values():
            operation["security"] = [{"bearer": []}, {"apiKey": []}]
