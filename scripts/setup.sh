#!/usr/bin/env bash
# Installs what the tests, the demo and the bench need, when it is missing: Debian packages (containerd,
# docker-registry, skopeo, Go + sprig for the chart renderer, iproute2, util-linux's unshare for the pod-spec
# e2e, iperf3 for the bench's TCP limit) and node_modules. Idempotent.
#
# Node: kagami runs on Node 24 (the active LTS). `npm ci` installs it as a dev dependency (the `node`
# package, pinned in package-lock.json), and `npm test` / `npm run bench` / `npm run demo` / `npx` put
# node_modules/.bin first on PATH, so they run on it whatever the machine's own node is (>= 18 for npm).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

need=()
for cmd in containerd:containerd ctr:containerd docker-registry:docker-registry skopeo:skopeo go:golang-go ip:iproute2 unshare:util-linux chromium:chromium iperf3:iperf3 pkill:procps prlimit:util-linux; do
  command -v "${cmd%%:*}" >/dev/null 2>&1 || need+=("${cmd##*:}")
done
[ -d /usr/share/gocode/src/github.com/Masterminds/sprig ] || need+=(golang-github-masterminds-sprig-dev)
[ -d /usr/share/gocode/src/sigs.k8s.io/yaml ] || need+=(golang-k8s-sigs-yaml-dev)

if [ "${#need[@]}" -gt 0 ]; then
  # shellcheck disable=SC2207
  pkgs=($(printf '%s\n' "${need[@]}" | sort -u))
  echo "setup: installing Debian packages: ${pkgs[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" ca-certificates >/dev/null
  # The packages may start system services; kagami's tests use private sockets and ports, so stop them
  # to keep the machine quiet.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
    $SUDO systemctl disable --now containerd docker-registry >/dev/null 2>&1 || true
  fi
fi

lock_sha=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -f node_modules/.kagami-lock-sha ] || [ "$(cat node_modules/.kagami-lock-sha)" != "$lock_sha" ] ||
  [ ! -x node_modules/.bin/node ]; then
  echo "setup: installing node modules (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$lock_sha" > node_modules/.kagami-lock-sha
fi

if ! node_modules/.bin/node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 24 ? 0 : 1)'; then
  echo "setup: node_modules/.bin/node is not Node >= 24 (npm ci with --ignore-scripts skips its install)" >&2
  exit 1
fi
