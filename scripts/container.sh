#!/usr/bin/env bash
# `make container`: build the bento and its image, run it on 127.0.0.1, check /readyz and a PNG from /generate, stop it.
# Works offline from container registries (shared/design/containers.md): with no Docker daemon it uses podman and,
# when python:3.11-slim cannot be had, builds a stand-in for it from Debian's packages with debootstrap.
set -euo pipefail

BIN=${BIN:-.venv/bin}
TOOLS_BIN=${TOOLS_BIN:-.tools/bin}  # hadolint and syft (make tools)
TAG=${TAG:-ganserve:latest}
MAX_MB=${MAX_MB:-600}  # the serving image's budget: no torch, no compiler
BENTOFILE=${BENTOFILE:-bentofile.yaml}  # make container-gpu: bentofile.gpu.yaml (checked here on the CPU provider)
PORT=${PORT:-3300}
BASE=docker.io/library/python:3.11-slim
NAME=ganserve-check-$$

say() { printf '\n== %s\n' "$*"; }
need_root() { [ "$(id -u)" = 0 ] || { echo "error: $1 needs root (or install it yourself)" >&2; exit 1; }; }

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  ENGINE=docker
else
  ENGINE=podman
  if ! command -v podman >/dev/null 2>&1; then
    need_root "installing podman"
    say "installing podman, buildah, debootstrap and runc from Debian"
    apt-get install -y -q podman buildah debootstrap runc >/dev/null
  fi
fi

if ! $ENGINE image exists "$BASE" 2>/dev/null && ! $ENGINE image inspect "$BASE" >/dev/null 2>&1; then
  if ! timeout 60 $ENGINE pull -q "$BASE" >/dev/null 2>&1; then
    say "no registry in reach: building a stand-in for $BASE from Debian bookworm"
    need_root "debootstrap"
    command -v debootstrap >/dev/null || apt-get install -y -q debootstrap >/dev/null
    mirror=$({ grep -rhoE '(URIs: |deb )https?://[^ ]*debian/?' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
             || true; } | grep -v security | head -1 | awk '{print $2}')
    rootfs=$(mktemp -d)
    trap 'rm -rf "$rootfs"' EXIT
    debootstrap --variant=minbase bookworm "$rootfs" "${mirror:-http://deb.debian.org/debian}" >/dev/null
    # as Debian's own slim images: no downloaded packages, no package lists, no docs, man pages or locales
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
      "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/*
    printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
      'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' 'path-exclude /usr/share/locale/*' \
      > "$rootfs/etc/dpkg/dpkg.cfg.d/slim"
    tar -C "$rootfs" -c . | $ENGINE import - localhost/debian-base:bookworm >/dev/null
    context=$(mktemp -d)
    # The host's extra CAs (an egress proxy's) must be trusted inside, or pip fails with CERTIFICATE_VERIFY_FAILED.
    cp /usr/local/share/ca-certificates/*.crt "$context/" 2>/dev/null || true
    cat > "$context/Containerfile" <<'DOCKERFILE'
FROM localhost/debian-base:bookworm
COPY *.crt /usr/local/share/ca-certificates/
RUN apt-get update -q && apt-get install -y -q --no-install-recommends python3 python3-pip python3-venv ca-certificates \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /usr/lib/python3.11/EXTERNALLY-MANAGED \
 && ln -sf /usr/bin/python3 /usr/local/bin/python && ln -sf /usr/bin/pip3 /usr/local/bin/pip && update-ca-certificates
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
DOCKERFILE
    [ -n "$(ls "$context"/*.crt 2>/dev/null)" ] || touch "$context/none.crt"
    $ENGINE build -q -t "$BASE" -f "$context/Containerfile" "$context" >/dev/null
    rm -rf "$context"
  fi
fi

if [ "$ENGINE" = podman ] && ! podman run --rm "$BASE" true >/dev/null 2>&1; then
  # root in this sandbox cannot raise rlimits and cgroups are hybrid: podman's defaults fail until told so.
  need_root "configuring podman"
  say "podman cannot run containers with its defaults here: writing /etc/containers/containers.conf"
  mkdir -p /etc/containers
  cat > /etc/containers/containers.conf <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
CONF
  podman run --rm "$BASE" true >/dev/null
fi

say "importing the shipped default model if there is no production model"
"$BIN/ganserve" import models/default --promote-if-empty

say "building the bento"
bento=$("$BIN/bentoml" build -f "$BENTOFILE" -o tag | tail -1 | sed 's/^__tag__://')
echo "$bento"

say "linting the bento's Dockerfile with hadolint"
"$TOOLS_BIN/hadolint" --config deploy/hadolint.yaml "$("$BIN/bentoml" get "$bento" -o path)/env/docker/Dockerfile"

say "building the image $TAG with $ENGINE"
version=$("$BIN/python" -c 'import importlib.metadata as m; print(m.version("ganserve"))')
# BentoML re-renders docker.dockerfile_template inside a temporary build context and refuses a template outside the
# working directory: the context must lie under it (and on no hidden path), so TMPDIR does.
mkdir -p build/tmp
format=()
[ "$ENGINE" = podman ] && format=(--opt format=docker)  # OCI images drop HEALTHCHECK
TMPDIR="$PWD/build/tmp" "$BIN/bentoml" containerize --backend "$ENGINE" -t "$TAG" "$bento" "${format[@]}" \
  --opt "label=org.opencontainers.image.version=$version" \
  --opt "label=org.opencontainers.image.revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
  --opt "label=org.opencontainers.image.created=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
mb=$(( $($ENGINE image inspect --format '{{.Size}}' "$TAG") / 1000000 ))
health=$($ENGINE image inspect --format '{{json .Config.Healthcheck}}' "$TAG")
[ "$health" != null ] || { echo "error: $TAG has no HEALTHCHECK" >&2; exit 1; }
compilers=$($ENGINE run --rm --entrypoint sh "$TAG" -c 'command -v gcc cc c++ g++ || true')
echo "image $TAG: $mb MB (budget $MAX_MB MB); compilers: ${compilers:-none}"
[ "$mb" -le "$MAX_MB" ] || { echo "error: $TAG is $mb MB, over its $MAX_MB MB budget" >&2; exit 1; }
[ -z "$compilers" ] || { echo "error: $TAG carries a compiler: $compilers" >&2; exit 1; }

say "writing its SBOM with syft"
ENGINE=$ENGINE TOOLS_BIN=$TOOLS_BIN BIN=$BIN bash scripts/sbom.sh "$TAG"

say "running it on 127.0.0.1:$PORT"
$ENGINE run -d --name "$NAME" -p "127.0.0.1:$PORT:3000" "$TAG" >/dev/null
cleanup() { $ENGINE stop -t 3 "$NAME" >/dev/null 2>&1 || true; $ENGINE rm -f "$NAME" >/dev/null 2>&1 || true; }
trap cleanup EXIT
for _ in $(seq 1 60); do
  curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
  sleep 1
done
curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null || { $ENGINE logs "$NAME" | tail -30; echo "error: not ready" >&2; exit 1; }
out=$(mktemp)
status=$(curl -sS -X POST "http://127.0.0.1:$PORT/generate" -H 'content-type: application/json' \
  -d '{"n": 16, "seed": 7}' -D "$out.headers" -o "$out" -w '%{http_code}')
if [ "$status" != 200 ] || ! head -c 8 "$out" | od -An -tx1 | grep -q '89 50 4e 47 0d 0a 1a 0a'; then
  echo "error: /generate answered $status, not a PNG: $(head -c 300 "$out")" >&2
  exit 1
fi
echo "PNG from the container: $(wc -c < "$out") bytes, $(grep -i x-model-version "$out.headers" | tr -d '\r')"
# every line the bento packed answers, with its own model
lines=$(curl -fsS "http://127.0.0.1:$PORT/info" | "$BIN/python" -c 'import json, sys; print(*json.load(sys.stdin)["models"])')
for line in $lines; do
  status=$(curl -sS -X POST "http://127.0.0.1:$PORT/generate" -H 'content-type: application/json' \
    -d "{\"model\": \"$line\", \"format\": \"webp\"}" -D "$out.headers" -o "$out" -w '%{http_code}')
  [ "$status" = 200 ] || { echo "error: /generate for line $line answered $status: $(head -c 300 "$out")" >&2; exit 1; }
  echo "line $line: $(grep -i x-model-version "$out.headers" | tr -d '\r'), $(wc -c < "$out") bytes of WebP"
done
# rejection sampling, where the default line's model carries its discriminator
if curl -fsS "http://127.0.0.1:$PORT/info" | "$BIN/python" -c 'import json, sys; sys.exit(not json.load(sys.stdin)["discriminator"])'; then
  status=$(curl -sS -X POST "http://127.0.0.1:$PORT/generate" -H 'content-type: application/json' \
    -d '{"n": 4, "seed": 7, "sampler": "drs"}' -D "$out.headers" -o "$out" -w '%{http_code}')
  if [ "$status" != 200 ] || ! grep -qi '^x-sampler: drs' "$out.headers"; then
    echo "error: /generate with sampler drs answered $status: $(head -c 300 "$out")" >&2
    exit 1
  fi
  echo "DRS from the container: $(grep -i x-drs-candidates "$out.headers" | tr -d '\r')"
fi
rm -f "$out" "$out.headers"
say "container OK: $TAG"
