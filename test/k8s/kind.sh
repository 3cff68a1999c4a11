#!/usr/bin/env bash
# End to end on kind: a kind cluster, the chorus:dev image, the kind overlay (ZooKeeper and one
# shard of 3 replicas), inserts through the client Service, then every replica holds the same
# rows, a retried insert is stored once, ZooKeeper holds at most 4 znodes for the shard and
# `chorus status` is healthy. Needs Docker (with an engine), kind, kubectl, Node.js 20+ and
# openssl; exits 2 at once, saying what is missing, where one is not there.
#
#   bash test/k8s/kind.sh          (npm run kind)
#   KEEP_CLUSTER=1                 keep the cluster afterwards (one this run created is deleted
#                                  otherwise, failed or not; one it found is always kept)
#   KIND_CLUSTER_NAME=chorus       the cluster to create, or to reuse when it exists
#   CONVERGE_TIMEOUT=180           seconds the replicas may take to converge
set -euo pipefail

kind_test_path=${BASH_SOURCE[0]}
[[ "$kind_test_path" == */* ]] || kind_test_path=./$kind_test_path
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "${kind_test_path%/*}/lib.sh"

TABLE=default.events
MAX_SHARD_ZNODES=4
CONVERGE_TIMEOUT=${CONVERGE_TIMEOUT:-180}

cluster_touched=0
# Rows the table must hold on every replica once the inserts are done.
expected_rows=0

finish() {
  local status=$?
  trap - EXIT
  if [ "$cluster_touched" = 1 ]; then
    [ "$status" = 0 ] || dump_diagnostics || true
    if [ "${KEEP_CLUSTER:-0}" = 1 ]; then
      k8s_log "KEEP_CLUSTER=1: kind cluster $KIND_CLUSTER_NAME kept (kind delete cluster --name $KIND_CLUSTER_NAME removes it)"
    elif [ "$KIND_CLUSTER_CREATED" != 1 ]; then
      k8s_log "kind cluster $KIND_CLUSTER_NAME was there before this run: kept"
    else
      kind_cluster_down || true
    fi
  fi
  if [ "$status" = 0 ]; then k8s_log "passed"; else k8s_log "failed (exit $status)"; fi
  exit "$status"
}

# JSONEachRow rows with ids FROM..TO, in two months, so every insert makes two parts.
rows_json() {
  local from=$1 to=$2 id month
  for ((id = from; id <= to; id++)); do
    month=$((id % 2 + 1))
    printf '{"ts":"2026-0%d-15 12:00:00","id":%d,"payload":"row-%d"}\n' "$month" "$id" "$id"
  done
}

insert_known_rows() {
  local batch reply
  for batch in 1 2 3 4 5; do
    reply=$(chorus_insert "$TABLE" "$(rows_json $((batch * 100 + 1)) $((batch * 100 + 20)))")
    k8s_log "insert $batch (20 rows): $reply"
    expected_rows=$((expected_rows + 20))
  done
}

# A client that did not see the answer sends the same insert again with the same token.
insert_retried_with_token() {
  local rows first second
  rows=$(rows_json 1001 1010)
  first=$(chorus_insert "$TABLE" "$rows" kind-retried-insert)
  second=$(chorus_insert "$TABLE" "$rows" kind-retried-insert)
  # The first may say deduplicated=1 too, should its own retry of a 5xx have found it stored;
  # the row count after convergence says whether the rows are there once.
  k8s_log "insert with a token: $first; its retry: $second"
  [[ "$second" == *deduplicated=1 ]] || k8s_fail "the retry with token kind-retried-insert was not deduplicated: $second"
  expected_rows=$((expected_rows + 10))
}

main() {
  k8s_preflight
  trap finish EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  cluster_touched=1
  kind_cluster_up
  build_and_load_image
  apply_kind_overlay
  wait_for_shard_ready
  insert_known_rows
  insert_retried_with_token
  wait_for_convergence "$TABLE" "$expected_rows" "$CONVERGE_TIMEOUT"
  check_shard_znodes "$MAX_SHARD_ZNODES"
  wait_for_chorus_status 60
}

main "$@"
