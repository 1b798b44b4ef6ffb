#!/usr/bin/env bash
# A self-signed certificate for trying the nginx front end: deploy/tls/make-cert.sh [DIR] [NAME...]
# writes DIR/parley.crt and DIR/parley.key (DIR defaults to this script's folder), valid for a
# year for localhost, 127.0.0.1, ::1 and any NAME given. Browsers and clients must be told to
# trust it (curl --cacert DIR/parley.crt); for a public server use a real certificate instead.
set -euo pipefail
dir="${1:-$(dirname "$0")}"
shift || true
names="DNS:localhost,IP:127.0.0.1,IP:::1"
for name in "$@"; do
    names="$names,DNS:$name"
done
mkdir -p "$dir"
openssl req -x509 -newkey rsa:2048 -sha256 -days 365 -nodes \
    -keyout "$dir/parley.key" -out "$dir/parley.crt" \
    -subj "/CN=${1:-localhost}" -addext "subjectAltName=$names" \
    -addext "basicConstraints=critical,CA:TRUE" 2>/dev/null
chmod 600 "$dir/parley.key"
echo "wrote $dir/parley.crt and $dir/parley.key"
