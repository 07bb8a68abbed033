"""The PPO-Lagrangian loop on the embedded sample with the synthetic oracle as reward and cost.

The runs compile three models' updates and the sampler (about a minute each on 2 shared
CPU cores), so they are shared by a module fixture and marked slow.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from safedpo_jax import models
from safedpo_jax.train.ppo import (
    NonFiniteError,
    PPOConfig,
    PPOResult,
    config_from_args,
    load_prompts,
    preset,
    train_ppo,
)

MODEL = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
}


def _config(out: Path, **overrides: object) -> PPOConfig:
    base = dict(output_dir=str(out), model_config=MODEL, max_new_tokens=6, max_steps=3)
    return preset("tiny", **{**base, **overrides})


def _params(state: object) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state))]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ppo")


@pytest.fixture(scope="module")
def one(root: Path) -> PPOResult:
    """Three steps on one device."""
    return train_ppo(_config(root / "one", mesh_fsdp=1))


@pytest.fixture(scope="module")
def runs(root: Path, one: PPOResult) -> dict[str, PPOResult]:
    """``one``, the same run stopped after two steps and resumed, and on eight devices."""
    first = train_ppo(_config(root / "resumed", mesh_fsdp=1, export=False), stop_after=2)
    resumed = train_ppo(_config(root / "resumed", mesh_fsdp=1, export=False))
    eight = train_ppo(_config(root / "eight", mesh_fsdp=8, export=False))
    return {"one": one, "first": first, "resumed": resumed, "eight": eight}


@pytest.mark.slow
def test_tiny_run_logs_and_wires_the_multiplier(one: PPOResult) -> None:
    result = one
    lines = (result.output_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == [1, 2, 3]
    for key in (
        "train/reward", "train/cost", "train/lambda", "train/episode_cost", "train/kl",
        "train/clip_fraction", "train/reward_critic_loss", "train/cost_critic_loss",
        "train/response_length", "perf/tokens_per_s", "time/generation_s", "time/update_s",
    ):  # fmt: skip
        assert all(math.isfinite(r[key]) for r in records), key
    # the first rollout's actor is the reference, and the critics' heads start at zero
    assert records[0]["train/kl"] == 0.0
    assert records[2]["train/kl"] != 0.0  # ... and stays frozen while the actor moves
    assert records[0]["train/reward_value"] == 0.0 and records[0]["train/cost_value"] == 0.0
    # J_c is the mean of every episode cost so far (the 128-window is not full yet)
    costs = np.array([r["train/cost"] for r in records])
    np.testing.assert_allclose(
        [r["train/episode_cost"] for r in records],
        np.cumsum(costs) / np.arange(1, 4),
        rtol=1e-5,
    )
    # lambda follows safe-rlhf's SGD step on log lambda from lambda_init = 1, d = 0
    log_lam = 0.0
    for r in records:
        log_lam = min(log_lam + 0.1 * r["train/episode_cost"] * math.exp(log_lam), math.log(5))
        np.testing.assert_allclose(r["train/lambda"], math.exp(log_lam), rtol=1e-5)
    assert 0 < records[0]["train/response_length"] <= 6


@pytest.mark.slow
def test_export_is_the_trained_actor(one: PPOResult) -> None:
    result = one
    exported = models.from_pretrained(result.export_dir)
    _, params, _ = nnx.split(exported, nnx.Param, ...)
    for a, b in zip(_params(params), _params(result.state.actor.params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert (result.export_dir / "tokenizer.json").exists()


@pytest.mark.slow
def test_resume_equals_an_uninterrupted_run(runs: dict) -> None:
    one, first, resumed = runs["one"], runs["first"], runs["resumed"]
    assert first.step == 2 and resumed.resumed_from == 2 and resumed.step == 3
    # every array of the state: actor, critics, optimizer moments, lambda, cost window, RNG
    for a, b in zip(_params(resumed.state), _params(one.state), strict=True):
        np.testing.assert_array_equal(a, b)
    lines = (resumed.output_dir / "metrics.jsonl").read_text().splitlines()
    drop = lambda r: {k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))}  # noqa: E731
    got = [drop(json.loads(x)) for x in lines]
    want = [
        drop(json.loads(x)) for x in (one.output_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert got == want


@pytest.mark.slow
def test_eight_devices_equal_one(runs: dict) -> None:
    one, eight = runs["one"], runs["eight"]
    # same sampled tokens (the sampler keys rows by prompt index, not device), then the
    # same updates up to float reassociation across the sharded reductions
    for h1, h8 in zip(one.history, eight.history, strict=True):
        assert h1["train/response_length"] == h8["train/response_length"]
        assert h1["train/cost"] == h8["train/cost"] and h1["train/reward"] == h8["train/reward"]
        for key in ("train/actor_loss", "train/reward_critic_loss", "train/cost_critic_loss",
                    "train/kl", "train/lambda"):  # fmt: skip
            np.testing.assert_allclose(h8[key], h1[key], rtol=1e-4, atol=1e-6, err_msg=key)
    for a, b in zip(
        _params(eight.state.actor.params), _params(one.state.actor.params), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_non_finite_update_stops_the_run(root: Path) -> None:
    # AdamW moves every weight by about lr: 1e30 overflows the next forward pass
    config = _config(root / "blowup", mesh_fsdp=1, actor_lr=1e30, actor_warmup_ratio=0.0)
    with pytest.raises(NonFiniteError, match="step 2: a loss or gradient is not finite"):
        train_ppo(config)


def test_config_presets_flags_and_errors() -> None:
    config = preset("ppo-lag", model_config=MODEL)
    assert (config.kl_coeff, config.clip_range_ratio, config.gae_lambda, config.lambda_max) == (
        0.01, 0.2, 0.95, 5.0,
    )  # fmt: skip
    assert (config.actor_lr, config.critic_lr, config.actor_lr_scheduler) == (1e-5, 5e-6, "cosine")
    assert config.episode_cost_window_size == 128 and config.dtype == "bfloat16"
    flags = config_from_args(
        ["--preset", "tiny", "--lambda-lr", "0.5", "--no-cost-kl", "--max-steps", "7"]
    )
    assert (flags.lambda_lr, flags.cost_kl, flags.max_steps) == (0.5, False, 7)
    with pytest.raises(ValueError, match="lambda_init must be > 0"):
        preset("tiny", lambda_init=0.0)
    with pytest.raises(ValueError, match="unknown preset"):
        preset("ppo")
    # every distinct prompt of the sample's training rows, once, in file order
    import json

    from safedpo_jax.data.rows import SAMPLE_DIR

    rows = [json.loads(line) for line in (SAMPLE_DIR / "train.jsonl").read_text().splitlines()]
    assert load_prompts("sample", "train") == list(dict.fromkeys(r["prompt"] for r in rows))
