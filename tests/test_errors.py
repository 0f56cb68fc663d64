"""service.errors: the exception tree its docstring draws is the code's, and a ValidationError reads as one line."""

from __future__ import annotations

import importlib
import pkgutil
import re

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

import release
import service
import training
from service import errors
from service.errors import GanserveError, one_line, problems

DRAWN = re.compile(r"^(?P<tree>[│ ]*[├└]── )(?P<name>\w+)(?:\((?P<also>[\w, ]+)\))?\s+(?P<module>[\w.]+)")


def every_subclass() -> set[type]:
    for package in (service, training, release):  # every module, so that no subclass stays unimported
        for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if not module.name.endswith(".__main__"):
                importlib.import_module(module.name)
    found, todo = set(), [GanserveError]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in found:
                found.add(sub)
                todo.append(sub)
    return found


def drawn() -> dict[str, tuple[str, str, set[str]]]:
    """The docstring's tree: each class's name -> (its module, its parent in the tree, its other parents)."""
    tree = errors.__doc__.split("::", 1)[1]
    out, parents = {}, {0: "GanserveError"}
    for line in tree.strip().splitlines()[1:]:
        m = DRAWN.match(line.removeprefix("    "))
        assert m, f"not a line of the tree: {line!r}"
        depth = len(m["tree"]) // 4
        parents[depth] = m["name"]
        also = {a.strip() for a in (m["also"] or "").split(",") if a.strip()}
        out[m["name"]] = (m["module"], parents[depth - 1], also)
    return out


def test_the_docstring_draws_every_user_error_under_its_parent_and_module():
    tree = drawn()
    for cls in every_subclass():
        assert cls.__name__ in tree, f"{cls.__module__}.{cls.__name__} is missing from service.errors' tree"
        module, parent, also = tree[cls.__name__]
        in_tree = [b.__name__ for b in cls.__bases__ if issubclass(b, GanserveError)]
        others = {b.__name__ for b in cls.__bases__ if not issubclass(b, GanserveError)}
        assert (module, [parent], also) == (cls.__module__, in_tree, others), f"{cls.__name__} is drawn wrong"
    assert set(tree) == {c.__name__ for c in every_subclass()}, "the tree draws a class the code no longer has"


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = Field(1, ge=1)
    seeds: list[int] = []

    @model_validator(mode="after")
    def _across(self) -> Body:
        if self.n == 3:
            raise ValueError("n may not be 3 with these seeds")
        return self


def error(raw) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        Body.model_validate(raw)
    return caught.value


def test_a_validation_error_reads_as_one_line_of_where_and_what():
    err = error({"n": 0, "seeds": [1, "a"], "x": 1})
    assert one_line(err) == (
        "n: Input should be greater than or equal to 1; seeds.1: Input should be a valid integer, unable to parse "
        "string as an integer; x: Extra inputs are not permitted"
    )
    assert one_line(err, where=str.upper).startswith("N: Input should")
    assert problems(err, what=lambda e: e["type"]) == [
        "n: greater_than_equal",
        "seeds.1: int_parsing",
        "x: extra_forbidden",
    ]


def test_an_error_of_the_whole_is_named_as_asked_or_reads_as_its_message():
    assert one_line(error({"n": 3})) == "n may not be 3 with these seeds"
    assert one_line(error({"n": 3}), whole="body") == "body: Value error, n may not be 3 with these seeds"
    assert problems(error([1]), whole="(top level)") == [
        "(top level): Input should be a valid dictionary or instance of Body"
    ]
