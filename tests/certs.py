"""A throw-away CA and a server certificate for 127.0.0.1, made with ``cryptography``."""

from __future__ import annotations

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_ca_and_cert(directory: str, ip: str = "127.0.0.1") -> dict[str, str]:
    """Write ``ca/ca.pem``, ``server.key`` and ``server.pem`` into ``directory``; return paths."""
    os.makedirs(os.path.join(directory, "ca"), exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("ARP test CA"))
        .issuer_name(_name("ARP test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(ip))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(ip)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = {
        "ca_dir": os.path.join(directory, "ca"),
        "ca": os.path.join(directory, "ca", "ca.pem"),
        "key": os.path.join(directory, "server.key"),
        "cert": os.path.join(directory, "server.pem"),
    }
    with open(paths["ca"], "wb") as f:
        f.write(ca_cert.public_bytes(serialization.Encoding.PEM))
    with open(paths["key"], "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
    with open(paths["cert"], "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return paths


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_lets_encrypt_style(directory: str, ip: str = "127.0.0.1") -> dict[str, str]:
    """A root CA, an intermediate and a server certificate, written as certbot lays them out.

    ``ca/ca.pem`` holds the root only (what a client trusts); ``live/`` holds
    ``privkey.pem`` (PKCS#8), ``cert.pem`` (the server's), ``chain.pem`` (the
    intermediate), ``fullchain.pem`` (both); ``combined.pem`` is the key
    followed by the full chain.  A client that is not sent the intermediate
    cannot verify the server, so a test that passes proves the chain was served.
    """
    live = os.path.join(directory, "live")
    os.makedirs(live, exist_ok=True)
    os.makedirs(os.path.join(directory, "ca"), exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    week = datetime.timedelta(days=7)

    def issue(subject, key, issuer, issuer_key, ca: bool, sans=None):
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(subject))
            .issuer_name(_name(issuer))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + week)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    root_key, mid_key, key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = issue("ARP test root", root_key, "ARP test root", root_key, ca=True)
    mid = issue("ARP test intermediate", mid_key, "ARP test root", root_key, ca=True)
    sans = [x509.IPAddress(ipaddress.ip_address(ip)), x509.DNSName("localhost")]
    cert = issue("localhost", key, "ARP test intermediate", mid_key, ca=False, sans=sans)
    privkey = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    files = {
        "ca": (os.path.join(directory, "ca", "ca.pem"), _pem(root)),
        "privkey": (os.path.join(live, "privkey.pem"), privkey),
        "cert": (os.path.join(live, "cert.pem"), _pem(cert)),
        "chain": (os.path.join(live, "chain.pem"), _pem(mid)),
        "fullchain": (os.path.join(live, "fullchain.pem"), _pem(cert) + _pem(mid)),
        "combined": (os.path.join(directory, "combined.pem"), privkey + _pem(cert) + _pem(mid)),
    }
    paths = {"ca_dir": os.path.join(directory, "ca"), "live": live}
    for name, (path, data) in files.items():
        with open(path, "wb") as f:
            f.write(data)
        paths[name] = path
    return paths
