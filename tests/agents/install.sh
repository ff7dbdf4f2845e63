#!/usr/bin/env bash
# Install the agent CLIs the conformance suite runs against, from the npm registry only (their
# native binaries come as npm optional packages): the versions pinned in package-lock.json with
# `npm ci`, or with ARP_AGENTS=latest today's newest releases into .latest/.  Retries three times;
# exits non-zero (loudly) if the CLIs cannot be installed.
set -uo pipefail
cd "$(dirname "$0")"
command -v npm >/dev/null || { echo "install.sh: npm is missing (apt-get install nodejs npm)"; exit 1; }
packages=$(node -e 'console.log(Object.keys(require("./package.json").dependencies).join(" "))')
if [ "${ARP_AGENTS:-}" = latest ]; then
    mkdir -p .latest
    echo '{"name": "arp-agent-conformance-latest", "private": true}' > .latest/package.json
    install() { (cd .latest && npm install --no-audit --no-fund --loglevel=error $(printf '%s@latest ' $packages)); }
else
    install() { npm ci --no-audit --no-fund --loglevel=error; }
fi
for attempt in 1 2 3; do
    if install; then
        dir=$([ "${ARP_AGENTS:-}" = latest ] && echo ./.latest || echo .)
        for pkg in $packages; do
            printf '%s %s\n' "$pkg" "$(node -p "require('$dir/node_modules/$pkg/package.json').version")"
        done
        exit 0
    fi
    echo "install.sh: npm failed (attempt $attempt)"
    [ "$attempt" = 3 ] || sleep 10
done
echo "install.sh: the agent CLIs could not be installed"
exit 1
