#!/usr/bin/env bash
# Makes what deploy/ needs and nothing commits (deploy/secrets/ and
# deploy/.env are ignored by git): a certificate authority, the NATS nodes'
# certificate (client port and cluster routes), and a random password per
# jetsched role. Run once before `docker compose -f deploy/docker-compose.yml
# up`; for Kubernetes apply deploy/secrets/kubernetes-secrets.yaml.
#   EXTRA_SANS="DNS:nats.example.com,IP:10.0.0.5" deploy/make-secrets.sh
# Existing secrets are kept: delete deploy/secrets and deploy/.env to start over
# (docs/OPERATIONS.md, "Rotating credentials").
set -euo pipefail
cd "$(dirname "$0")"
umask 077
mkdir -p secrets/tls
tls=secrets/tls
roles=(ticker dispatcher worker admin submitter function console)

if [ ! -f "$tls/ca.pem" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
    -subj "/CN=jetsched NATS CA" -keyout "$tls/ca-key.pem" -out "$tls/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi
if [ ! -f "$tls/server.pem" ]; then
  # The compose nodes, the Helm chart's pods, and local port forwards.
  sans="DNS:nats-1,DNS:nats-2,DNS:nats-3,DNS:nats,DNS:nats-headless,DNS:*.nats-headless"
  sans="$sans,DNS:*.nats-headless.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1"
  [ -n "${EXTRA_SANS:-}" ] && sans="$sans,$EXTRA_SANS"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=nats" \
    -keyout "$tls/server-key.pem" -out "$tls/server.csr" 2>/dev/null
  openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca-key.pem" -CAcreateserial \
    -days 397 -out "$tls/server.pem" -extfile <(printf '%s\n' \
      "subjectAltName=$sans" "extendedKeyUsage=serverAuth,clientAuth" "keyUsage=critical,digitalSignature") 2>/dev/null
  rm -f "$tls/server.csr"
fi
# jetsched's containers (another user) read the CA and the certificate;
# the keys stay readable by this user only (the NATS image runs as root).
chmod 0644 "$tls/ca.pem" "$tls/server.pem"

if [ ! -f .env ]; then
  for role in "${roles[@]}"; do
    echo "JETSCHED_$(echo "$role" | tr a-z A-Z)_PASSWORD=$(openssl rand -hex 24)"
  done > .env
fi

# The same as Kubernetes Secrets: nats-server-tls and nats-cluster-tls for
# the Helm chart, jetsched-nats-users for the chart's users and jetsched's
# services, jetsched-nats-ca for the services to verify the nodes.
b64() { base64 < "$1" | tr -d '\n'; }
{
  for name in nats-server-tls nats-cluster-tls; do
    printf 'apiVersion: v1\nkind: Secret\nmetadata: {name: %s}\ntype: kubernetes.io/tls\ndata:\n' "$name"
    printf '  tls.crt: %s\n  tls.key: %s\n  ca.crt: %s\n---\n' "$(b64 $tls/server.pem)" "$(b64 $tls/server-key.pem)" "$(b64 $tls/ca.pem)"
  done
  printf 'apiVersion: v1\nkind: Secret\nmetadata: {name: jetsched-nats-ca}\ndata:\n  ca.pem: %s\n---\n' "$(b64 $tls/ca.pem)"
  printf 'apiVersion: v1\nkind: Secret\nmetadata: {name: jetsched-nats-users}\nstringData:\n'
  for role in "${roles[@]}"; do
    printf '  %s: %s\n' "$role" "$(grep "^JETSCHED_$(echo "$role" | tr a-z A-Z)_PASSWORD=" .env | cut -d= -f2)"
  done
} > secrets/kubernetes-secrets.yaml
echo "secrets in deploy/secrets/ and deploy/.env (not committed)"
