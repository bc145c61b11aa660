#!/usr/bin/env bash
# Starts (up) or stops (down) three flotilla nodes on 127.0.0.1, ports 7443-7445, data in $UP_DIR.
# Until `flotilla up` (network namespaces) lands, this is how `make up` runs a local cluster.
set -euo pipefail
dir="${UP_DIR:-$PWD/.flotilla}"
bin="${FLOTILLA_BIN:-flotilla}"

stop() {
  for pidfile in "$dir"/n*.pid; do
    [ -e "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  done
}

start_node() {
  local i=$1; shift
  "$bin" node --name "n$i" --data-dir "$dir/n$i" --advertise 127.0.0.1 --peer-port $((7442 + i)) "$@" \
    >"$dir/n$i.out" 2>"$dir/n$i.log" &
  echo $! >"$dir/n$i.pid"
  # Wait for its ready line.
  for _ in $(seq 300); do
    grep -q '"event":"ready"' "$dir/n$i.out" 2>/dev/null && return 0
    kill -0 "$(cat "$dir/n$i.pid")" 2>/dev/null || { echo "node n$i failed:"; tail -5 "$dir/n$i.log"; exit 1; }
    sleep 0.1
  done
  echo "node n$i did not become ready; see $dir/n$i.log"; exit 1
}

case "${1:-up}" in
  up)
    mkdir -p "$dir"
    stop
    start_node 1
    # The bootstrap node writes its first join token (valid 24 h) and the admin kubeconfig.
    token=$(cat "$dir/n1/join-token")
    start_node 2 --join 127.0.0.1:7443 --token "$token"
    start_node 3 --join 127.0.0.1:7443 --token "$token"
    cat <<MSG
Flotilla is running: three nodes on 127.0.0.1, peer ports 7443, 7444, 7445.
  data and logs:  $dir  (n1.log, n2.log, n3.log)
  admin:          export KUBECONFIG=$dir/n1/admin.kubeconfig
  join tokens:    $bin token create | list | revoke ID
  stop it:        make down
MSG
    ;;
  down)
    stop
    echo "stopped; data kept in $dir (remove it to start afresh)"
    ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
