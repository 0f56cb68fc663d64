"""The Kubernetes manifests in deploy/k8s: valid for the API server, strictly, and clean under checkov's checks.

Both tools live in the tools venv that ``make tools`` (and so ``make test``) installs; deploy/checkov.yaml
names the checks left out, with the reason for each.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
TOOLS = Path(os.environ.get("GANSERVE_TOOLS", ROOT / ".tools")) / "bin"


def _tool(name: str) -> str:
    path = TOOLS / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make tools` (deploy/tools.txt)")
    return str(path)


def _manifests() -> list[Path]:
    return sorted(K8S.glob("*.yaml"))


def _resources() -> list[dict]:
    return [doc for path in _manifests() for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_manifests_validate_strictly():
    done = subprocess.run([_tool("kubernetes-validate"), "--strict", *map(str, _manifests())],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("passed for resource") == len(_resources())


def test_manifests_pass_checkov():
    done = subprocess.run(
        [_tool("checkov"), "-d", str(K8S), "--config-file", str(K8S.parent / "checkov.yaml"), "--compact", "--quiet",
         "--skip-download"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "Failed checks: 0" in done.stdout


def test_every_workload_is_non_root_read_only_and_labelled():
    """What checkov checks per container, and what it cannot know: the role label the balancer and the
    operators select by, and the store mounted where each container reads and writes it."""
    kinds = {}
    for doc in _resources():
        kinds.setdefault(doc["kind"], []).append(doc)
        spec = doc.get("spec", {})
        pod = (spec.get("jobTemplate", {}).get("spec", spec)).get("template", {})
        if not pod:
            continue
        assert pod["metadata"]["labels"]["ganserve.role"] in ("serve", "retrain"), doc["metadata"]["name"]
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        for container in pod["spec"]["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            env = {e["name"]: e["value"] for e in container["env"]}
            (store,) = [m["mountPath"] for m in container["volumeMounts"] if m["name"] == "store"]
            # a replica serves the store's models; a job keeps the registry's whole home on it (atomic renames)
            served = env.get("GANSERVE_STORE") or f"{env['BENTOML_HOME']}/models"
            assert served == f"{store}/models", container["name"]
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PersistentVolumeClaim", "CronJob"} <= set(kinds)
    store = next(d for d in kinds["PersistentVolumeClaim"] if d["metadata"]["name"] == "ganserve-store")
    assert store["spec"]["accessModes"] == ["ReadWriteMany"]
    gpu = [d for d in kinds["Deployment"] if "nvidia.com/gpu" in str(d)]
    assert gpu, "no GPU variant"


def test_the_job_and_balancer_containerfiles_lint_clean():
    """hadolint, with deploy/hadolint.yaml's one exception; the serving image's Dockerfile, which BentoML
    generates from deploy/bento.Dockerfile.j2, is linted by make container."""
    files = sorted((ROOT / "deploy").glob("*.Containerfile"))
    assert len(files) == 2
    done = subprocess.run([_tool("hadolint"), "--config", str(ROOT / "deploy" / "hadolint.yaml"), *map(str, files)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
