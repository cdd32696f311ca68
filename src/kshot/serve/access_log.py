"""Each request: an id (``X-Request-ID``), a JSON line in the access log, and its metrics."""

from __future__ import annotations

import json
import logging
import time
import uuid

from kshot.serve.metrics import Metrics

log = logging.getLogger("kshot.access")


class AccessLog:
    """ASGI middleware, outermost, so that it also sees the limits' refusals."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = {"code": 500}

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = scope.get("route")
            # The route's template, not the path: one series per endpoint, not per label.
            name = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.requests.labels(name, method, str(status["code"])).inc()
            self.metrics.latency.labels(name, method).observe(seconds)
            client = scope.get("client")
            entry = {
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "request_id": request_id,
                "client": client[0] if client else None,
                "method": method,
                "path": scope["path"],
                "route": name,
                "status": status["code"],
                "ms": round(seconds * 1000, 2),
            }
            log.info(json.dumps(entry, ensure_ascii=False))
