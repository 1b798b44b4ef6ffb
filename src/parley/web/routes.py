"""`/assets/<version>/<name>`: the chat page's scripts and styles (the page itself answers at `/`,
in `parley.api.compat.streamforge`, whose JSON clients share that path)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from starlette.responses import Response

from parley.api.deps import ChatPageDep
from parley.errors import NotFound

router = APIRouter(include_in_schema=False)


@router.get("/assets/{version}/{name:path}")
async def asset(
    version: Annotated[str, Path(max_length=64)], name: Annotated[str, Path(max_length=200)], page: ChatPageDep
) -> Response:
    response = page.asset(version, name)
    if response is None:
        raise NotFound("no such asset: the page may be from an older version of Parley; reload it")
    return response
