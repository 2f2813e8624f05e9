#!/usr/bin/env bash
# Rewrites the role permissions deploy/ uses from `jetsched permissions`, so
# that they follow the names jetsched uses (tests/deploy.rs fails when they
# drift). Run from anywhere after changing subjects, buckets or consumers,
# the workers' queues or ids (WORKER_ARGS), or the NATS function subjects:
#   cargo build -p jetsched && deploy/permissions/regenerate.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
jetsched="${JETSCHED:-$here/../../target/debug/jetsched}"
# The workers of deploy/: queue `default`, fixed ids (a worker always reads
# its own queue of routed runs, so its id must be in its permissions).
WORKER_ARGS=(--queues default --worker-id jetsched-worker-0,jetsched-worker-1)
for role in ticker dispatcher worker admin submitter function console; do
  extra=()
  [ "$role" = worker ] && extra=("${WORKER_ARGS[@]}")
  "$jetsched" permissions "$role" --format nats-conf "${extra[@]}" > "$here/$role.conf"
done

# The same lists in the Helm values (JSON is YAML), between the markers.
values="$here/../kubernetes/nats-values.yaml"
{
  sed '/# BEGIN jetsched users/q' "$values"
  for role in ticker dispatcher worker admin submitter function console; do
    extra=()
    [ "$role" = worker ] && extra=("${WORKER_ARGS[@]}")
    upper="$(echo "$role" | tr a-z A-Z)"
    echo "        - user: $role"
    echo "          password: << \$JETSCHED_${upper}_PASSWORD >>"
    echo "          permissions: $("$jetsched" permissions "$role" --format json "${extra[@]}" | tr -d '\n' | tr -s ' ')"
  done
  sed -n '/# END jetsched users/,$p' "$values"
} > "$values.new"
mv "$values.new" "$values"
