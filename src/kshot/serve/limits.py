"""Limits on the requests in progress and on each one's body size and time, as one ASGI
middleware.

Requests beyond ``max_in_flight`` at once are answered 503 with ``Retry-After`` at once. A body
over the limit is refused with 413 as soon as its ``Content-Length`` says so, or as soon
as more bytes than the limit have arrived; a request (a slow upload included) that has not been
answered within the time limit is cut off with 408 while its body is still arriving, else 503.
Written by hand: neither uvicorn nor Starlette limits a body's size or a request's duration, and
uvicorn's own concurrency limit answers in plain text.
"""

from __future__ import annotations

import asyncio

from kshot.serve.errors import error_response


class BodyTooLarge(Exception):
    pass


class RequestLimits:
    def __init__(self, app, max_bytes: int, seconds: float, max_in_flight: int):
        self.app = app
        self.max_bytes = max_bytes
        self.seconds = seconds
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.in_flight >= self.max_in_flight:
            message = f"the server is answering {self.in_flight} requests already; try again"
            response = error_response(503, "busy", message, {"Retry-After": "1"})
            return await response(scope, receive, send)
        self.in_flight += 1
        try:
            await self._limited(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _limited(self, scope, receive, send):
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(scope, receive, send)
        state = {"received": 0, "body_done": False, "started": False}

        async def counting_receive():
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_bytes:
                    raise BodyTooLarge
                state["body_done"] = not message.get("more_body", False)
            return message

        async def tracking_send(message):
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, counting_receive, tracking_send), self.seconds)
        except BodyTooLarge:
            if not state["started"]:
                await self._too_large(scope, receive, send)
        except asyncio.TimeoutError:
            if state["started"]:
                return
            if state["body_done"]:
                status, code, what = 503, "timeout", "was not answered"
            else:
                status, code, what = 408, "request_timeout", "did not finish sending its body"
            message = f"the request {what} within the limit of {self.seconds:g} s"
            await error_response(status, code, message)(scope, receive, send)

    async def _too_large(self, scope, receive, send):
        message = f"the request body is over the limit of {self.max_bytes:,} bytes"
        response = error_response(413, "request_too_large", message, {"Connection": "close"})
        await response(scope, receive, send)


def raise_open_file_limit(wanted: int) -> int:
    """Raise this process's soft limit on open files towards ``wanted`` (never past the hard
    limit); returns the limit now in force. Each connection holds a file descriptor, and many
    systems start processes with a soft limit of 1,024: a burst of 1,000 connections would fail
    to be accepted rather than be answered or refused."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft
