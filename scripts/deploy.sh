#!/usr/bin/env bash
# make deploy-up / deploy-retrain / deploy-down: ganserve on this host with podman-compose (deploy/compose.yaml).
#   up       build the images that are missing, start the replicas and the balancer on 127.0.0.1:$DEPLOY_PORT,
#            wait until the balancer serves images
#   retrain  run the retrain job once against the shared store; its arguments are the job's (`ganserve ...`)
#   down     remove every container and network it started (the store's volume too with DEPLOY_KEEP_STORE=0)
#   images   (re)build the job and balancer images (the serving one: make container); each build writes its SBOM
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-.venv/bin}
TORCH=${TORCH:-torch==2.13.0}
PROJECT=${DEPLOY_PROJECT:-ganserve}
export DEPLOY_PORT=${DEPLOY_PORT:-8080}
COMPOSE=(podman-compose -p "$PROJECT" -f deploy/compose.yaml)

say() { printf '\n== %s\n' "$*"; }

compose_tool() {
  command -v podman-compose >/dev/null 2>&1 && return
  [ "$(id -u)" = 0 ] || { echo "error: podman-compose is missing: apt-get install -y podman-compose" >&2; exit 1; }
  say "installing podman-compose from Debian"
  apt-get install -y -q podman-compose >/dev/null
}

images() {
  # the serving image, and with it podman and the Debian base the other two are built on
  podman image exists localhost/ganserve:latest 2>/dev/null || BIN=$BIN bash scripts/container.sh
  if [ "${1:-}" = all ] || ! podman image exists localhost/ganserve-job:latest; then
    say "building the job image (torch for the CPU, the training package)"
    rm -rf build/wheels && mkdir -p build/wheels
    # the torch wheel and its dependencies as this host's pip finds them (here: the CPU wheel on disk)
    "$BIN/pip" download -q -d build/wheels "$TORCH" || echo "no local torch wheel: the build uses PyTorch's CPU index"
    podman build -q --format docker -f deploy/job.Containerfile -t localhost/ganserve-job:latest . >/dev/null
    BIN=$BIN bash scripts/sbom.sh localhost/ganserve-job:latest
  fi
  if [ "${1:-}" = all ] || ! podman image exists localhost/ganserve-balancer:latest; then
    say "building the balancer image (Debian's haproxy)"
    podman build -q --format docker -f deploy/balancer.Containerfile -t localhost/ganserve-balancer:latest . >/dev/null
    BIN=$BIN bash scripts/sbom.sh localhost/ganserve-balancer:latest
  fi
  podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'localhost/ganserve(-job|-balancer)?:latest'
}

up() {
  compose_tool
  images
  say "seeding the shared store with the shipped default model if it has no production"
  "${COMPOSE[@]}" run --rm --no-deps retrain import models/default --promote-if-empty 2>/dev/null | tail -1
  say "starting the replicas and the balancer on 127.0.0.1:$DEPLOY_PORT"
  "${COMPOSE[@]}" up -d serve balancer >build/deploy-up.log 2>&1 || { tail -20 build/deploy-up.log; exit 1; }
  for _ in $(seq 1 90); do
    if curl -fsS -o /dev/null -X POST "http://127.0.0.1:$DEPLOY_PORT/generate" -H 'content-type: application/json' \
         -d '{"n": 1, "seed": 0}' 2>/dev/null; then
      echo "serving on http://127.0.0.1:$DEPLOY_PORT ($(podman ps -q --filter "label=ganserve.role=serve" \
        --filter "label=io.podman.compose.project=$PROJECT" | wc -l) replicas)"
      return
    fi
    sleep 1
  done
  "${COMPOSE[@]}" logs --tail 20 2>&1 | tail -40
  echo "error: the balancer on 127.0.0.1:$DEPLOY_PORT served no image within 90 s" >&2
  exit 1
}

retrain() {
  compose_tool
  images
  "${COMPOSE[@]}" run --rm --no-deps retrain "$@"
}

down() {
  compose_tool
  if [ "${DEPLOY_KEEP_STORE:-1}" = 0 ]; then "${COMPOSE[@]}" down -v >/dev/null; else "${COMPOSE[@]}" down >/dev/null; fi
  left=$(podman ps -aq --filter "label=io.podman.compose.project=$PROJECT")
  [ -z "$left" ] || podman rm -f $left >/dev/null
  echo "down: no container of $PROJECT left"
}

case "${1:-}" in
  up) up ;;
  retrain) shift; retrain "$@" ;;
  down) down ;;
  images) images all ;;
  *) echo "usage: $0 up | retrain [ARGS...] | down | images" >&2; exit 2 ;;
esac
