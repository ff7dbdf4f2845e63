"""Unit tests of the registration transcript, identities, and the tunnel header."""

from __future__ import annotations

import os

from twisted.trial import unittest

from arp import wire


class WireTests(unittest.TestCase):
    """Proofs and signatures bind key, nonce, id, mode, port and keys; headers are strict."""

    def transcript(self, **changes) -> bytes:
        fields = {
            "nonce": b"n" * 32,
            "client_id": "abc",
            "mode": "http",
            "remote_port": 0,
            "identity": b"i" * 32,
            "exchange": b"e" * 32,
        }
        fields.update(changes)
        return wire.transcript(**fields)

    def test_admission_proof(self):
        """An admission proof checks only for the same key and the same transcript, field by field."""
        key, data = wire.key_bytes("k"), self.transcript()
        proof = wire.admission_proof(key, data)
        self.assertTrue(wire.check_admission(key, data, proof))
        self.assertFalse(wire.check_admission(wire.key_bytes("x"), data, proof))
        for change in (
            {"nonce": os.urandom(32)},
            {"client_id": "abd"},
            {"mode": "tcp"},
            {"remote_port": 1},
            {"identity": b"j" * 32},
            {"exchange": b"f" * 32},
        ):
            self.assertFalse(wire.check_admission(key, self.transcript(**change), proof), change)

    def test_signature(self):
        """An identity's signature verifies with its public key only, over the same data only."""
        identity = wire.new_identity()
        public = wire.public_bytes(identity)
        data = self.transcript(identity=public)
        signature = identity.sign(data)
        self.assertTrue(wire.verify_signature(public, signature, data))
        self.assertFalse(wire.verify_signature(public, signature, self.transcript(nonce=os.urandom(32))))
        self.assertFalse(wire.verify_signature(wire.public_bytes(wire.new_identity()), signature, data))
        self.assertFalse(wire.verify_signature(public, signature[:-1], data))
        self.assertFalse(wire.verify_signature(b"short", signature, data))

    def test_identity_round_trip(self):
        """An identity written to text reads back as the same key; junk is a clear ValueError."""
        identity = wire.new_identity()
        again = wire.identity_from_hex(wire.identity_to_hex(identity))
        self.assertEqual(wire.public_bytes(again), wire.public_bytes(identity))
        for bad in ("", "zz", "00" * 31):
            self.assertRaises(ValueError, wire.identity_from_hex, bad)

    def test_tunnel_key_agreement(self):
        """Both ends derive the same tunnel key from the exchanged public keys; an outsider's
        key or another nonce gives another key."""
        nonce = os.urandom(32)
        client, relay = wire.new_exchange(), wire.new_exchange()
        mine = wire.tunnel_key(client, wire.public_bytes(relay), nonce, "abc")
        theirs = wire.tunnel_key(relay, wire.public_bytes(client), nonce, "abc")
        self.assertEqual(mine, theirs)
        outsider = wire.new_exchange()
        self.assertNotEqual(wire.tunnel_key(outsider, wire.public_bytes(relay), nonce, "abc"), mine)
        self.assertNotEqual(wire.tunnel_key(client, wire.public_bytes(relay), os.urandom(32), "abc"), mine)
        self.assertRaises(ValueError, wire.tunnel_key, client, b"\0" * 32, nonce, "abc")

    def test_tunnel_tokens(self):
        """Each header carries a fresh token valid for its client id and key only."""
        key = wire.random_hex(32)
        first = wire.tunnel_header("client-1", key).rstrip(b"\r\n")
        second = wire.tunnel_header("client-1", key).rstrip(b"\r\n")
        self.assertNotEqual(first, second)
        client_id, token = wire.parse_tunnel_header(first)
        self.assertEqual(client_id, "client-1")
        self.assertIsNotNone(wire.check_tunnel_token("client-1", key, token))
        self.assertIsNone(wire.check_tunnel_token("client-2", key, token))
        self.assertIsNone(wire.check_tunnel_token("client-1", wire.random_hex(32), token))
        tampered = token[:-1] + ("1" if token.endswith("0") else "0")  # never the token itself
        self.assertIsNone(wire.check_tunnel_token("client-1", key, tampered))

    def test_tunnel_header(self):
        """Malformed tunnel headers are refused."""
        secret = wire.random_hex(32)
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
