"""The fake server's injected faults: error statuses, dropped connections, hangs, and
bodies that trickle in."""

from __future__ import annotations

import asyncio
import itertools

from aiohttp import web

from .answers import error_body
from .directives import Directive

__all__ = ["JSON", "error_response", "fault_response", "slow_response"]

JSON = "application/json"

_FAULT_IDS = itertools.count(1)


def error_response(status: int, message: str) -> web.Response:
    return web.Response(status=status, body=error_body(status, message), content_type=JSON)


async def fault_response(
    request: web.BaseRequest, fault: Directive, echo_auth: bool
) -> web.Response | None:
    """Answer as the fault says: an error status, a dropped connection, or never."""
    if fault.kind == "drop":
        if request.transport is not None:
            request.transport.close()
        return None
    if fault.kind == "hang":
        await asyncio.Event().wait()  # cancelled when the client disconnects
    status = int(fault.value)
    # Like the real API, errors carry a request id too.
    headers: dict[str, str] = {"x-request-id": f"req_fault_{next(_FAULT_IDS)}"}
    for header, value in (
        ("retry-after", fault.retry_after),
        ("retry-after-ms", fault.retry_after_ms),
        ("x-should-retry", fault.should_retry),
    ):
        if value is not None:
            headers[header] = value
    message = f"Injected fault: HTTP {status}"
    authorization = request.headers.get("authorization")
    if authorization is not None and echo_auth:  # as some proxies do
        message += f" (you sent: {authorization})"
    body = error_body(status, message, fault.code)
    return web.Response(status=status, body=body, content_type=JSON, headers=headers)


async def slow_response(
    request: web.BaseRequest, data: bytes, headers: dict[str, str], seconds: float
) -> web.StreamResponse:
    """The body in pieces over `seconds`: 20 pieces, or one byte at a time when shorter."""
    response = web.StreamResponse(headers=headers)
    response.content_type = JSON
    response.content_length = len(data)
    await response.prepare(request)  # status and headers go out now
    chunks = max(1, min(20, len(data)))
    step = -(-len(data) // chunks)
    pause = seconds / chunks
    for start in range(0, len(data), step):
        await asyncio.sleep(pause)
        await response.write(data[start : start + step])
    await response.write_eof()
    return response
