"""Unit tests of the registration proofs and the tunnel header."""

from __future__ import annotations

import os

from twisted.trial import unittest

from arp import wire


class WireTests(unittest.TestCase):
    """Proofs bind key, nonce, id and instance; headers are strict."""

    def test_seal_round_trip(self):
        """A sealed instance token unseals with the same key and nonce only."""
        key, nonce, token = wire.key_bytes("k"), os.urandom(32), os.urandom(32)
        sealed = wire.seal_token(key, nonce, token)
        self.assertNotEqual(sealed, token)
        self.assertEqual(wire.unseal_token(key, nonce, sealed), token)
        self.assertNotEqual(wire.unseal_token(key, os.urandom(32), sealed), token)
        self.assertNotEqual(wire.unseal_token(wire.key_bytes("other"), nonce, sealed), token)

    def test_proof(self):
        """A proof checks only for the same key, nonce, id and sealed token."""
        key, nonce, sealed = wire.key_bytes("k"), os.urandom(32), os.urandom(32)
        proof = wire.register_proof(key, nonce, "abc", sealed)
        self.assertTrue(wire.check_proof(key, nonce, "abc", sealed, proof))
        self.assertFalse(wire.check_proof(key, nonce, "abd", sealed, proof))
        self.assertFalse(wire.check_proof(key, os.urandom(32), "abc", sealed, proof))
        self.assertFalse(wire.check_proof(wire.key_bytes("x"), nonce, "abc", sealed, proof))
        self.assertFalse(wire.check_proof(key, nonce, "abc", os.urandom(32), proof))

    def test_tunnel_header(self):
        """The tunnel header round-trips; malformed ones are refused."""
        secret = wire.random_hex(32)
        line = wire.tunnel_header("client-1", secret).rstrip(b"\r\n")
        self.assertEqual(wire.parse_tunnel_header(line), ("client-1", secret))
        for bad in (
            b"",
            b"GET / HTTP/1.1",
            b"ARP-TUNNEL/1 a",
            b"ARP-TUNNEL/1 a/b " + secret.encode(),
            b"ARP-TUNNEL/1 abc XYZ",
            b"ARP-TUNNEL/1 \xff " + secret.encode(),
        ):
            with self.assertRaises(wire.BadTunnelHeader):
                wire.parse_tunnel_header(bad)
