"""The chat page's files, read once from the package, and the responses that serve them.

Assets are served under `/assets/<version>/`, where the version is a hash of every asset: a
browser may keep them for a year, and a new release changes every asset URL at once. The
page itself (`/`) is never cached, so it always names the current version. Its
Content-Security-Policy allows scripts, styles and connections to this origin only: no inline
script, nothing from another host (model output that slips an element past the sanitiser
still can't load or run anything).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

from starlette.requests import Request
from starlette.responses import Response

ASSETS_PREFIX = "/assets/"
_VERSION_CHARS = 12
_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
_COMMON_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
_PAGE_HEADERS = {
    **_COMMON_HEADERS,
    "Cache-Control": "no-cache",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "Vary": "Accept",
}
_ASSET_HEADERS = {**_COMMON_HEADERS, "Cache-Control": "public, max-age=31536000, immutable"}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str


class ChatPage:
    """The page's HTML and its assets, by name (`app.js`, `vendor/marked.esm.js`)."""

    def __init__(self, html: str, assets: dict[str, Asset]) -> None:
        digest = hashlib.sha256()
        for name in sorted(assets):
            digest.update(name.encode() + b"\0" + assets[name].body)
        self.version = digest.hexdigest()[:_VERSION_CHARS]
        self._assets = assets
        self._html = html.replace("{{assets}}", f"{ASSETS_PREFIX}{self.version}").encode()

    @classmethod
    def from_package(cls) -> ChatPage:
        root = resources.files("parley.web")
        html = (root / "index.html").read_text(encoding="utf-8")
        return cls(html, dict(_assets_under(root / "assets", "")))

    @staticmethod
    def wanted_by(request: Request) -> bool:
        """A browser's navigation (its Accept names HTML), not a JSON client of the same path."""
        return "text/html" in request.headers.get("accept", "")

    def page(self) -> Response:
        return Response(self._html, media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS)

    def asset(self, version: str, name: str) -> Response | None:
        """The asset, or None when there is no such asset in this version (an old page's URL)."""
        asset = self._assets.get(name)
        if asset is None or version != self.version:
            return None
        return Response(asset.body, media_type=asset.media_type, headers=_ASSET_HEADERS)


def _assets_under(folder: Traversable, prefix: str) -> list[tuple[str, Asset]]:
    found: list[tuple[str, Asset]] = []
    for entry in folder.iterdir():
        name = prefix + entry.name
        if entry.is_dir():
            found += _assets_under(entry, name + "/")
            continue
        suffix = "." + entry.name.rpartition(".")[2]
        media_type = _TYPES.get(suffix)
        if media_type is not None:  # licences and version notes stay in the package, unserved
            found.append((name, Asset(entry.read_bytes(), media_type)))
    return found
