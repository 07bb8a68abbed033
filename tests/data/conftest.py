"""Shared fixtures for the data tests: hand-made rows and tokenizers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from safedpo_jax.data import load_tokenizer
from safedpo_jax.worlds.synthetic import tokenizer_files


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    """The embedded sample tokenizer (pad <pad> != eos </s>)."""
    return load_tokenizer("sample")


@pytest.fixture(scope="session")
def pad_eos_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The sample vocabulary with pad == eos == </s>."""
    out: Path = tmp_path_factory.mktemp("pad_eos_tokenizer")
    for name, text in tokenizer_files(pad_token="</s>").items():
        (out / name).write_text(text)
    return load_tokenizer(out)
