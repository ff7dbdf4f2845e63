"""A device whose token is revoked while it waits on ``GET /api/approvals?wait=``.

Revoking a token closes its WebSocket streams at once (4001), but a long poll already past the
access check used to answer when it woke (a change, or the wait running out, up to 55 s later)
with the full approval listing -- the commands and diffs the agent asks to run -- to the device
that had just been revoked.  Now the answer is a 401 naming why.
"""

from __future__ import annotations

import json

from twisted.internet import defer, reactor
from twisted.trial import unittest

from tests.test_attack_cookie_riding import Site


class RevokedLongPollTests(unittest.TestCase):
    """The long poll re-checks the token when it answers."""

    timeout = 30

    async def poll_then(self, end: str) -> tuple[int, dict]:
        """Start a view device's long poll, end its token (``revoke`` or ``expire``), await it."""
        site = Site(self, [])
        grant, token = site.store.create({"name": "lost phone", "scopes": ["view"], "expiresIn": 60})
        url = f"http://{site.host}/api/approvals?wait=1&version=0"
        waiting = defer.ensureDeferred(site.http.request("GET", url, {"Authorization": f"Bearer {token}"}))
        for _ in range(1000):  # until the poll has passed the access check and waits
            if grant.last_used:
                break
            await _tick()
        else:
            self.fail("the long poll never reached arpc")
        if end == "revoke":
            site.store.revoke(grant.id)
        else:
            site.store.clock.advance(61)
        response, payload = await waiting
        return response.code, json.loads(payload)

    async def test_revoked_during_the_wait(self):
        """Revoked while waiting: 401 ``revoked``, no listing."""
        code, body = await self.poll_then("revoke")
        self.assertEqual((code, body.get("reason")), (401, "revoked"), body)
        self.assertNotIn("approvals", body)

    async def test_expired_during_the_wait(self):
        """Expired while waiting: 401 ``expired``, no listing."""
        code, body = await self.poll_then("expire")
        self.assertEqual((code, body.get("reason")), (401, "expired"), body)
        self.assertNotIn("approvals", body)


async def _tick() -> None:
    """Let the reactor run for a moment."""
    d: defer.Deferred = defer.Deferred()
    reactor.callLater(0.01, d.callback, None)
    await d
