"""``arpc --notify URL``: POST approvals and finished sessions to webhooks, without ever waiting on them.

Each URL gets a :class:`Webhook`: a bounded queue, one request in flight, retries with exponential
backoff, and one log line per outage (when it starts failing and when it is back), not per event.
A generic receiver gets JSON ``{"event": "approval"|"approval_resolved"|"session_finished",
"sessionId": ..., ...}``; an ntfy topic URL (host ``ntfy.sh`` or ``ntfy.*``, or any URL written
``ntfy:https://host/topic``) gets ntfy's headers: ``Title``, ``Priority``, ``Tags`` and ``Click``.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from io import BytesIO
from typing import Any
from urllib.parse import urlsplit

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers

from arp.twisted_private import quiet_connection_pool

QUEUE = 200  # events kept per webhook while it is down; the oldest are dropped beyond
ATTEMPTS = 6  # tries per event
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 60.0
REQUEST_TIMEOUT = 10.0
MAX_SUMMARY = 4000


def check_url(url: str) -> str:
    """Validate a ``--notify`` URL: http(s) with a host, optionally prefixed ``ntfy:``."""
    target = url[5:] if url.startswith("ntfy:") else url
    parts = urlsplit(target)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL (ntfy:https://host/topic for ntfy)")
    return url


def is_ntfy(url: str) -> bool:
    """Whether ``url`` names an ntfy topic."""
    host = (urlsplit(url[5:] if url.startswith("ntfy:") else url).hostname or "").lower()
    return url.startswith("ntfy:") or host == "ntfy.sh" or host.startswith("ntfy.")


def _clip(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_SUMMARY:
        return value[:MAX_SUMMARY] + "…"
    if isinstance(value, dict):
        return {k: _clip(v) for k, v in value.items()}
    return value


def payload(event: str, session: Any, approval: dict | None, link: str | None) -> dict[str, Any]:
    """The generic JSON body of one event."""
    record = session.record
    body: dict[str, Any] = {
        "event": event,
        "sessionId": session.id,
        "agent": record.get("executor"),
        "projectPath": record.get("projectPath"),
        "sessionStatus": record.get("status"),
        "url": link,
    }
    if approval is not None:
        body["approval"] = {
            k: _clip(approval.get(k))
            for k in ("id", "kind", "tool", "summary", "status", "createdAt", "deadline", "answeredBy")
        }
        if approval.get("questions"):
            body["approval"]["questions"] = approval["questions"]
    else:
        body["error"] = record.get("error")
    return body


def ntfy_message(body: dict[str, Any]) -> tuple[dict[str, str], str]:
    """ntfy headers and message text for a generic body."""
    event = body["event"]
    agent = body.get("agent") or "agent"
    approval = body.get("approval") or {}
    summary = approval.get("summary") or {}
    detail = (
        summary.get("command") or summary.get("path") or summary.get("title") or approval.get("tool") or ""
    )
    if event == "approval":
        verb = "asks" if approval.get("kind") == "question" else "needs approval"
        title, priority, tags = f"{agent} {verb}: {approval.get('tool')}", "high", "question"
        message = str(detail) or "open the session to answer"
    elif event == "approval_resolved":
        title, priority, tags = (
            f"{agent}: {approval.get('tool')} {approval.get('status')}",
            "low",
            "white_check_mark",
        )
        message = str(detail) or str(approval.get("status"))
    else:
        status = body.get("sessionStatus")
        title = f"{agent} session {status}"
        priority, tags = ("default", "tada") if status == "completed" else ("high", "warning")
        message = body.get("error") or f"{body.get('projectPath')}: {status}"
    headers = {"Title": title[:200], "Priority": priority, "Tags": tags}
    if body.get("url"):
        headers["Click"] = body["url"]
    return headers, message[:MAX_SUMMARY]


def quiet_agent(reactor: Any) -> Agent:
    """An HTTP client that does not log every connection."""
    pool = quiet_connection_pool(reactor, persistent=False)
    return Agent(reactor, connectTimeout=REQUEST_TIMEOUT, pool=pool)


class Webhook:
    """One ``--notify`` URL: queued events, sent one at a time, retried with backoff."""

    log = Logger()

    def __init__(self, reactor: Any, url: str, agent: Any = None) -> None:
        self.reactor = reactor
        self.url = url
        self.target = url[5:] if url.startswith("ntfy:") else url
        self.ntfy = is_ntfy(url)
        self.agent = agent or quiet_agent(reactor)
        self.queue: deque[tuple[dict[str, Any], int]] = deque()
        self.busy = False
        self.failing = False
        self.delivered = 0
        self.dropped = 0
        self._retry: Any = None
        self._backoff = FIRST_BACKOFF
        self.stopped = False

    def send(self, body: dict[str, Any]) -> None:
        """Queue ``body`` (returns at once)."""
        if self.stopped:
            return
        if len(self.queue) >= QUEUE:
            self.queue.popleft()
            self.dropped += 1
        self.queue.append((body, 0))
        self._next()

    def _next(self) -> None:
        if self.busy or not self.queue or self.stopped or (self._retry is not None and self._retry.active()):
            return
        self.busy = True
        body, tries = self.queue[0]
        d = self._post(body)
        d.addTimeout(REQUEST_TIMEOUT, self.reactor)
        d.addCallbacks(self._sent, self._failed, errbackArgs=(tries,))

    def _post(self, body: dict[str, Any]) -> Deferred:
        if self.ntfy:
            headers, message = ntfy_message(body)
            data = message.encode()
            raw = {k.encode(): [v.encode("utf-8", "replace")] for k, v in headers.items()}
            raw[b"content-type"] = [b"text/plain; charset=utf-8"]
        else:
            data = json.dumps(body, separators=(",", ":"), default=str).encode()
            raw = {b"content-type": [b"application/json"]}
        raw[b"user-agent"] = [b"arpc-notify"]
        d = self.agent.request(b"POST", self.target.encode(), Headers(raw), FileBodyProducer(BytesIO(data)))

        def check(response: Any) -> Deferred:
            done = readBody(response)
            if not 200 <= response.code < 300:
                done.addCallback(lambda _: (_ for _ in ()).throw(OSError(f"HTTP {response.code}")))
            return done

        return d.addCallback(check)

    def _sent(self, _: object) -> None:
        self.busy = False
        self.queue.popleft()
        self.delivered += 1
        self._backoff = FIRST_BACKOFF
        if self.failing:
            self.failing = False
            self.log.info("webhook {url} works again", url=self.target)
        self._next()

    def _failed(self, failure: Any, tries: int) -> None:
        self.busy = False
        if not self.failing:
            self.failing = True
            self.log.warn(
                "webhook {url} failed ({error}); retrying with backoff (logged once until it works again)",
                url=self.target,
                error=failure.getErrorMessage(),
            )
        if self.queue:
            body, _ = self.queue[0]
            if tries + 1 >= ATTEMPTS:
                self.queue.popleft()
                self.dropped += 1
            else:
                self.queue[0] = (body, tries + 1)
        self._retry = self.reactor.callLater(self._backoff, self._next)
        self._backoff = min(MAX_BACKOFF, self._backoff * 2)

    def stop(self) -> None:
        """Stop sending (pending retries are dropped)."""
        self.stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()


class Notifier(Service):
    """Listens to the session manager and feeds every webhook."""

    def __init__(
        self, reactor: Any, urls: list[str], manager: Any, link: Callable[[str], str | None] | None = None
    ) -> None:
        self.hooks = [Webhook(reactor, url) for url in urls]
        self.manager = manager
        self.link = link or (lambda session_id: None)
        if self.hooks:
            manager.listeners.append(self.event)

    def event(self, event: str, session: Any, approval: dict | None) -> None:
        """One manager event: queue it on every webhook."""
        body = payload(event, session, approval, self.link(session.id))
        for hook in self.hooks:
            hook.send(body)

    def stopService(self) -> None:
        """Stop every webhook's retries."""
        super().stopService()
        for hook in self.hooks:
            hook.stop()
