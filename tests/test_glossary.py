"""docs/GLOSSARY.md and the code agree: every name it cites exists; "judge" names only the two-sample classifiers."""

import ast
import importlib
import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
# the gate's fresh two-sample classifiers, their settings and figures: the only things a name may call a judge
QUALIFIED = re.compile(r"(feature|pixel|logistic)_judge")
BARE = {"judges", "judge_se", "judge_seeds", "_judge_noise", "_judge_cell"}  # both judges at once, in the gate
HOMES = {"training/judging/metrics.py", "training/judging/selftest.py"}  # where judges are made: any name goes


def names_a_judge(name: str) -> bool:
    """A judge, or the gate's act: ``judged`` (whether a report judged these files) is the verb, not a judge."""
    return bool(QUALIFIED.search(name)) or name in BARE or name == "judged"


def cited() -> list[str]:
    """The dotted names in the glossary's code column (`package.module.Name`, `package.module.Class.method`)."""
    text = (ROOT / "docs/GLOSSARY.md").read_text()
    names = re.findall(r"`((?:service|training|release)\.[\w.]+)`", text)
    assert names, "the glossary cites no code"
    return sorted(set(names))


def resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            found = getattr(found, attr)
        return found
    raise ModuleNotFoundError(dotted)


def test_every_name_the_glossary_cites_exists():
    missing = []
    for name in cited():
        try:
            resolve(name)
        except (ModuleNotFoundError, AttributeError):
            missing.append(name)
    assert not missing, f"docs/GLOSSARY.md cites names the code does not have: {missing}"


def names_in(path: Path) -> set[str]:
    """Every name a module defines or binds: functions, classes, arguments, variables, attributes it sets."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            found.add(node.name)
        elif isinstance(node, ast.arg):
            found.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            found.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            found.add(node.attr)
    return found


def test_judge_names_only_the_two_sample_classifiers():
    """The evaluator, D and its logits each have their own word (docs/GLOSSARY.md); a judge is a fresh classifier."""
    files = [p for pkg in ("service", "training", "release", "client/src", "bench") for p in (ROOT / pkg).rglob("*.py")]
    named = [(str(p.relative_to(ROOT)), n) for p in files for n in names_in(p) if "judge" in n.lower()]
    bad = sorted((path, n) for path, n in named if path not in HOMES and not names_a_judge(n))
    assert not bad, f"names that call something other than a two-sample classifier a judge: {bad}"


def test_the_judge_rule_tells_the_classifiers_from_other_things():
    assert all(names_a_judge(n) for n in ("pixel_judge", "logistic_judge", "feature_judge_margin", "judges"))
    assert not any(names_a_judge(n) for n in ("judge", "Judged", "judge_model", "judged_model"))
