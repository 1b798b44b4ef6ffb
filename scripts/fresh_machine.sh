#!/usr/bin/env bash
# The quick start on a fresh Debian 12, for real: debootstrap a bookworm root file system into a
# folder, install only what the README's quick start asks for, copy this checkout in, and run
# `make setup` (the install step of `make test`) and `make serve`, which must answer /health.
#
#   sudo scripts/fresh_machine.sh [ROOT_DIR]      # default /tmp/parley-fresh-machine; needs root
#
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian); EXTRA_CA_CERT, a PEM file
# installed as a trusted CA inside the root (for networks whose egress proxy re-signs TLS).
# Takes 15-25 minutes on two cores, most of it building llama-cpp-python. The root is kept, so a
# second run skips debootstrap; delete the folder for a clean slate.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${1:-/tmp/parley-fresh-machine}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PORT=$(python3 -c "import socket; s = socket.socket(); s.bind((\"127.0.0.1\", 0)); print(s.getsockname()[1])")

if [ "$(id -u)" != 0 ]; then echo "fresh_machine: needs root (debootstrap, chroot)" >&2; exit 1; fi
command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap

step() { printf '\n== %s (%s)\n' "$1" "$(date +%T)"; }

if [ ! -x "$ROOT/usr/bin/apt-get" ]; then
    step "debootstrap bookworm into $ROOT"
    debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR"
fi

mounts=()
cleanup() {
    # The server this script started (its process group, by id), then the mounts (in reverse order).
    if [ -s "$ROOT/root/serve.pid" ]; then kill -TERM -- "-$(cat "$ROOT/root/serve.pid")" 2>/dev/null || true; fi
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -l "${mounts[i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
for fs in proc sys dev dev/pts; do
    mount --bind "/$fs" "$ROOT/$fs"
    mounts+=("$ROOT/$fs")
done
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
# A clean environment; with EXTRA_CA_CERT, tools with their own CA roots (uv) use the system's.
tls=()
if [ -n "${EXTRA_CA_CERT:-}" ]; then tls=(SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt); fi
in_root() {
    chroot "$ROOT" /usr/bin/env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        LANG=C.UTF-8 "${tls[@]}" /bin/bash -euo pipefail -c "$1"
}

step "what the README asks for: Python 3.11, python3-venv, make, a C/C++ compiler, cmake"
in_root "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    python3 python3-venv make gcc g++ cmake ca-certificates curl procps >/dev/null"
if [ -n "${EXTRA_CA_CERT:-}" ]; then
    cp "$EXTRA_CA_CERT" "$ROOT/usr/local/share/ca-certificates/extra-ca.crt"
    in_root "update-ca-certificates >/dev/null"
fi
in_root "python3 --version; ! command -v uv"

step "copy this checkout's last commit (what a fresh clone holds) to /root/parley"
rm -rf "$ROOT/root/parley" "$ROOT/root/serve.pid"
mkdir -p "$ROOT/root/parley"
git archive HEAD | tar -xf - -C "$ROOT/root/parley"

step "make setup (uv pinned, the locked environment, llama-cpp-python built from source)"
started=$(date +%s)
in_root "cd /root/parley && make setup"
echo "make setup took $(($(date +%s) - started)) s"
in_root "cd /root/parley && .tools/uv/bin/uv --version"

step "make serve, then GET /health"
in_root "cd /root/parley && { PARLEY_PORT=$PORT setsid make serve >/root/serve.log 2>&1 & echo \$! >/root/serve.pid; } ;
    for i in \$(seq 1 120); do curl -fsS http://127.0.0.1:$PORT/health && exit 0; sleep 1; done;
    cat /root/serve.log; exit 1"
echo
in_root "for i in \$(seq 1 300); do curl -fsS http://127.0.0.1:$PORT/ready >/dev/null && break; sleep 1; done;
    curl -fsS -N http://127.0.0.1:$PORT/api/chat -d '{\"message\": \"Say hello.\", \"max_tokens\": 16}' | tail -3"
echo
step "fresh machine: the quick start works"
