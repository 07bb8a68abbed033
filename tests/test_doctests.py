"""Every public docstring example in the library runs as a test."""

import doctest
import importlib
import pkgutil

import pytest

import safedpo_jax

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(safedpo_jax.__path__, prefix="safedpo_jax.")
    if not m.name.endswith("__main__")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    flags = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS
    result = doctest.testmod(module, optionflags=flags, verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
