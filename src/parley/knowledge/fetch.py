"""Documents by URL: fetched with a size cap and a timeout, from allowed hosts only.

A URL is user input: fetched freely, it would let any caller make the server reach internal
hosts (metadata services, admin ports). So URL ingestion is off unless `knowledge.url_allow_hosts`
lists the host, and each redirect is checked against the list again.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from yarl import URL

from parley.errors import InvalidRequest, PayloadTooLarge, UpstreamError

MAX_REDIRECTS = 3


class URLNotAllowed(InvalidRequest):
    code = "url_not_allowed"


@dataclass(frozen=True, slots=True)
class Fetched:
    content: bytes
    content_type: str | None
    url: str


def allowed(url: str, allow_hosts: list[str]) -> URL:
    try:
        parsed = URL(url)
    except ValueError:
        raise URLNotAllowed("not a URL", param="url") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise URLNotAllowed("only http and https URLs can be ingested", param="url")
    if not allow_hosts:
        raise URLNotAllowed("URL ingestion is off on this server (knowledge.url_allow_hosts is empty)", param="url")
    if parsed.host.lower() not in {host.lower() for host in allow_hosts}:
        raise URLNotAllowed(f"the host {parsed.host!r} is not on this server's allow-list", param="url")
    return parsed


async def fetch(url: str, allow_hosts: list[str], *, max_bytes: int, seconds: float) -> Fetched:
    target = allowed(url, allow_hosts)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=seconds), trust_env=False) as session:
            for _ in range(MAX_REDIRECTS + 1):
                async with session.get(target, allow_redirects=False) as response:
                    if response.status in (301, 302, 303, 307, 308) and "Location" in response.headers:
                        target = allowed(str(target.join(URL(response.headers["Location"]))), allow_hosts)
                        continue
                    if response.status != 200:
                        raise UpstreamError(f"fetching the URL answered HTTP {response.status}", param="url")
                    if (response.content_length or 0) > max_bytes:
                        raise PayloadTooLarge(f"the document is larger than {max_bytes} bytes", param="url")
                    body = bytearray()
                    async for piece in response.content.iter_chunked(65536):
                        body.extend(piece)
                        if len(body) > max_bytes:
                            raise PayloadTooLarge(f"the document is larger than {max_bytes} bytes", param="url")
                    return Fetched(bytes(body), response.headers.get("Content-Type"), str(target))
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise UpstreamError("the URL could not be fetched", param="url", detail=repr(exc)) from None
    raise UpstreamError(f"more than {MAX_REDIRECTS} redirects", param="url")
