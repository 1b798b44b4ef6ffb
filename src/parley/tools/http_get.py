"""`http_get`: fetch a page from a host the configuration allows, with the answer capped in size."""

from __future__ import annotations

from typing import Any

import httpx

from parley.tools.base import Tool, ToolFailed, ToolSpec

MAX_REDIRECTS = 3


class HttpGet(Tool):
    def __init__(self, allow_hosts: list[str], max_bytes: int, timeout: float = 10.0) -> None:
        self._allow = {host.lower() for host in allow_hosts}
        self._max_bytes = max_bytes
        # Redirects are followed here, each checked against the allow-list, never by httpx.
        self._client = httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False)
        self.spec = ToolSpec(
            name="http_get",
            description=(
                f"Fetch a URL with HTTP GET and read the start of its body (at most {max_bytes} bytes). "
                f"Allowed hosts: {', '.join(sorted(self._allow))}."
            ),
            parameters={
                "type": "object",
                "properties": {"url": {"type": "string", "description": "an http or https URL"}},
                "required": ["url"],
            },
        )

    async def run(self, arguments: dict[str, Any]) -> str:
        url = self._allowed(str(arguments["url"]))
        try:
            for _ in range(MAX_REDIRECTS + 1):
                async with self._client.stream("GET", url) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = self._allowed(str(response.url.join(response.headers["location"])))
                        continue
                    body, cut = await self._read_capped(response)
                    text = body.decode(response.encoding or "utf-8", "replace")
                    note = f"\n[cut at {self._max_bytes} bytes]" if cut else ""
                    return f"HTTP {response.status_code} {response.headers.get('content-type', '')}\n\n{text}{note}"
        except httpx.HTTPError as exc:
            raise ToolFailed(f"the fetch failed: {type(exc).__name__}") from None
        raise ToolFailed(f"more than {MAX_REDIRECTS} redirects")

    def _allowed(self, url: str) -> httpx.URL:
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL:
            raise ToolFailed(f"not a URL: {url!r}") from None
        if parsed.scheme not in ("http", "https"):
            raise ToolFailed("only http and https URLs can be fetched")
        if parsed.host.lower() not in self._allow:
            raise ToolFailed(f"the host {parsed.host!r} is not on this server's allow-list")
        return parsed

    async def _read_capped(self, response: httpx.Response) -> tuple[bytes, bool]:
        parts: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            parts.append(chunk)
            size += len(chunk)
            if size >= self._max_bytes:
                return b"".join(parts)[: self._max_bytes], True
        return b"".join(parts), False

    async def aclose(self) -> None:
        await self._client.aclose()
