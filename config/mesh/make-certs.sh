#!/bin/sh
# A mesh CA and one certificate per service, for the two-sidecar example (and as the
# recipe for your own). Usage: ./make-certs.sh [DIR] [SERVICE...]
#   DIR      where to write (default: certs, beside this script)
#   SERVICE  the services (default: orders billing)
# Each leaf is X.509 v3 with:
#   subjectAltName  URI:spiffe://mesh/SERVICE (the identity a receiving sidecar forwards
#                   to its app in x-forwarded-client-cert) and DNS:SERVICE.mesh (the
#                   name callers verify: a cluster's tls.sni)
#   extendedKeyUsage serverAuth,clientAuth (one certificate serves the inbound
#                   listener and presents itself on outbound calls)
# Needs OpenSSL 3 (`req -x509 -CA`).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:-$here/certs}
[ $# -gt 0 ] && shift
services=${*:-orders billing}
mkdir -p "$dir"
cd "$dir"
umask 077

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
  -subj "/CN=weft example mesh CA" -keyout ca.key -out ca.crt \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
for svc in $services; do
  openssl req -x509 -CA ca.crt -CAkey ca.key -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -days 90 -subj "/CN=$svc" -keyout "$svc.key" -out "$svc.crt" \
    -addext "basicConstraints=critical,CA:FALSE" \
    -addext "subjectAltName=URI:spiffe://mesh/$svc,DNS:$svc.mesh" \
    -addext "extendedKeyUsage=serverAuth,clientAuth" 2>/dev/null
done
chmod 644 ./*.crt
echo "wrote $dir: ca.crt ca.key $(for s in $services; do printf '%s.crt %s.key ' "$s" "$s"; done)"
