# shellcheck shell=bash
# Helpers for end-to-end runs of the kind overlay (k8s/overlays/kind): test/k8s/kind.sh, and
# the chaos suite that drives its scenarios through the same overlay. Sourced, not run; the
# caller sets `set -euo pipefail`.
#
# Settings (environment):
#   KIND_CLUSTER_NAME  kind cluster to create or reuse (default chorus)
#   ROLLOUT_TIMEOUT    how long each StatefulSet may take to become ready (default 600s)
#   SCHEMA_TIMEOUT     how long the schema Job may take (default 300s)

k8s_lib_path=${BASH_SOURCE[0]}
[[ "$k8s_lib_path" == */* ]] || k8s_lib_path=./$k8s_lib_path
K8S_REPO_ROOT=$(cd "${k8s_lib_path%/*}/../.." && pwd)
KIND_OVERLAY=$K8S_REPO_ROOT/k8s/overlays/kind
KIND_CLUSTER_NAME=${KIND_CLUSTER_NAME:-chorus}
ROLLOUT_TIMEOUT=${ROLLOUT_TIMEOUT:-600s}
SCHEMA_TIMEOUT=${SCHEMA_TIMEOUT:-300s}

# Names fixed by the kind overlay (see k8s/overlays/kind): it rewrites the sidecar's image to
# chorus:dev and puts everything in the namespace chorus.
CHORUS_DEV_IMAGE=chorus:dev
K8S_NAMESPACE=chorus
SHARD_STATEFULSET=clickhouse-shard1
SHARD_PODS=(clickhouse-shard1-0 clickhouse-shard1-1 clickhouse-shard1-2)
SHARD_CLIENT_URL=http://chorus-shard1:8124
SHARD_ZNODE_ROOT=/chorus/default/shard1
ZOOKEEPER_STATEFULSET=zookeeper
ZOOKEEPER_POD=zookeeper-0
ZOOKEEPER_CLIENT_PORT=2181

# The names above, NAME=VALUE a line (SHARD_POD once per pod), for the chaos suite's kind
# backend (test/chaos/kind-backend.ts), so that they are written down once.
print_overlay_names() {
  printf 'K8S_NAMESPACE=%s\n' "$K8S_NAMESPACE"
  printf 'SHARD_STATEFULSET=%s\n' "$SHARD_STATEFULSET"
  printf 'SHARD_POD=%s\n' "${SHARD_PODS[@]}"
  printf 'ZOOKEEPER_STATEFULSET=%s\n' "$ZOOKEEPER_STATEFULSET"
  printf 'ZOOKEEPER_CLIENT_PORT=%s\n' "$ZOOKEEPER_CLIENT_PORT"
}

k8s_log() {
  # date rather than printf's %(...)T: macOS still ships bash 3.2.
  echo "$(date +%H:%M:%S) ${0##*/}: $*" >&2
}

k8s_fail() {
  k8s_log "FAILED: $*"
  exit 1
}

# Preflight failures are the machine's, not Chorus's: exit 2, one line, what to do about it.
k8s_preflight_fail() {
  echo "${0##*/}: $*" >&2
  exit 2
}

# Every tool a run needs, checked before anything is created. Builtins only until each tool
# is known to be there, so a missing one is named rather than failing somewhere later.
k8s_preflight() {
  command -v docker >/dev/null 2>&1 ||
    k8s_preflight_fail "docker is missing: install Docker (https://docs.docker.com/engine/install/); kind runs its nodes as Docker containers"
  local docker_error
  if ! docker_error=$(docker info 2>&1 >/dev/null); then
    docker_error=${docker_error//$'\n'/ }
    k8s_preflight_fail "docker cannot reach a Docker engine (docker info: ${docker_error:0:200}): start the Docker daemon, or point DOCKER_HOST at one; kind runs its nodes as Docker containers"
  fi
  command -v kind >/dev/null 2>&1 ||
    k8s_preflight_fail "kind is missing: install it (https://kind.sigs.k8s.io/docs/user/quick-start/#installation, e.g. 'go install sigs.k8s.io/kind@latest')"
  command -v kubectl >/dev/null 2>&1 ||
    k8s_preflight_fail "kubectl is missing: install it (https://kubernetes.io/docs/tasks/tools/)"
  command -v node >/dev/null 2>&1 ||
    k8s_preflight_fail "node is missing: install Node.js 20 or later (https://nodejs.org/); make-secrets.sh runs the chorus CLI"
  local node_major
  node_major=$(node -p 'process.versions.node.split(".")[0]')
  [ "$node_major" -ge 20 ] ||
    k8s_preflight_fail "node $(node --version) is too old: install Node.js 20 or later (https://nodejs.org/)"
  command -v openssl >/dev/null 2>&1 ||
    k8s_preflight_fail "openssl is missing: install it (apt-get install openssl); make-secrets.sh makes the certificates and passwords with it"
  local needed
  for needed in Dockerfile k8s/overlays/kind/kustomization.yaml k8s/overlays/kind/kind-cluster.yaml k8s/overlays/kind/make-secrets.sh; do
    [ -f "$K8S_REPO_ROOT/$needed" ] || k8s_preflight_fail "$needed is missing from $K8S_REPO_ROOT: this checkout cannot build the image or apply the kind overlay"
  done
}

# kubectl pinned to the kind cluster's context and the overlay's namespace: never whatever
# cluster the current context happens to name.
kc() {
  kubectl --context "kind-$KIND_CLUSTER_NAME" -n "$K8S_NAMESPACE" "$@"
}

# Sets KIND_CLUSTER_CREATED=1 when it made the cluster: one it found is someone's, not to delete.
KIND_CLUSTER_CREATED=0
kind_cluster_up() {
  if kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER_NAME"; then
    k8s_log "reusing kind cluster $KIND_CLUSTER_NAME"
    kind export kubeconfig --name "$KIND_CLUSTER_NAME"
  else
    k8s_log "creating kind cluster $KIND_CLUSTER_NAME"
    # shellcheck disable=SC2034 # read by kind.sh, which sources this file
    KIND_CLUSTER_CREATED=1
    kind create cluster --name "$KIND_CLUSTER_NAME" --config "$KIND_OVERLAY/kind-cluster.yaml" --wait 120s
  fi
}

kind_cluster_down() {
  k8s_log "deleting kind cluster $KIND_CLUSTER_NAME"
  kind delete cluster --name "$KIND_CLUSTER_NAME"
}

build_and_load_image() {
  k8s_log "building $CHORUS_DEV_IMAGE"
  docker build -t "$CHORUS_DEV_IMAGE" "$K8S_REPO_ROOT"
  k8s_log "loading $CHORUS_DEV_IMAGE into the kind nodes"
  kind load docker-image "$CHORUS_DEV_IMAGE" --name "$KIND_CLUSTER_NAME"
}

apply_kind_overlay() {
  bash "$KIND_OVERLAY/make-secrets.sh"
  k8s_log "applying k8s/overlays/kind"
  kubectl --context "kind-$KIND_CLUSTER_NAME" apply -k "$KIND_OVERLAY"
}

wait_for_shard_ready() {
  k8s_log "waiting for ZooKeeper, the shard's replicas and the schema Job"
  kc rollout status "statefulset/$ZOOKEEPER_STATEFULSET" --timeout "$ROLLOUT_TIMEOUT"
  kc rollout status "statefulset/$SHARD_STATEFULSET" --timeout "$ROLLOUT_TIMEOUT"
  kc wait --for=condition=complete job/chorus-schema --timeout "$SCHEMA_TIMEOUT"
  # Here, in the caller's shell, so that the inserts and probes run in $(...) inherit it.
  load_clickhouse_password
}

# The password of ClickHouse's user default, as a running ClickHouse container has it (not as
# a local file says: the chaos suite may run against a shard applied elsewhere; nor by the
# Secret's name, which the kind overlay's secretGenerator suffixes with a hash).
# Read once into SHARD_CH_PASSWORD (every insert and convergence probe needs it); a caller in
# a subshell reads it itself.
SHARD_CH_PASSWORD=
load_clickhouse_password() {
  [ -z "$SHARD_CH_PASSWORD" ] || return 0
  SHARD_CH_PASSWORD=$(kc exec "${SHARD_PODS[0]}" -c clickhouse -- printenv CLICKHOUSE_DEFAULT_PASSWORD) ||
    k8s_fail "cannot read CLICKHOUSE_DEFAULT_PASSWORD in ${SHARD_PODS[0]}'s clickhouse container"
  [ -n "$SHARD_CH_PASSWORD" ] || k8s_fail "CLICKHOUSE_DEFAULT_PASSWORD is empty in ${SHARD_PODS[0]}"
}

# Posts an INSERT through the client Service from inside the cluster, as an application
# would. A 5xx or a connection error is retried with the same body: Chorus deduplicates the
# retry, which is the point. Prints "lsn=L deduplicated=0|1|partial".
# Usage: chorus_insert TABLE JSON_EACH_ROW_BODY [INSERT_DEDUPLICATION_TOKEN]
chorus_insert() {
  local table=$1 rows=$2 token=${3:-}
  load_clickhouse_password
  # shellcheck disable=SC2016 # JavaScript, whose ${...} are template literals
  local script='
(async () => {
  const [base, table, auth, body, token] = process.argv.slice(1);
  const url = new URL(base);
  url.searchParams.set("query", `INSERT INTO ${table} FORMAT JSONEachRow`);
  if (token) url.searchParams.set("insert_deduplication_token", token);
  const headers = { authorization: "Basic " + Buffer.from(auth).toString("base64") };
  for (let attempt = 1; ; attempt++) {
    let failure;
    try {
      const res = await fetch(url, { method: "POST", headers, body });
      const text = (await res.text()).trim();
      if (res.ok) {
        console.log(`lsn=${res.headers.get("x-chorus-lsn")} deduplicated=${res.headers.get("x-chorus-deduplicated")}`);
        return;
      }
      if (res.status < 500) {
        console.error(`HTTP ${res.status}: ${text}`);
        process.exit(1);
      }
      failure = `HTTP ${res.status}: ${text}`;
    } catch (err) {
      failure = String(err.cause ?? err);
    }
    if (attempt === 10) { console.error(`insert failed after ${attempt} attempts: ${failure}`); process.exit(1); }
    console.error(`insert attempt ${attempt}: ${failure}; retrying`);
    await new Promise((r) => setTimeout(r, 2000));
  }
})();'
  kc exec "${SHARD_PODS[0]}" -c chorus -- node -e "$script" -- "$SHARD_CLIENT_URL" "$table" "default:$SHARD_CH_PASSWORD" "$rows" "$token"
}

# "count<TAB>checksum" of a table on one replica, read from its own ClickHouse.
# Usage: replica_digest POD TABLE
replica_digest() {
  local pod=$1 table=$2
  load_clickhouse_password
  kc exec "$pod" -c clickhouse -- clickhouse-client --password "$SHARD_CH_PASSWORD" \
    -q "SELECT count(), sum(cityHash64(id, payload)) FROM $table"
}

# Waits until every replica of the shard holds the same rows, EXPECTED_COUNT of them.
# Usage: wait_for_convergence TABLE EXPECTED_COUNT [TIMEOUT_SECONDS]
wait_for_convergence() {
  local table=$1 expected=$2 timeout=${3:-180}
  local deadline=$((SECONDS + timeout)) pod digest digests
  while :; do
    digests=()
    for pod in "${SHARD_PODS[@]}"; do
      digest=$(replica_digest "$pod" "$table" 2>/dev/null) || digest="unreachable"
      digests+=("$pod=${digest//$'\t'/ }")
    done
    local first=${digests[0]#*=} same=1
    for digest in "${digests[@]}"; do [ "${digest#*=}" = "$first" ] || same=0; done
    if [ "$same" = 1 ] && [ "${first%% *}" = "$expected" ]; then
      k8s_log "converged: ${digests[*]}"
      return 0
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      k8s_fail "replicas did not converge to $expected rows of $table within ${timeout}s (count checksum): ${digests[*]}"
    fi
    sleep 3
  done
}

# The shard's znodes: its root and everything under it, one path a line.
shard_znodes() {
  local listing
  listing=$(kc exec "$ZOOKEEPER_POD" -c zookeeper -- zkCli.sh -server "127.0.0.1:$ZOOKEEPER_CLIENT_PORT" ls -R /chorus 2>&1) ||
    k8s_fail "zkCli.sh ls -R /chorus failed in $ZOOKEEPER_POD: $listing"
  # zkCli prints its connection chatter on the same stream; only paths start with the root.
  printf '%s\n' "$listing" | tr -d '\r' | awk -v root="$SHARD_ZNODE_ROOT" '$0 == root || index($0, root "/") == 1'
}

# Chorus's promise: a handful of znodes per shard, whatever the inserts, parts or tables.
# Usage: check_shard_znodes MAX
check_shard_znodes() {
  local max=$1 znodes count
  znodes=$(shard_znodes)
  count=$(printf '%s' "$znodes" | grep -c '' || true)
  k8s_log "znodes of the shard ($count):"
  printf '%s\n' "$znodes" | sed 's/^/  /' >&2
  [ "$count" -gt 0 ] || k8s_fail "no znode under $SHARD_ZNODE_ROOT: Chorus allocated nothing there (another zookeeper.root?)"
  [ "$count" -le "$max" ] || k8s_fail "$count znodes under $SHARD_ZNODE_ROOT, more than $max"
}

# `chorus status` from inside a sidecar, with the pod's own certificate and token. Exit 3
# (a member not ready yet) is retried until the deadline.
# Usage: wait_for_chorus_status [TIMEOUT_SECONDS]
wait_for_chorus_status() {
  local timeout=${1:-60} deadline output
  deadline=$((SECONDS + timeout))
  until output=$(kc exec "${SHARD_PODS[0]}" -c chorus -- chorus status 2>&1); do
    [ "$SECONDS" -lt "$deadline" ] || k8s_fail "chorus status did not exit 0 within ${timeout}s: $output"
    sleep 3
  done
  printf '%s\n' "$output" >&2
}

# What a failed run leaves to read: the pods, why the unready ones are unready, the events
# and the last lines of every container.
dump_diagnostics() {
  k8s_log "diagnostics of namespace $K8S_NAMESPACE"
  # On stderr with the run's own log, so that the two keep their order in a CI log.
  {
    kc get pods -o wide || true
    local pod ready phase container
    while read -r pod phase ready; do
      [ -n "$pod" ] || continue
      if [ "$phase" != Succeeded ] && [ "$ready" != True ]; then
        echo "--- describe pod $pod ($phase)"
        kc describe pod "$pod" || true
      fi
      for container in $(kc get pod "$pod" -o jsonpath='{.spec.initContainers[*].name} {.spec.containers[*].name}'); do
        echo "--- logs $pod -c $container"
        kc logs "$pod" -c "$container" --tail=80 || true
        if kc logs "$pod" -c "$container" --previous --tail=1 >/dev/null 2>&1; then
          echo "--- logs $pod -c $container (previous run)"
          kc logs "$pod" -c "$container" --previous --tail=80 || true
        fi
      done
    done < <(kc get pods -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.status.phase}{" "}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' || true)
    echo "--- events"
    kc get events --sort-by=.lastTimestamp 2>/dev/null | tail -n 40 || true
  } >&2
}
