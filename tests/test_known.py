"""The log of known client ids (:mod:`arp.server.known`) and the registry bringing them back."""

from __future__ import annotations

import json
import time
from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial import unittest

from arp import wire
from arp.server.known import (
    COMPACT_SLACK,
    FILE_NAME,
    KnownClient,
    KnownClients,
    KnownClientsError,
    key_fingerprint,
)
from arp.server.registry import Registry, RelayConfig

KEY = "known-test-key-0123456789"


def entry(client_id: str, key: str = KEY, **more: object) -> KnownClient:
    return KnownClient(
        client_id=client_id,
        identity=bytes(range(32)),
        mode="http",
        tenant="default",
        key=key_fingerprint(wire.key_bytes(key)),
        registered_at=time.time(),
        **more,
    )


class KnownClientsTests(unittest.TestCase):
    def _open(self, directory: Path) -> KnownClients:
        known = KnownClients(directory)
        known.open()
        self.addCleanup(known.close)
        return known

    def test_events_survive_a_reopen(self):
        """Registered, offline, stopped and gone ids read back as they were left; a line torn by
        a crash and lines that are not ours are skipped; the reopened log is compact."""
        directory = Path(self.mktemp())
        directory.mkdir()
        known = self._open(directory)
        known.registered(entry("alpha"))
        known.registered(entry("beta"))
        known.registered(entry("gamma"))
        known.offline("beta", 1000.0)
        known.stopped("gamma", 2000.0)
        known.registered(entry("delta"))
        known.gone("delta")
        known.close()
        with open(directory / FILE_NAME, "a") as f:
            f.write('{"id": "torn", "ident')  # killed mid-line
            f.write("\n[1, 2]\n")
        again = KnownClients(directory)
        found = again.open()
        self.addCleanup(again.close)
        self.assertEqual(sorted(found), ["alpha", "beta", "gamma"])
        self.assertIsNone(found["alpha"].offline_since)
        self.assertEqual(found["beta"].offline_since, 1000.0)
        self.assertEqual((found["gamma"].stopped_at, found["gamma"].offline_since), (2000.0, 2000.0))
        self.assertEqual(found["alpha"].identity, bytes(range(32)))
        lines = [json.loads(line) for line in (directory / FILE_NAME).read_text().splitlines()]
        self.assertEqual(len(lines), 5)  # three registrations, one offline, one stopped

    def test_a_second_relay_on_the_same_dir_keeps_nothing(self):
        """Two relays on one data dir: the second neither reads nor writes the first one's log."""
        directory = Path(self.mktemp())
        directory.mkdir()
        first = self._open(directory)
        first.registered(entry("alpha"))
        second = KnownClients(directory)
        self.assertEqual(second.open(), {})
        second.registered(entry("beta"))  # not written: the log is the first relay's
        first.close()
        third = self._open(directory)
        self.assertEqual(sorted(third.known), ["alpha"])

    def test_unreadable(self):
        """A log that is not a readable file is an error that names it."""
        directory = Path(self.mktemp())
        (directory / FILE_NAME).mkdir(parents=True)
        with self.assertRaises(KnownClientsError) as caught:
            KnownClients(directory).open()
        self.assertIn(FILE_NAME, str(caught.exception))

    def test_compacts_as_it_grows(self):
        """A client that reconnects all day does not grow the log without bound."""
        directory = Path(self.mktemp())
        directory.mkdir()
        known = self._open(directory)
        for i in range(COMPACT_SLACK + 10):
            known.offline("alpha", float(i))
            known.registered(entry("alpha"))
        size = len((directory / FILE_NAME).read_text().splitlines())
        self.assertLessEqual(size, COMPACT_SLACK + 2)


class RestoreTests(unittest.TestCase):
    """The registry brings known ids back as retained registrations."""

    def test_restore(self):
        """An id from before the restart is offline, pinned and expires after the retention left;
        one whose retention already ran out, or whose auth key changed, is forgotten."""
        directory = Path(self.mktemp())
        directory.mkdir()
        known = KnownClients(directory)
        known.open()
        now = time.time()
        known.registered(entry("online"))
        known.registered(entry("away"))
        known.offline("away", now - 100)
        known.registered(entry("expired"))
        known.offline("expired", now - 1000)
        known.registered(entry("rekeyed", key="an-old-key-0123456789"))
        known.close()
        known = KnownClients(directory)
        known.open()
        self.addCleanup(known.close)
        clock = Clock()
        registry = Registry(RelayConfig(retention=300.0), KEY, clock, known=known)
        registry.startService()
        self.addCleanup(registry.stopService)
        self.assertEqual(sorted(registry.clients), ["away", "online"])
        for record in registry.clients.values():
            self.assertFalse(record.online)
            self.assertTrue(record.restored)
            self.assertEqual(record.identity, bytes(range(32)))
        self.assertEqual(sorted(known.known), ["away", "online"])
        clock.advance(250)  # "away" had 200 s left
        self.assertEqual(sorted(registry.clients), ["online"])
        clock.advance(100)
        self.assertEqual(registry.clients, {})
        self.assertEqual(known.known, {})


class MemoryTrimmerTests(unittest.TestCase):
    """arps hands memory back after a flood (arp/lean.py)."""

    def test_trims_only_when_rss_is_up(self):
        """At the idle floor: nothing; RSS up by more than the slack: collect and trim once; memory
        that stays in use (more clients) raises the floor instead of trimming every time."""
        from arp import lean

        readings = iter([100, 100, 200, 150, 150, 300, 300])
        self.patch(lean, "rss_bytes", lambda: next(readings))
        trims = []
        self.patch(lean, "release_startup_memory", lambda: trims.append(1) or True)
        trimmer = lean.MemoryTrimmer(Clock(), slack=10)
        trimmer.check()  # 100: the floor
        trimmer.check()  # 100: nothing
        trimmer.check()  # 200 -> trimmed to 150: still up, so 150 is the new floor
        self.assertEqual((len(trims), trimmer.floor), (1, 150))
        trimmer.check()  # 150: nothing
        trimmer.check()  # 300 -> 300
        self.assertEqual((len(trims), trimmer.floor), (2, 300))
