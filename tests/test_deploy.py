"""The deployment files for several relays: Dockerfile, compose file, HAProxy config and
Kubernetes manifests, checked offline (no image is built)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path
from unittest import mock

import yaml
from twisted.trial import unittest

from arp.server.tap import Options

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "etc" / "cluster"


def arps_options(args: list[str], env: dict[str, str]) -> Options:
    """Parse ``args`` as arps would, with ``env`` as the environment."""
    options = Options()
    with mock.patch.dict(os.environ, env):
        options.parseOptions(args)
    return options


class Kubernetes(unittest.TestCase):
    """etc/cluster/k8s/*.yaml."""

    def documents(self) -> list[dict]:
        docs = []
        for path in sorted((CLUSTER / "k8s").glob("*.yaml")):
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
        return docs

    def test_manifests_validate_against_the_kubernetes_schema(self):
        """Every manifest passes kubernetes-validate's strict schema check (offline)."""
        import kubernetes_validate

        docs = self.documents()
        self.assertGreaterEqual(len(docs), 5)
        for doc in docs:
            kubernetes_validate.validate(doc, "1.30", strict=True)
        kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
        self.assertIn(("Deployment", "arps"), kinds)
        self.assertIn(("Deployment", "arp-redis"), kinds)
        self.assertIn(("Service", "arp-public"), kinds)

    def test_schema_check_catches_a_broken_manifest(self):
        """The validation is not vacuous: a misspelt field fails it."""
        import kubernetes_validate
        from kubernetes_validate.utils import ValidationError

        deployment = next(d for d in self.documents() if d["metadata"]["name"] == "arps")
        deployment["spec"]["replica"] = deployment["spec"].pop("replicas")
        with self.assertRaises(ValidationError):
            kubernetes_validate.validate(deployment, "1.30", strict=True)

    def test_relay_arguments_parse_and_probe_the_health_endpoint(self):
        """The arps Deployment's arguments are valid arps options; readiness asks /healthz on
        the admin port; the pod runs as a non-root user."""
        deployment = next(d for d in self.documents() if d["metadata"]["name"] == "arps")
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        args = [a.replace("$(POD_IP)", "10.1.2.3") for a in container["args"]]
        options = arps_options(args, {"ARP_AUTH_KEY": "k", "ARP_ADMIN_TOKEN": "t", "ARP_RELAY_KEY": "r" * 16})
        self.assertEqual(options["redis-url"].host, "arp-redis")
        self.assertEqual(options["advertise"], "10.1.2.3:17002")
        self.assertEqual(container["readinessProbe"]["httpGet"], {"path": "/healthz", "port": "admin"})
        self.assertTrue(pod["securityContext"]["runAsNonRoot"])


class Compose(unittest.TestCase):
    """etc/cluster/compose.yaml and its HAProxy configuration."""

    def load(self) -> dict:
        return yaml.safe_load((CLUSTER / "compose.yaml").read_text())

    def test_two_relays_redis_and_a_load_balancer(self):
        """Two relays on one Redis, each advertising its own proxy endpoint, behind HAProxy;
        their commands are valid arps options."""
        compose = self.load()
        services = compose["services"]
        self.assertEqual(sorted(services), ["lb", "redis", "relay1", "relay2"])
        for name in ("relay1", "relay2"):
            relay = services[name]
            env = {k: "x" for k in ("ARP_AUTH_KEY", "ARP_ADMIN_TOKEN")}
            env["ARP_RELAY_KEY"] = "r" * 16
            env["ARP_REDIS"] = relay["environment"]["ARP_REDIS"]
            options = arps_options(relay["command"], env)
            self.assertEqual(options["redis-url"].host, "redis")
            self.assertEqual(options["advertise"], f"{name}:17002")
        self.assertIn("./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro", services["lb"]["volumes"])
        config = (CLUSTER / "haproxy.cfg").read_text()
        for name in ("relay1", "relay2"):
            self.assertIn(f"server {name} {name}:17003", config)

    def test_docker_compose_accepts_it(self):
        """Docker Compose accepts the file (``docker compose config``, or Debian's
        ``docker-compose``, which CI installs), and refuses it without the shared auth key."""
        docker = shutil.which("docker")
        if docker and not subprocess.run([docker, "compose", "version"], capture_output=True).returncode:
            command = [docker, "compose"]
        elif shutil.which("docker-compose"):
            command = [shutil.which("docker-compose")]
        else:
            raise unittest.SkipTest("neither docker compose nor docker-compose is installed")

        def config(**env: str) -> subprocess.CompletedProcess:
            # Debian's docker-compose is a Python program: no PYTHONPATH of ours (trial -j sets one)
            environ = {k: v for k, v in os.environ.items() if not k.startswith(("ARP_", "PYTHON"))}
            return subprocess.run(
                [*command, "-f", str(CLUSTER / "compose.yaml"), "config", "--quiet"],
                capture_output=True,
                text=True,
                env={**environ, **env},
                timeout=120,
            )

        done = config(ARP_AUTH_KEY="k", ARP_ADMIN_TOKEN="t", ARP_RELAY_KEY="r" * 16)
        self.assertEqual(done.returncode, 0, done.stderr)
        refused = config(ARP_AUTH_KEY="k", ARP_ADMIN_TOKEN="t")
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn("ARP_RELAY_KEY", refused.stderr)
        refused = config(ARP_ADMIN_TOKEN="t")
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn("ARP_AUTH_KEY", refused.stderr)

    def test_haproxy_accepts_its_configuration(self):
        """``haproxy -c`` finds the configuration valid (Debian's haproxy; CI installs it)."""
        haproxy = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
        if haproxy is None:
            raise unittest.SkipTest("haproxy is not installed (apt-get install haproxy)")
        done = subprocess.run(
            [haproxy, "-c", "-f", str(CLUSTER / "haproxy.cfg")], capture_output=True, text=True
        )
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)


class Dockerfile(unittest.TestCase):
    """The relay's image."""

    def test_runs_arps_under_twistd_as_a_non_root_user(self):
        """The image installs the redis extra and runs ``twistd -n arps`` as user ``arp``."""
        lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
        users = [line.split()[1] for line in lines if line.startswith("USER ")]
        self.assertEqual(users, ["arp"])
        entry = next(line for line in lines if line.startswith("ENTRYPOINT "))
        self.assertEqual(
            shlex.split(entry[len("ENTRYPOINT ") :].strip("[]").replace(",", " ")),
            ["twistd", "-n", "--pidfile=", "arps"],
        )
        self.assertTrue(any(".[redis]" in line for line in lines if line.startswith("RUN ")))
