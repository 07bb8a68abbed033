"""The house's rooms: which library module may import which (README, "Files").

Every ``import`` of every module under ``safedpo_jax/`` (module level and inside functions)
is read with `ast` and checked against the table below; an arrow against it fails here.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "safedpo_jax"
STDLIB = set(sys.stdlib_module_names) | {"__future__"}

# room -> (third-party packages it may use, library rooms it may import)
ROOMS: dict[str, tuple[set[str], set[str]]] = {
    "losses": ({"jax", "numpy"}, {"losses"}),
    "costs": ({"jax", "numpy"}, {"costs"}),
    "sharding": ({"jax", "numpy", "flax"}, {"sharding"}),
    "models": (
        {"jax", "numpy", "flax", "safetensors", "huggingface_hub", "einops"},
        {"models", "sharding"},
    ),
    "data": (
        {"numpy", "datasets", "transformers", "tokenizers", "huggingface_hub", "pyarrow"},
        {"data"},
    ),
    "logprobs": ({"jax", "numpy", "flax"}, {"logprobs", "losses", "models", "sharding"}),
}


def room_of(module: str) -> str:
    return module.split(".")[1] if module.count(".") else module


def imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append(node.module)
    return out


def library_modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "sample" not in p.parts)


@pytest.mark.parametrize("path", library_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_rooms_table(path):
    room = path.relative_to(ROOT).parts[0].removesuffix(".py")
    bad = []
    for name in imports(path):
        top = name.split(".")[0]
        if top in STDLIB:
            continue
        if top == "safedpo_jax":
            target = room_of(name)
            if room in ROOMS and target not in ROOMS[room][1] and name != "safedpo_jax":
                bad.append(name)
            # nothing below the evaluation or the trainer reaches a research world
            if room in ("evaluate", "train", "models", "data", "losses") and target == "worlds":
                bad.append(name)
            # the trainer is the top floor of the library: nothing else imports it
            if room not in ("train", "worlds") and target == "train":
                bad.append(name)
        elif room in ROOMS and top not in ROOMS[room][0]:
            bad.append(name)
    assert not bad, f"{path.relative_to(ROOT)} imports {bad} against the rooms table"


def test_the_step_takes_an_objective_not_the_config():
    step = imports(ROOT / "train" / "step.py")
    assert "safedpo_jax.train.config" not in step
    text = (ROOT / "train" / "step.py").read_text() + (ROOT / "train" / "loop.py").read_text()
    for needle in ('objective == "', 'pairs == "', "config.objective", "config.pairs"):
        assert needle not in text, f"string dispatch {needle!r} in step.py / loop.py"
