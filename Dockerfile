# arps, the ARP relay, for running several relays on one Redis (README: "Running several relays").
#   docker build -t arp-relay .
#   docker run --rm -e ARP_AUTH_KEY=... arp-relay --redis redis://redis:6379/0
FROM python:3.11-slim-bookworm

RUN useradd --system --create-home --home-dir /home/arp --uid 10001 arp
WORKDIR /src
COPY pyproject.toml setup.cfg README.rst ./
COPY arp ./arp
COPY twisted ./twisted
RUN pip install --no-cache-dir '.[redis]' && rm -rf /src

USER arp
WORKDIR /home/arp
# control, proxy (tunnels and relay-to-relay), public, admin
EXPOSE 17001 17002 17003 17004
ENTRYPOINT ["twistd", "-n", "--pidfile=", "arps"]
CMD ["--help"]
