# shellcheck shell=bash
# The chaos suite's hands inside a Kubernetes cluster (test/chaos/kind-backend.ts runs it; its
# commands are built by kind-plan.ts). Not run on this machine: its text is the script of
#
#   kubectl exec POD -c chorus -- bash -c "$SCRIPT" kind-agent signal-sidecar SIGNAL
#       in a replica's chorus container, as the sidecar's own user;
#   kubectl exec AGENT -- chroot /host bash -c "$SCRIPT" kind-agent OP ARGS...
#       in the chaos agent pod of a node (privileged, the node's PIDs and network, the node's
#       root filesystem at /host): chroot /host runs the node's own bash, nsenter, iptables,
#       tc and ip, whatever image the agent runs.
#
# Ops:
#   signal-sidecar SIGNAL        the sidecar's node process (the child of tini, PID 1)
#   kill-container CONTAINER_ID  SIGKILL to a container's first process, from the node
#   drop POD_UID RULE...         iptables -A CHORUS-CHAOS RULE -j DROP in the pod's network namespace
#   undrop POD_UID RULE...       the same rule removed; nothing to do when it, or the pod, is gone
#   shape POD_UID QDISC...       QDISC (tbf ...) as root qdisc of the pod's interface and of its
#                                veth peer on the node: both directions
#   unshape POD_UID              those tbf qdiscs removed
#   clear POD_UID                every drop and every tbf of the pod removed
#
# Why from the node: a container's first process ignores SIGKILL sent from inside its own PID
# namespace (ClickHouse's and ZooKeeper's are the server itself), and the pods run as non-root
# users without NET_ADMIN and without iptables or tc in their images.
set -euo pipefail

CHAIN=CHORUS-CHAOS

fail() {
  echo "kind-agent: $*" >&2
  exit 1
}

# The processes whose parent is PID 1. Under tini that is the sidecar alone: processes that
# kubectl exec starts have parent 0 in the container's PID namespace.
sidecar_pids() {
  local stat line fields pid
  for stat in /proc/[0-9]*/stat; do
    { read -r line <"$stat"; } 2>/dev/null || continue
    # After the command name, which may hold spaces or parentheses: state, ppid, ...
    read -r -a fields <<<"${line##*) }"
    if [ "${fields[1]:-}" = 1 ]; then
      pid=${stat#/proc/}
      echo "${pid%/stat}"
    fi
  done
}

# The first process of a container (PID 1 in its namespace), on this node.
container_init_pid() {
  local id=$1 dir key rest
  for dir in /proc/[0-9]*; do
    grep -qF "$id" "$dir/cgroup" 2>/dev/null || continue
    while read -r key rest; do
      # NSpid: its PID in each namespace from the node's down; the last is its own namespace's.
      if [ "$key" = NSpid: ] && [[ "$rest" =~ (^|[[:space:]])1$ ]]; then
        echo "${dir#/proc/}"
        return 0
      fi
    done <"$dir/status" 2>/dev/null || true
  done
  return 1
}

# A process of the pod (any: its containers share one network namespace). The pod's cgroup
# holds its UID, with dashes (cgroupfs driver) or underscores (systemd driver).
pod_pid() {
  local uid=$1 cgroup pid
  for cgroup in /proc/[0-9]*/cgroup; do
    if grep -qF -e "pod$uid" -e "pod${uid//-/_}" "$cgroup" 2>/dev/null; then
      pid=${cgroup#/proc/}
      echo "${pid%/cgroup}"
      return 0
    fi
  done
  return 1
}

# Runs a command in the network namespace of a pod's process, or in the node's ("node": the
# agent's own, since it runs with hostNetwork).
in_netns() {
  local where=$1
  shift
  if [ "$where" = node ]; then
    "$@"
  else
    nsenter --net="/proc/$where/ns/net" -- "$@"
  fi
}

ensure_chain() {
  local pid=$1
  in_netns "$pid" iptables -w -N "$CHAIN" 2>/dev/null || true
  in_netns "$pid" iptables -w -C INPUT -j "$CHAIN" 2>/dev/null || in_netns "$pid" iptables -w -I INPUT -j "$CHAIN"
}

# The pod's interface (the one its default route leaves by) and its veth peer on the node.
pod_interface() {
  in_netns "$1" ip -o route show default | sed -n 's/.* dev \([^ ]*\).*/\1/p' | head -n 1
}
node_peer_interface() {
  local pid=$1 interface=$2 index
  # "2: eth0@if12: <...>": the peer's index on the node is 12.
  index=$(in_netns "$pid" ip -o link show dev "$interface" | sed -n 's/^[0-9]*: [^@]*@if\([0-9]*\):.*/\1/p')
  [ -n "$index" ] || return 1
  in_netns node ip -o link show | sed -n "s/^$index: \\([^@:]*\\).*/\\1/p"
}

# Deletes the root qdisc of an interface if it is a tbf (this agent's), never another one.
remove_tbf() {
  local pid=$1 interface=$2
  if in_netns "$pid" tc qdisc show dev "$interface" root | grep -q '^qdisc tbf'; then
    in_netns "$pid" tc qdisc del dev "$interface" root
  fi
}

op=${1:-}
[ $# -eq 0 ] || shift
case "$op" in
  signal-sidecar)
    signal=${1:?signal-sidecar SIGNAL}
    pids=$(sidecar_pids)
    [ -n "$pids" ] || fail "no sidecar process (no child of PID 1) in this container"
    # shellcheck disable=SC2086 # one argument per pid
    kill -s "$signal" $pids
    echo "sent SIG$signal to $pids"
    ;;
  kill-container)
    id=${1:?kill-container CONTAINER_ID}
    pid=$(container_init_pid "$id") || fail "container $id has no process on this node"
    kill -s KILL "$pid"
    echo "killed $pid, the first process of container $id"
    ;;
  drop)
    uid=${1:?drop POD_UID RULE...}
    shift
    pid=$(pod_pid "$uid") || fail "pod $uid has no process on this node"
    ensure_chain "$pid"
    in_netns "$pid" iptables -w -A "$CHAIN" "$@" -j DROP
    ;;
  undrop)
    uid=${1:?undrop POD_UID RULE...}
    shift
    # A pod made again since has a new UID and a fresh network namespace: nothing to undo.
    pid=$(pod_pid "$uid") || exit 0
    in_netns "$pid" iptables -w -D "$CHAIN" "$@" -j DROP 2>/dev/null || true
    ;;
  shape)
    uid=${1:?shape POD_UID QDISC...}
    shift
    pid=$(pod_pid "$uid") || fail "pod $uid has no process on this node"
    interface=$(pod_interface "$pid")
    [ -n "$interface" ] || fail "pod $uid has no default route"
    peer=$(node_peer_interface "$pid" "$interface") || fail "no veth peer of $interface of pod $uid on this node"
    [ -n "$peer" ] || fail "no veth peer of $interface of pod $uid on this node"
    in_netns "$pid" tc qdisc replace dev "$interface" root "$@"
    in_netns node tc qdisc replace dev "$peer" root "$@"
    ;;
  unshape | clear)
    uid=${1:?$op POD_UID}
    pid=$(pod_pid "$uid") || exit 0
    [ "$op" = unshape ] || in_netns "$pid" iptables -w -F "$CHAIN" 2>/dev/null || true
    interface=$(pod_interface "$pid")
    if [ -n "$interface" ]; then
      remove_tbf "$pid" "$interface"
      if peer=$(node_peer_interface "$pid" "$interface") && [ -n "$peer" ]; then remove_tbf node "$peer"; fi
    fi
    ;;
  *)
    fail "unknown op '$op' (signal-sidecar, kill-container, drop, undrop, shape, unshape, clear)"
    ;;
esac
