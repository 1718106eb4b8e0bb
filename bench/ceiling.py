"""The ceiling for the peer section: starlette + uvicorn answering every POST with fixed bytes.

No parsing, no engine, no cache: what one Python process on this machine can serve at all,
measured in the same rounds as the servers, so that citygate's cached figures can be read
against it when a busy machine moves every absolute number. It runs under the same uvicorn
options as ``citygate serve`` (``gateway.http.SERVER_OPTIONS``), one-write protocol included:

    CITYGATE_BENCH_BODY=answer.json python -m uvicorn bench.ceiling:app --no-access-log \
        --no-proxy-headers --no-server-header --http gateway.http.wire:OneWriteProtocol
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

_BODY_FILE = os.environ.get("CITYGATE_BENCH_BODY")
BODY = Path(_BODY_FILE).read_bytes() if _BODY_FILE else b'{"data":null}'


async def graphql(request: Request) -> Response:
    await request.body()  # read the request, as any server must
    return Response(BODY, media_type="application/json")


async def healthz(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


app = Starlette(routes=[Route("/graphql", graphql, methods=["POST"]), Route("/healthz", healthz, methods=["GET"])])
