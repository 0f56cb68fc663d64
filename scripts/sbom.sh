#!/usr/bin/env bash
# scripts/sbom.sh IMAGE: write IMAGE's SBOM (SPDX JSON) to build/sbom/<name>.spdx.json with syft, offline: syft reads
# the image from an archive podman (or docker) saves, no registry or daemon socket needed.
set -euo pipefail
ENGINE=${ENGINE:-podman}
TOOLS_BIN=${TOOLS_BIN:-.tools/bin}  # make tools
BIN=${BIN:-.venv/bin}
image=$1
name=${image##*/}
out="build/sbom/${name%%:*}.spdx.json"
mkdir -p build/sbom
archive=$(mktemp -u).tar
trap 'rm -f "$archive"' EXIT
$ENGINE save -q -o "$archive" "$image"
"$TOOLS_BIN/syft" -q "docker-archive:$archive" -o "spdx-json=$out"
echo "$out: $("$BIN/python" -c 'import json, sys; print(len(json.load(open(sys.argv[1]))["packages"]))' "$out") packages"
