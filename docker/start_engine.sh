#!/usr/bin/env bash
# Start a Docker engine and a loopback image registry on this machine, idempotently.
# Installs docker.io + docker-registry (Debian 12) when missing, starts what is not running,
# waits (bounded) until both answer, prints their status. Run as root; CI calls it.
#
# Environment:
#   MLOPS_REGISTRY_PORT   registry port on 127.0.0.1 (default 5001)
#   MLOPS_ENGINE_STATE    logs + registry storage (default /var/lib/mlops-engine)
#   MLOPS_ENGINE_WAIT_S   how long to wait for each service (default 60)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REGISTRY_PORT="${MLOPS_REGISTRY_PORT:-5001}"
STATE="${MLOPS_ENGINE_STATE:-/var/lib/mlops-engine}"
WAIT_S="${MLOPS_ENGINE_WAIT_S:-60}"
SOCK=/var/run/docker.sock

if [[ $(id -u) -ne 0 ]]; then
  echo "start_engine.sh: must run as root (it starts dockerd)" >&2
  exit 1
fi

# /usr/local/bin/docker may be a newer client than Debian's; either talks to this engine.
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v curl >/dev/null || need+=(curl)
if ((${#need[@]})); then
  echo "installing: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

mkdir -p "$STATE/registry"

wait_for() { # name, command...
  local name=$1; shift
  local deadline=$((SECONDS + WAIT_S))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      echo "start_engine.sh: $name did not answer within ${WAIT_S}s; see $STATE/$name.log:" >&2
      tail -n 20 "$STATE/$name.log" >&2 || true
      exit 1
    fi
    sleep 0.5
  done
}

engine_up() { docker -H "unix://$SOCK" version --format '{{.Server.Version}}'; }
registry_up() { curl -fsS --max-time 5 "http://127.0.0.1:$REGISTRY_PORT/v2/"; }

if engine_up >/dev/null 2>&1; then
  echo "dockerd: already running"
else
  # containerd is started by dockerd itself when no system containerd socket answers.
  # --no-new-privileges: engines before API 1.46 cannot set it per Swarm service (serving, swarm.py)
  echo "dockerd: starting (log: $STATE/dockerd.log)"
  setsid nohup dockerd --host "unix://$SOCK" --no-new-privileges >"$STATE/dockerd.log" 2>&1 </dev/null &
  echo $! >"$STATE/dockerd.pid"
  wait_for dockerd engine_up
fi

if registry_up >/dev/null 2>&1; then
  echo "registry: already running on 127.0.0.1:$REGISTRY_PORT"
else
  # a port held by something that is not a registry would only time out after WAIT_S: name it now
  owner=$(ss -Hltnp "sport = :$REGISTRY_PORT" 2>/dev/null || true)
  if [[ -n $owner ]]; then
    echo "start_engine.sh: 127.0.0.1:$REGISTRY_PORT is taken by something that is not an image registry:" >&2
    echo "  $owner" >&2
    echo "  stop it, or set MLOPS_REGISTRY_PORT and docker_default's extra.registry to another port" >&2
    exit 1
  fi
  echo "registry: starting on 127.0.0.1:$REGISTRY_PORT (log: $STATE/registry.log)"
  REGISTRY_HTTP_ADDR="127.0.0.1:$REGISTRY_PORT" \
  REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY="$STATE/registry" \
    setsid nohup docker-registry serve "$HERE/registry.yml" >"$STATE/registry.log" 2>&1 </dev/null &
  echo $! >"$STATE/registry.pid"
  wait_for registry registry_up
fi

# the docker profile serves on Swarm services (include/mlops/deploy/swarm.py): a one-node swarm with
# its control plane (2377) and gossip (7946) on loopback, and no routing mesh: serving publishes no
# port, so the ingress overlay (VXLAN on 0.0.0.0:4789) is removed. An active swarm is left as it is.
swarm_state=$(docker -H "unix://$SOCK" info --format '{{.Swarm.LocalNodeState}}')
if [[ $swarm_state == active ]]; then
  echo "swarm: already active"
else
  docker -H "unix://$SOCK" swarm init --advertise-addr 127.0.0.1 --listen-addr 127.0.0.1:2377 >/dev/null
  echo y | docker -H "unix://$SOCK" network rm ingress >/dev/null
  echo "swarm: initialised (one manager node on 127.0.0.1:2377, no ingress network)"
fi

echo "engine: $(engine_up) ($(docker -H "unix://$SOCK" info --format '{{.Driver}}') storage driver) at unix://$SOCK"
echo "registry: http://127.0.0.1:$REGISTRY_PORT/v2/ answers"
