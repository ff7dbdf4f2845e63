"""The exchange's state machine (arp/server/exchange.py): every transition the public front makes
is one the table lists.

The public front's own tests are run again here with a protocol that checks each assignment of
its request and response state against ``REQUEST_TRANSITIONS`` / ``RESPONSE_TRANSITIONS``.
"""

from __future__ import annotations

import io

from twisted.trial import unittest

from arp.server import exchange, public
from tests import (
    test_public_framing,
    test_public_pipelining,
    test_public_retries,
    test_public_routing,
    test_splice,
)
from tests import test_public_unit as unit


class IllegalTransition(AssertionError):
    """The protocol moved between two states the table does not connect."""


class CheckedProtocol(public.PublicHTTPProtocol):
    """PublicHTTPProtocol that refuses (raises on) any transition not in the exchange's tables."""

    taken: set | None = None

    def __setattr__(self, name: str, value: object) -> None:
        if name in ("_req", "_resp"):
            table = exchange.REQUEST_TRANSITIONS if name == "_req" else exchange.RESPONSE_TRANSITIONS
            if value not in table:
                raise IllegalTransition(f"{name} set to {value!r}, not a state")
            old = self.__dict__.get(name)
            if old is not None:
                if value not in table[old]:
                    raise IllegalTransition(f"{name}: {old!r} -> {value!r} is not in the table")
                if CheckedProtocol.taken is not None:
                    CheckedProtocol.taken.add((name, old, value))
        object.__setattr__(self, name, value)


class Checked:
    """Mixin: run a test class with :class:`CheckedProtocol` building the public connections."""

    def setUp(self):
        original = public.PublicHTTPProtocol
        public.PublicHTTPProtocol = CheckedProtocol
        self.addCleanup(setattr, public, "PublicHTTPProtocol", original)
        super().setUp()


class TableTests(unittest.TestCase):
    """The tables themselves are closed and the checker catches a transition they do not list."""

    def test_every_target_is_a_state(self):
        """Each transition leads to a state the table knows."""
        for table in (exchange.REQUEST_TRANSITIONS, exchange.RESPONSE_TRANSITIONS):
            for targets in table.values():
                self.assertLessEqual(targets, set(table))

    def test_checker_refuses_an_unlisted_transition(self):
        """Setting a response body state straight from "no response" raises."""
        proto = CheckedProtocol.__new__(CheckedProtocol)
        object.__setattr__(proto, "_resp", exchange.S_NONE)
        with self.assertRaises(IllegalTransition):
            proto._resp = exchange.S_BODY
        with self.assertRaises(IllegalTransition):
            proto._req = 3  # the integer states of old are not states any more


class TableIsTightTests(unittest.TestCase):
    """No transition in the tables is dead: the checked tests below take every one of them."""

    def test_every_listed_transition_is_taken(self):
        """Run the checked test classes of this module and collect the transitions they take."""
        from twisted.trial import reporter, runner

        taken: set = set()
        CheckedProtocol.taken = taken
        self.addCleanup(setattr, CheckedProtocol, "taken", None)
        loader = runner.TestLoader()
        suite = runner.TestSuite(
            [
                loader.loadClass(cls)
                for cls in globals().values()
                if isinstance(cls, type) and issubclass(cls, Checked) and issubclass(cls, unittest.TestCase)
            ]
        )
        result = reporter.Reporter(io.StringIO())
        suite.run(result)
        self.assertTrue(result.wasSuccessful(), "the checked tests failed; see the other failures")
        listed = {
            (name, old, new)
            for name, table in (
                ("_req", exchange.REQUEST_TRANSITIONS),
                ("_resp", exchange.RESPONSE_TRANSITIONS),
            )
            for old, targets in table.items()
            for new in targets
        }
        self.assertEqual(listed - taken, set(), "transitions listed but never taken")


class CheckedPublicFrontTests(Checked, unit.PublicFrontTests):
    """The public front's exchanges, with every transition checked."""


class CheckedBodyLimitTests(Checked, unit.BodyLimitTests):
    """Body limits, with every transition checked."""


class CheckedStalledBodyTests(Checked, unit.StalledBodyTests):
    """Stalled bodies (408/504), with every transition checked."""


class CheckedOwnAnswerBackpressureTests(Checked, unit.OwnAnswerBackpressureTests):
    """The relay's own answers under back-pressure, with every transition checked."""


class CheckedHttpInteropTests(Checked, unit.HttpInteropTests):
    """Trailers, h2c, HTTP/1.0 dechunking, with every transition checked."""


class CheckedRetryTests(Checked, test_public_retries.RetryTests):
    """Retries and giving up, with every transition checked."""


class CheckedSlowUploadTests(Checked, test_public_retries.SlowUploadTests):
    """A slow upload, with every transition checked."""


class CheckedPipeliningTests(Checked, test_public_pipelining.PipeliningTests):
    """Pipelined requests answered by the relay, with every transition checked."""


class CheckedPipelinedHalfCloseTests(Checked, test_public_pipelining.PipelinedHalfCloseTests):
    """Pipelining then a half-close, with every transition checked."""


class CheckedFramingTests(Checked, test_public_framing.FramingAgreementTests):
    """Framing agreement, with every transition checked."""


class CheckedHopByHopTests(Checked, test_public_framing.HopByHopTests):
    """Hop-by-hop rules, with every transition checked."""


class CheckedTokenRoutingTests(Checked, test_public_routing.TokenRoutingTests):
    """Token routing and its redirect, with every transition checked."""


class CheckedUpgradedSpliceTests(Checked, test_splice.UpgradedSpliceTests):
    """101 Switching Protocols into a splice, with every transition checked."""
