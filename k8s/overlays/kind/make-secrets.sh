#!/usr/bin/env bash
# Writes every file the kind overlay's secretGenerator reads: a dev CA, a certificate per
# replica pod (CN and DNS SAN = the pod name), the admin token, ZooKeeper digest credentials
# and ClickHouse's password.
#
# Usage: make-secrets.sh [--force] [DIR]
#   DIR      where to write (default: secrets/ beside this script, which the overlay reads)
#   --force  regenerate everything, even files that are present and valid
#   REPLICA_PODS (env) the pods to issue certificates for
#                (default: clickhouse-shard1-0 clickhouse-shard1-1 clickhouse-shard1-2)
#
# Files that are present and valid are kept, so running it again after an apply leaves the
# Secrets as they are (kustomize names them by content: a new value would roll every pod).
set -euo pipefail

script_path=${BASH_SOURCE[0]}
[[ "$script_path" == */* ]] || script_path=./$script_path
script_dir=$(cd "${script_path%/*}" && pwd)
repo_root=$(cd "$script_dir/../../.." && pwd)

force=0
dir=""
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    -h | --help)
      echo "usage: make-secrets.sh [--force] [DIR]   (REPLICA_PODS: the pods to issue certificates for)"
      exit 0
      ;;
    -*)
      echo "make-secrets.sh: unknown option $arg (usage: make-secrets.sh [--force] [DIR])" >&2
      exit 2
      ;;
    *)
      if [ -n "$dir" ]; then
        echo "make-secrets.sh: one DIR only (usage: make-secrets.sh [--force] [DIR])" >&2
        exit 2
      fi
      dir=$arg
      ;;
  esac
done
dir=${dir:-$script_dir/secrets}
read -r -a replica_pods <<<"${REPLICA_PODS:-clickhouse-shard1-0 clickhouse-shard1-1 clickhouse-shard1-2}"
if [ "${#replica_pods[@]}" -eq 0 ]; then
  echo "make-secrets.sh: REPLICA_PODS is empty: name at least one pod" >&2
  exit 2
fi
for pod in "${replica_pods[@]}"; do
  # Pod names become file names in DIR: nothing that could point elsewhere.
  if ! [[ "$pod" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || [ "$pod" = ca ]; then
    echo "make-secrets.sh: REPLICA_PODS: '$pod' is not a pod name" >&2
    exit 2
  fi
done

say() { echo "make-secrets.sh: $*" >&2; }
fail() {
  say "$*"
  exit 1
}

# Secrets hold keys and passwords: nothing here is for other users.
umask 077
mkdir -p "$dir"

chorus_cli="$repo_root/bin/chorus.js"
if [ ! -f "$repo_root/dist/cli/main.js" ]; then
  say "dist/ is missing: building Chorus (npm run build)"
  (cd "$repo_root" && npm run --silent build) >&2 ||
    fail "building Chorus failed: run 'npm ci && npm run build' in $repo_root, then run this again"
fi

# A random value with no trailing newline: the file's bytes are the Secret's value.
write_random_secret() {
  local file=$1 prefix=${2:-} value
  if [ "$force" = 0 ] && [ -s "$dir/$file" ]; then
    return
  fi
  value=$(openssl rand -hex 24)
  # Written beside and renamed, so that an interrupted run leaves no empty file to be kept.
  printf %s "$prefix$value" >"$dir/$file.new"
  mv -f "$dir/$file.new" "$dir/$file"
  say "wrote $dir/$file"
}

# A certificate is kept while it is signed by the CA in DIR and valid for at least a day.
certificate_usable() {
  local name=$1
  [ -s "$dir/$name.crt" ] && [ -s "$dir/$name.key" ] &&
    openssl verify -CAfile "$dir/ca.crt" "$dir/$name.crt" >/dev/null 2>&1 &&
    openssl x509 -checkend 86400 -noout -in "$dir/$name.crt" >/dev/null 2>&1
}

ca_usable() {
  [ -s "$dir/ca.crt" ] && [ -s "$dir/ca.key" ] &&
    openssl x509 -checkend 86400 -noout -in "$dir/ca.crt" >/dev/null 2>&1
}

if [ "$force" = 1 ] || ! ca_usable; then
  # A new CA: every certificate signed by the old one must go too.
  rm -f "$dir/ca.crt" "$dir/ca.key"
  for pod in "${replica_pods[@]}"; do rm -f "$dir/$pod.crt" "$dir/$pod.key"; done
fi

to_issue=()
for pod in "${replica_pods[@]}"; do
  certificate_usable "$pod" || to_issue+=("$pod")
done
if [ "${#to_issue[@]}" -gt 0 ]; then
  node "$chorus_cli" dev certs --dir "$dir" "${to_issue[@]}" >&2 ||
    fail "chorus dev certs failed (is dist/ older than the source? run 'npm run build' in $repo_root)"
fi

write_random_secret admin-token
write_random_secret zookeeper-auth "chorus:"
write_random_secret clickhouse-password

say "secrets ready in $dir"
