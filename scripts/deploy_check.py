"""`make deploy-check`: the deployment of deploy/compose.yaml, end to end, under load, with its figures.

Steps, each under `hey -c 32` through the balancer (loopback only, each bounded in time):
1. up, from an empty store (seeded with the model the bento packed);
2. the job container trains a tiny model, the gate rejects it (a 30-step model is meant to fail), and the job
   promotes it with ``--force``: promoting is the thing checked here, not the model; every replica must serve the
   new ``X-Model-Version`` within ``--converge`` seconds, and no request may fail;
3. rollback, which every replica must follow, again with no failed request;
4. one replica's process killed (kill -9, a crash: podman restarts it), which must serve again within 60 s; only
   the requests in flight on it may fail;
5. down.
Prints a table and writes build/deploy-check.json. Exit 1 when a figure misses its bound.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = [str(ROOT / "scripts" / "deploy.sh")]
CONCURRENCY = 32
RATE = 4  # requests/s per hey worker: 128/s in all, so the job shares the 2 cores instead of starving
# the gate at its smallest: the check is about promotion reaching every replica, not the tiny model's quality
GATE = [f"--gate={item}" for item in ("samples=100", "guard_samples=100", "judge_seeds=[0]", "pixel_judge_seeds=[0]",
                                      "pixel_judge_epochs=1", "pixel_judge_min_steps=0", "fid_rounds=2",
                                      "interval_rounds=10", "selftest=false", "drs=false")]  # fmt: skip
BODY = '{"n": 1, "seed": 7}'
BACK_WITHIN = 60.0
PROBE = (
    "import urllib.request as u; r = u.urlopen(u.Request('http://127.0.0.1:3000/generate', data=b'{}', "
    "headers={'content-type': 'application/json'}), timeout=5); print(r.headers['x-model-version'])"
)


class CheckError(RuntimeError):
    """A step of the check failed; the message says which and why."""


def sh(*cmd: str, check: bool = True, timeout: float = 900) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if check and done.returncode != 0:
        raise CheckError(f"{' '.join(cmd[:4])} ... exited {done.returncode}: {(done.stdout + done.stderr)[-1500:]}")
    return done.stdout


def replicas(project: str) -> list[str]:
    out = sh("podman", "ps", "--filter", "label=ganserve.role=serve", "--filter",
             f"label=io.podman.compose.project={project}", "--format", "{{.Names}}")  # fmt: skip
    return sorted(out.split())


def served_version(name: str) -> str | None:
    """The model version a replica serves, asked inside its container (replicas publish no port)."""
    done = subprocess.run(["podman", "exec", name, "python", "-c", PROBE], capture_output=True, text=True, timeout=20)
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def converge(names: list[str], version: str, limit: float, since: float | None = None) -> float:
    """Seconds from ``since`` (the moment the job was told to promote; default now) until every replica serves
    ``version``: the job container's own start-up counts in."""
    start = time.monotonic() if since is None else since
    while time.monotonic() - start < limit:
        if all(served_version(n) == version for n in names):
            return time.monotonic() - start
        time.sleep(0.5)
    seen = {n: served_version(n) for n in names}
    raise CheckError(f"replicas did not all serve {version} within {limit:.0f} s: {seen}")


class Load:
    """``hey`` at c=32 (``RATE`` requests/s each) against the balancer from start to stop (SIGINT makes it
    report), at most ``bound`` s."""

    def __init__(self, url: str, bound: float) -> None:
        self.proc = subprocess.Popen(
            ["hey", "-z", f"{int(bound)}s", "-c", str(CONCURRENCY), "-q", str(RATE), "-m", "POST",
             "-T", "application/json", "-d", BODY, url],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip  # hey writes only its summary, at the end: the pipe cannot fill
        time.sleep(1.0)  # let it reach full concurrency before the step starts

    def stop(self) -> dict:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=30)
        return parse_hey(out)


def parse_hey(text: str) -> dict:
    """Requests by status, transport errors, and the request rate, from hey's summary."""
    statuses = {int(c): int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", text)}
    errors = sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]\s+(?!.*responses)", text, re.M))
    rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
    ok = statuses.get(200, 0)
    return {"requests": sum(statuses.values()) + errors, "ok": ok, "failed": sum(statuses.values()) - ok + errors,
            "statuses": statuses, "transport_errors": errors, "rps": float(rate.group(1)) if rate else 0.0}  # fmt: skip


def crash(victim: str, version: str) -> float:
    """Kill the replica's process as a crash would (kill -9 from the host, which podman restarts; a `podman kill`
    it would not) and return the seconds until it serves ``version`` again, or give up past the bound."""
    pid, restarts = sh("podman", "inspect", "--format", "{{.State.Pid}} {{.RestartCount}}", victim).split()
    os.kill(int(pid), signal.SIGKILL)
    killed = time.monotonic()
    time.sleep(1.0)
    while time.monotonic() - killed < BACK_WITHIN + 30:
        now = sh("podman", "inspect", "--format", "{{.RestartCount}}", victim, check=False).strip()
        if now and int(now) > int(restarts) and served_version(victim) == version:
            break
        time.sleep(0.5)
    return time.monotonic() - killed


def _problems(rows: dict[str, dict]) -> list[str]:
    found = [f"{step}: {r['failed']} failed request(s)" for step, r in rows.items() if step != "crash" and r["failed"]]
    crash = rows.get("crash")
    if crash and crash["failed"] > CONCURRENCY:
        found.append(f"crash: {crash['failed']} failed, more than the {CONCURRENCY} that can be in flight")
    if crash and crash["back_s"] > BACK_WITHIN:
        found.append(f"crash: the replica served again only after {crash['back_s']} s")
    return found


def job(*args: str) -> str:
    """A ganserve command in the job container, against the shared store; its output without colour codes."""
    return re.sub(r"\x1b\[[0-9;]*m", "", sh(*DEPLOY, "retrain", *args, check=False, timeout=1800))


def need_hey() -> None:
    if shutil.which("hey"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise CheckError("the load generator hey is missing: apt-get install -y hey")
    print("installing the load generator hey from Debian")
    sh("apt-get", "install", "-y", "-q", "hey")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default=os.environ.get("DEPLOY_PROJECT", "ganserve-check"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("DEPLOY_PORT", "8080")))
    parser.add_argument("--converge", type=float, default=15.0, help="seconds every replica may take to follow")
    parser.add_argument("--steps", type=int, default=30, help="G steps of the tiny model the job trains")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "deploy-check.json")
    args = parser.parse_args(argv)
    # the check's own project, started from an empty store and removed with its volumes at the end
    os.environ.update(DEPLOY_PROJECT=args.project, DEPLOY_PORT=str(args.port), DEPLOY_KEEP_STORE="0")
    url = f"http://127.0.0.1:{args.port}/generate"
    rows: dict[str, dict] = {}
    need_hey()
    try:
        sh(*DEPLOY, "down", check=False)
        start = time.monotonic()
        print(sh(*DEPLOY, "up").strip().splitlines()[-1])
        names = replicas(args.project)
        if len(names) < 2:
            raise CheckError(f"{len(names)} serving replica(s) up, 2 or more expected")
        v0 = served_version(names[0]) or "?"
        before = converge(names, v0, 30)
        print(f"up in {time.monotonic() - start:.0f} s: {len(names)} replicas on {v0}")

        load = Load(url, 900)
        out = job("retrain", "--config", "configs/default.yaml", "--set", f"max_steps={args.steps}",
                  "--set", "name=deploy-check", *GATE, "--runs-dir", "/var/lib/ganserve/runs",
                  "--no-progress")  # fmt: skip
        found = re.search(r"^(?:REJECTED|PROMOTED) (\S+):", out, re.M)
        if not found:
            raise CheckError(f"the retrain job named no candidate: {out[-1500:]}")
        candidate = found.group(1)
        v1 = next(line.split()[-1] for line in job("models").splitlines() if candidate in line)  # its sha256[:12]
        promoted = time.monotonic()
        if found.group(0).startswith("REJECTED"):  # expected: a 30-step model fails the gate; forced, and said so
            print(f"the gate rejected the tiny candidate {candidate}, as expected: promoting it with --force")
            job("promote", candidate, "--force")
        seconds = converge(names, v1, args.converge, since=promoted)
        rows["promotion"] = {**load.stop(), "converged_s": round(seconds, 1), "version": v1}

        load = Load(url, 300)
        rolled = time.monotonic()
        job("rollback")
        seconds = converge(names, v0, args.converge, since=rolled)
        rows["rollback"] = {**load.stop(), "converged_s": round(seconds, 1), "version": v0}

        load = Load(url, 300)
        back = crash(names[0], v0)
        time.sleep(2.0)  # load on the replica that came back
        rows["crash"] = {**load.stop(), "back_s": round(back, 1), "replica": names[0]}
    finally:
        sh(*DEPLOY, "down", check=False)
    problems = _problems(rows)
    print(f"\n{'step':<10} {'requests':>9} {'failed':>7} {'req/s':>7}  seconds")
    for step, r in rows.items():
        secs = r.get("converged_s", r.get("back_s"))
        print(f"{step:<10} {r['requests']:>9} {r['failed']:>7} {r['rps']:>7.0f}  {secs} "
              f"({'every replica on the new version' if 'converged_s' in r else 'replica back'})")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"steps": rows, "replicas": len(names), "up_converged_s": before,
                                    "problems": problems, "concurrency": CONCURRENCY}, indent=2) + "\n")  # fmt: skip
    print("\n" + ("\n".join(f"FAIL {p}" for p in problems) if problems else f"deploy-check OK ({args.out})"))
    return 1 if problems else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CheckError as err:
        print(f"deploy-check failed: {err}", file=sys.stderr)
        sys.exit(1)
