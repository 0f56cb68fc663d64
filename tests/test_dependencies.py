"""The design card's dependency rules, checked on every import statement in the tree."""

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
SERVICE_CONTRACTS = {
    "service",
    "service.drs",
    "service.errors",
    "service.latents",
    "service.imaging",
    "service.lines",
    "service.manifest",
    "service.rows",
    "service.runtime",
}  # pure numpy, no I/O; the runtime also runs onnxruntime and cuts its graph with onnx (the one path to images)
CLIENT_THIRD_PARTY = {"httpx", "pydantic", "PIL"}


def imports(package: str) -> list[tuple[Path, str]]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found += [(path, alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.append((path, node.module))
    return found


def top(module: str) -> str:
    return module.split(".")[0]


def test_service_never_imports_torch_or_training():
    bad = [(p.name, m) for p, m in imports("service") if top(m) in {"torch", "torchvision", "training"}]
    assert not bad, f"service/ must run without torch: {bad}"


def test_training_uses_only_the_service_contract_modules():
    bad = [(p.name, m) for p, m in imports("training") if top(m) == "service" and m not in SERVICE_CONTRACTS]
    assert not bad, f"training/ may import only {sorted(SERVICE_CONTRACTS)} from service/: {bad}"


def test_judging_reads_data_and_networks_never_the_training_job():
    allowed = {"training.config", "training.data", "training.networks", "training.artifacts", "training.checkpoint"}
    bad = [
        (p.name, m)
        for p, m in imports("training/judging")
        if top(m) == "training" and not m.startswith("training.judging") and m not in allowed
    ]
    assert not bad, f"training/judging/ may import only {sorted(allowed)} from training/: {bad}"


def test_nothing_imports_release_but_its_own_clis():
    bad = [(str(p.relative_to(ROOT)), m) for pkg in ("service", "training", "client") for p, m in imports(pkg)
           if top(m) == "release"]  # fmt: skip
    assert not bad, f"release/ is imported by CLIs only (release.cli, bench/, tests/): {bad}"


def test_only_release_touches_the_store_and_writes_reports():
    """training/ trains and judging/ judges: neither opens BentoML's model store nor writes a report or a manifest's
    gate headline; release/ does both."""
    store = [(p.name, m) for p, m in imports("training") if top(m) == "bentoml"]
    assert not store, f"only release/ opens the model store: {store}"
    writes = [p.name for p in (ROOT / "training/judging").rglob("*.py") if "write_manifest" in p.read_text()]
    assert not writes, f"judging/ writes nothing into model folders (release.report does): {writes}"


def test_release_imports_the_contract_training_and_itself_only():
    third_party = {"numpy", "PIL", "pydantic", "typer", "tqdm", "bentoml"}
    allowed = sys.stdlib_module_names | third_party | {"__future__", "release", "training"}
    bad = [(p.name, m) for p, m in imports("release") if top(m) not in allowed | {"service"}]
    bad += [(p.name, m) for p, m in imports("release") if top(m) == "service" and m not in SERVICE_CONTRACTS]
    assert not bad, f"release/ may import the service's contract, training/ and itself: {bad}"


def test_service_contract_modules_import_numpy_and_stdlib_only():
    for name in SERVICE_CONTRACTS - {"service"}:
        path = ROOT / (name.replace(".", "/") + ".py")
        if not path.exists():
            continue
        tree = ast.parse(path.read_text())
        mods = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        mods += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
        allowed = sys.stdlib_module_names | {"numpy", "__future__", "pydantic"}
        if name == "service.runtime":
            allowed |= {"onnxruntime", "onnx"}
        bad = [m for m in mods if top(m) not in allowed and m not in SERVICE_CONTRACTS]
        assert not bad, f"{name} must stay pure: {bad}"


def test_client_imports_httpx_pydantic_pillow_only():
    if not (ROOT / "client").exists():
        pytest.skip("client/ arrives with the SDK")
    allowed = sys.stdlib_module_names | CLIENT_THIRD_PARTY | {"ganserve_client", "__future__"}
    bad = [(p.name, m) for p, m in imports("client") if top(m) not in allowed and p.parts[-2] != "tests"]
    assert not bad, f"the SDK depends on httpx, pydantic and Pillow only: {bad}"


def test_models_holds_data_not_code():
    code = [p for p in (ROOT / "models").rglob("*.py")] if (ROOT / "models").exists() else []
    assert not code, f"models/ holds data, not code: {code}"


def module_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Each module of ``packages`` (folders of ``root``) and the modules of those packages it imports, at any depth
    of its code (a lazy import inside a function still ties the two); ``from a import b`` counts as ``a.b`` when that
    is a module, and relative imports are resolved."""
    paths = {
        p: ".".join(p.relative_to(root).with_suffix("").parts) for pkg in packages for p in (root / pkg).rglob("*.py")
    }
    names = {n.removesuffix(".__init__") for n in paths.values()}
    graph: dict[str, set[str]] = {}
    for path, name in paths.items():
        me = name.removesuffix(".__init__")
        package = me if name.endswith("__init__") else me.rpartition(".")[0]
        edges = graph.setdefault(me, set())
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in names}
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                if module in names:
                    edges |= {f"{module}.{a.name}" for a in node.names} & names or {module}
        edges.discard(me)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of ``graph``, each once (a depth-first search that reports every back edge)."""
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_the_import_graph_has_no_circles():
    """Within service/, training/, release/ and the SDK, no module imports (at any depth) one that imports it back."""
    graph = module_graph(ROOT, ("service", "training", "release")) | module_graph(
        ROOT / "client/src", ("ganserve_client",)
    )
    assert graph, "no modules found"
    assert not cycles(graph), f"import circles: {cycles(graph)}"


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


STAGES = {  # lower first: a module imports its own stage and those below it, never one above
    "training.config": 1, "training.artifacts": 1, "training.augment": 1, "training.cache": 1, "training.losses": 1,
    "training.sampler": 1, "training.networks": 1, "training.data": 1, "training.checkpoint": 1,
    "training.train": 2, "training.export": 2, "training.discriminator": 2, "training.judging": 2,
    "release.registry": 3, "release.report": 3, "release.recipe": 3, "release.retrain": 3,
    "training.cli": 4, "release.cli": 4, "training.__main__": 4, "release.__main__": 4,
}  # fmt: skip  # 0 is the service's contract; training.judging.* is stage 2 (judging alone has a stricter rule)


def stage(module: str) -> int | None:
    """The module's stage: 0 for the service's contract, STAGES for the rest (a package's modules share its stage),
    None for the bare package roots, -1 for a module no one has placed yet."""
    if module in SERVICE_CONTRACTS:
        return 0
    if module in {"training", "release"}:
        return None
    return STAGES.get(module, STAGES.get(module.rpartition(".")[0], -1))


def test_no_import_runs_from_a_lower_stage_back_up():
    graph = module_graph(ROOT, ("training", "release"))
    unplaced = [m for m in graph if stage(m) == -1]
    assert not unplaced, f"place these modules in STAGES: {unplaced}"
    up = [(m, n, stage(m), stage(n)) for m, edges in graph.items() for n in edges
          if stage(m) is not None and (stage(n) or 0) > stage(m)]  # fmt: skip
    assert not up, f"imports from a lower stage up (module, imported, their stages): {up}"
