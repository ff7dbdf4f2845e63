"""Unauthenticated log amplification on the control port (issue #21.10).

A 10-byte box that is no AMP command used to make arps log a 1.6 KB traceback per connection
(2,000 connections wrote 3.2 MB in 3 s).  Whatever an unregistered connection sends, arps logs
it at most once a minute per address, in one line, without a traceback.
"""

from __future__ import annotations

import socket

from twisted.internet import threads
from twisted.trial import unittest

from tests.helpers import start_arps, wait_until

NOT_A_COMMAND = b"\x00\x01a\x00\x01b\x00\x00"  # a box with one key and no _command
ANSWER_TO_NOTHING = b"\x00\x07_answer\x00\x0299\x00\x00"


def _send_each(port: int, payloads: list[bytes], rounds: int) -> int:
    """Open a connection per payload and round, send it, wait for the relay to close it."""
    closed = 0
    for _ in range(rounds):
        for payload in payloads:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(payload)
                try:
                    if s.recv(100) == b"":
                        closed += 1
                except ConnectionResetError:
                    closed += 1
    return closed


class ControlNoiseTests(unittest.TestCase):
    timeout = 90

    async def test_bad_boxes_are_logged_once_without_traceback(self):
        """200 connections with a box that is no command and 200 with an answer to nothing: each
        is closed at once; the log says so in one line (per kind of noise and address), no
        traceback, a few hundred bytes in all."""
        relay = await start_arps(self)
        before = len(relay.proc.output)
        closed = await threads.deferToThread(
            _send_each, relay.ports["control"], [NOT_A_COMMAND, ANSWER_TO_NOTHING], 200
        )
        self.assertEqual(closed, 400)
        await wait_until(lambda: "not an ARP control message" in relay.proc.output, timeout=10)
        written = relay.proc.output[before:]
        self.assertNotIn("Traceback", written)
        self.assertEqual(written.count("not an ARP control message"), 1, written[-3000:])
        self.assertLess(len(written), 2000, written[-3000:])
