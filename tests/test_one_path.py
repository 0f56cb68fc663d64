"""One path from seeds to images: nothing outside it maps a seed to a latent or a label (issue 11).

The ONNX graph draws latents and labels (training/sampler.py, the protocol as nodes) and ``GeneratorRuntime`` is
how the service, the gate, export's parity check and the benchmarks run it. The numpy reference
(service/latents.py) is called only where PyTorch needs the same latents: training's sample grids and export's
parity reference, by the benchmark of the reference itself, and by the GPU check.
"""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
CODE = [p for d in ("service", "training", "bench") for p in sorted((ROOT / d).rglob("*.py"))]
REFERENCE = {"latents_for_seeds", "labels_for_seeds", "squares32"}
# and the GPU check, which holds the latents a device's graph draws against it
MAY_CALL_THE_REFERENCE = {
    "service/latents.py", "training/train.py", "training/export.py", "bench/latents.py", "bench/gpu_check.py",
}  # fmt: skip
# upgrade's reference: the v1 graph it re-exports, fed the reference latents; the runtime's walks between seeds,
# fed latents bent between those its own graph drew for the keys
MAY_FEED_Z = {"training/export.py", "service/runtime.py"}
SEED_TO_LABEL = re.compile(r"\bseeds?\s*%|%\s*(len\([^)]*class|classes\b|num_classes\b)")
PER_IMAGE_DRAW = re.compile(r"standard_normal\(")


def where(predicate) -> list[str]:
    found = []
    for path in CODE:
        name = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), name)):
            if predicate(node, name):
                found.append(f"{name}:{node.lineno}")
    return found


def test_only_the_one_path_calls_the_reference():
    def calls_reference(node, name):
        if not isinstance(node, ast.Call) or name in MAY_CALL_THE_REFERENCE:
            return False
        func = node.func
        return (func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)) in REFERENCE

    assert not where(calls_reference)


def feeds_z(node, name) -> bool:
    """A feed of latents to an onnxruntime session: ``run(..., {"z": ...})``, ``feeds = {"z": ...}`` or
    ``feeds["z"] = ...``."""
    if name in MAY_FEED_Z:
        return False
    if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "run":
        dicts = [a for a in node.args if isinstance(a, ast.Dict)]
    elif isinstance(node, ast.Assign) and any("feed" in getattr(t, "id", "") for t in node.targets):
        dicts = [node.value] if isinstance(node.value, ast.Dict) else []
    elif isinstance(node, ast.Subscript) and "feed" in getattr(node.value, "id", ""):
        return isinstance(node.slice, ast.Constant) and node.slice.value == "z"
    else:
        return False
    return any(isinstance(k, ast.Constant) and k.value == "z" for d in dicts for k in d.keys)


def test_nothing_feeds_a_generator_its_latents():
    assert not where(feeds_z)


def test_no_seed_is_mapped_to_a_label_or_a_latent_by_hand():
    found = []
    for path in CODE:
        name = path.relative_to(ROOT).as_posix()
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if name != "service/latents.py" and SEED_TO_LABEL.search(code):
                found.append(f"{name}:{number}: {line.strip()}")
            if name not in {"service/latents.py", "bench/latents.py"} and PER_IMAGE_DRAW.search(code):
                found.append(f"{name}:{number}: {line.strip()}")  # bench/latents.py: protocol v1, as the baseline
    assert not found


def test_the_checks_see_what_they_look_for():
    """The patterns above find the code they forbid, so an empty finding means something."""
    assert SEED_TO_LABEL.search("labels = seeds % len(manifest.class_names)")
    assert SEED_TO_LABEL.search("np.array([s % len(manifest.class_names) for s in seeds])")
    assert PER_IMAGE_DRAW.search("np.random.default_rng(seed).standard_normal(100)")
    for code in ('feeds = {"z": z}', 'feeds["z"] = z', 'session.run(["images"], {"z": z, "labels": y})'):
        assert any(feeds_z(node, "x.py") for node in ast.walk(ast.parse(code))), code
    assert not any(feeds_z(node, "x.py") for node in ast.walk(ast.parse('want = {"z": "tensor(float)"}')))
