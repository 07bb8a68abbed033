"""The paper-scale configs: architectures, estimates, command lines, and the dry run.

Everything but the dry run is arithmetic or parsing (no compilation). The dry run
(`slow`) runs every config's stages at tiny scale on the 8 fake CPU devices that
tests/conftest.py sets up: 2 steps each, runs that differ from an earlier one only in
constants (delta, learning rate, which plain-DPO pairs) parsed but not compiled again.
"""

from __future__ import annotations

import doctest
import importlib.util
import json
import math
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from safedpo_jax.models import DecoderConfig, init_model
from safedpo_jax.train.config import parse_args

ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "experiments" / "paper"


def _load(name: str):
    sys.path[:0] = [str(PAPER)]
    try:
        spec = importlib.util.spec_from_file_location(f"paper_{name}", PAPER / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(PAPER))


est = _load("estimates")
run = _load("run")
ARCHS = est.load_architectures()
CONFIGS = [p.stem for p in est.config_paths()]

# Published parameter counts (model cards / papers), rounded as published.
PUBLISHED = {
    "PKU-Alignment/alpaca-7b-reproduced": 6.74e9,  # LLaMA-7B (+1 pad-token row)
    "Qwen/Qwen2.5-1.5B": 1.54e9,
    "Qwen/Qwen2.5-3B": 3.09e9,
    "Qwen/Qwen2.5-7B": 7.61e9,
    "meta-llama/Llama-3.1-8B": 8.03e9,
    "meta-llama/Llama-2-13b-hf": 13.0e9,
    "mistralai/Mistral-7B-v0.1": 7.24e9,
    "Qwen/Qwen3-8B-Base": 8.2e9,
}


def test_every_architecture_has_its_published_parameter_count():
    assert set(ARCHS) == set(PUBLISHED)
    for hub_id, hf in ARCHS.items():
        params = est.Shape.from_hf(hf).params
        assert params == pytest.approx(PUBLISHED[hub_id], rel=0.01), hub_id
    llama2_7b = {**ARCHS["PKU-Alignment/alpaca-7b-reproduced"], "vocab_size": 32000}
    assert est.Shape.from_hf(llama2_7b).params == 6_738_415_616


@pytest.mark.parametrize("hub_id", sorted(ARCHS))
def test_estimator_counts_the_parameters_the_decoder_builds(hub_id):
    config = DecoderConfig.from_hf(ARCHS[hub_id])
    abstract = nnx.eval_shape(lambda: init_model(config, rngs=nnx.Rngs(0)))
    built = sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    assert built == est.Shape.from_hf(ARCHS[hub_id]).params


def test_estimates_follow_their_formulas():
    hf = ARCHS["PKU-Alignment/alpaca-7b-reproduced"]
    shape = est.Shape.from_hf(hf)
    fields = {"batch_size": 128, "max_length": 512, "epochs": 2, "remat": True}
    pod8, pod16 = est.Pod.parse("v5p-16"), est.Pod.parse("v5p-32")
    a = est.train_estimate(hf, fields, pod8, 128 * 10)
    b = est.train_estimate(hf, fields, pod16, 128 * 10)
    assert a["steps"] == 20 and a["tokens_per_step"] == 128 * 2 * 512
    # 4 forward passes' worth (policy fwd + bwd = 3, in-step reference = 1).
    fwd = (2 * shape.matmul_params + 4 * 512 * 32 * 128 * 32) * 128 * 2 * 512
    np.testing.assert_allclose(a["model_tflop_per_step"] * 1e12, 4 * fwd, rtol=1e-12)
    assert 6 * 6.6e9 * 131072 < 3 * fwd < 6 * 7.0e9 * 131072 * 1.2  # ~6 N tokens + attention
    np.testing.assert_allclose(a["step_s"], 2 * b["step_s"])  # twice the chips, half the time
    # float32 weights, gradients, Adam moments and reference: 20 bytes a parameter, sharded.
    np.testing.assert_allclose(a["states_gib"] * 8, 20 * shape.params / 2**30)
    cached = est.train_estimate(hf, {**fields, "reference": "cached"}, pod8, 1280)
    assert cached["states_gib"] == pytest.approx(a["states_gib"] * 16 / 20)
    assert cached["model_tflop_per_step"] == pytest.approx(a["model_tflop_per_step"] * 3 / 4)
    plain = est.train_estimate(hf, {**fields, "remat": False}, pod8, 1280)
    assert plain["activations_gib"] > 5 * a["activations_gib"]


def test_configs_state_current_estimates_and_fit_their_pods():
    for name in CONFIGS:
        config = json.loads((PAPER / "configs" / f"{name}.json").read_text())
        assert config["expect"] == est.config_estimates(config), (
            f"{name}: stale; run python experiments/paper/estimates.py --write"
        )
        for pod in config["pods"]:
            e = config["expect"][pod]
            assert e["peak_memory_gib_per_chip"] < 0.8 * e["hbm_gib_per_chip"], (name, pod)
            assert config["common"]["batch_size"] % e["chips"] == 0, (name, pod)
    assert (PAPER / "ESTIMATES.md").read_text() == est.markdown_table()


@pytest.mark.parametrize("name", CONFIGS)
def test_every_stage_round_trips_through_the_trainer_command_line(name, tmp_path):
    config = run.load_config(name)
    assert config["architecture"] in ARCHS
    fields_of = run.stage_fields(config, tmp_path / config["group"])
    stages = run.plan(config, tmp_path)
    assert [s.name for s in stages if s.kind != "evaluate"] == list(fields_of)
    for stage in stages:
        if stage.kind == "evaluate":
            continue
        fields = dict(fields_of[stage.name])
        fields.pop("stage", None)
        if stage.kind == "merge":
            from safedpo_jax.models.merge import _parse

            args = _parse(list(stage.argv))
            assert (args.a, args.b, args.q) == (fields["a"], fields["b"], fields["q"])
            assert args.output == str(stage.output_dir / "hf")
            continue
        if stage.kind == "ppo":
            from safedpo_jax.train.ppo import config_from_args

            ppo_config = config_from_args(list(stage.argv))
            for key, value in fields.items():
                assert getattr(ppo_config, key) == value, (name, stage.name, key)
            continue
        train_config, _ = parse_args(list(stage.argv))
        for key, value in fields.items():
            assert getattr(train_config, key) == value, (name, stage.name, key)
        # The paper's hyperparameters (safedpo.md §6) on every preference run of the
        # paper's own configs (the baselines config carries each method's own recipe).
        if stage.kind == "train" and name != "alpaca7b_baselines":
            assert (train_config.beta, train_config.learning_rate) == (0.1, 1e-6)
            assert (train_config.warmup_ratio, train_config.weight_decay) == (0.03, 0.05)
            assert (train_config.adam_b1, train_config.adam_b2) == (0.9, 0.95)
            assert (train_config.max_length, train_config.epochs) == (512, 2)
            assert (train_config.batch_size, train_config.dtype) == (128, "bfloat16")
            assert train_config.dataset == "PKU-Alignment/PKU-SafeRLHF-30K"


def test_the_baselines_chain_their_stages_through_exports(tmp_path):
    """SACPO's stage 2 starts from and is referenced to stage 1's export (no --ref-model, so
    the reference is the model it starts from); P-SACPO merges stage 1 with SACPO; the PPO
    run reads the reward and cost models trained before it."""
    config = run.load_config("alpaca7b_baselines")
    stages = {s.name: s for s in run.plan(config, tmp_path)}
    group = tmp_path / config["group"]
    names = list(stages)
    for beta in ("0.1", "0.05", "0.025", "0.01"):
        stage2, _ = parse_args(list(stages[f"sacpo_dpo_b{beta}"].argv))
        assert stage2.model == str(group / "sacpo_helpful" / "hf")
        assert stage2.reference_model == stage2.model and stage2.pairs == "harmless"
        assert stage2.beta == float(beta)
        assert names.index("sacpo_helpful") < names.index(f"sacpo_dpo_b{beta}")
    kto, _ = parse_args(list(stages["sacpo_kto_b0.01"].argv))
    assert (kto.objective, kto.beta, kto.reference_model) == (
        "kto",
        0.01,
        str(group / "sacpo_helpful" / "hf"),
    )
    for q in ("0.25", "0.5", "0.75"):
        merge = stages[f"p_sacpo_q{q}"]
        assert merge.kind == "merge" and merge.argv[:2] == (
            str(group / "sacpo_helpful" / "hf"),
            str(group / "sacpo_dpo_b0.01" / "hf"),
        )
        assert names.index("sacpo_dpo_b0.01") < names.index(f"p_sacpo_q{q}")
    ppo = stages["saferlhf_ppo"]
    assert ppo.kind == "ppo" and ppo.module == "safedpo_jax.train.ppo"
    assert str(group / "reward_model" / "hf") in ppo.argv
    assert str(group / "cost_model" / "hf") in ppo.argv
    assert names.index("cost_model") < names.index("saferlhf_ppo")
    for score in ("reward_model", "cost_model"):
        score_config, _ = parse_args(list(stages[score].argv))
        assert score_config.objective == score.split("_")[0]
        assert (score_config.learning_rate, score_config.weight_decay) == (2e-5, 0.1)


def test_the_paper_runs_are_all_there():
    methods = run.load_config("alpaca7b_methods")
    assert {r["pairs"] for r in methods["runs"].values()} == {
        "safedpo", "helpful", "harmless", "safebetter"
    }  # fmt: skip
    assert methods["runs"]["safedpo_delta10"]["delta"] == 10.0
    deltas = run.load_config("alpaca7b_delta")
    assert sorted(r["delta"] for r in deltas["runs"].values() if r["pairs"] == "safedpo") == [
        0, 2, 5, 10, 20, 50
    ]  # fmt: skip
    sizes = {
        round(est.Shape.from_hf(ARCHS[run.load_config(n)["architecture"]]).params / 1e9)
        for n in CONFIGS
        if n.startswith("scale_")
    }
    assert {2, 3, 8, 13} <= sizes  # 1.5B rounds to 2; 7B/8B from several families
    for name in CONFIGS:
        config = run.load_config(name)
        evaluate = config["evaluate"]["args"]
        assert evaluate["reward_model"] == "PKU-Alignment/beaver-7b-unified-reward"
        assert evaluate["cost_model"] == "PKU-Alignment/beaver-7b-unified-cost"
        assert config["evaluate"]["runs"][0] == "reference"


@pytest.mark.parametrize("hub_id", sorted(ARCHS))
def test_tiny_stand_ins_keep_the_family_switches(hub_id):
    real = DecoderConfig.from_hf(ARCHS[hub_id])
    tiny = DecoderConfig.from_hf({**run.tiny_architecture(ARCHS[hub_id]), "vocab_size": 100})
    for switch in ("model_type", "architectures", "tie_word_embeddings", "qkv_bias", "o_bias",
                   "qk_norm", "rope_type", "rope_scaling", "rope_theta"):  # fmt: skip
        assert getattr(tiny, switch) == getattr(real, switch), switch
    ratio = lambda c: c.num_attention_heads // c.num_key_value_heads
    assert ratio(tiny) == ratio(real)
    assert set(tiny.layer_types) == set(real.layer_types)
    assert tiny.num_hidden_layers == 1 and tiny.hidden_size <= 256


def test_meshes_scale_onto_eight_devices():
    fsdp = {"mesh_data": 1, "mesh_fsdp": -1, "mesh_tensor": 1}
    assert run.scaled_mesh(fsdp, 8) == (1, 8, 1)
    assert run.scaled_mesh(fsdp, 4) == (1, 4, 1)
    assert run.scaled_mesh(fsdp, 64) == (1, 8, 1)
    assert run.scaled_mesh({"mesh_data": 4, "mesh_fsdp": -1, "mesh_tensor": 4}, 64) == (2, 2, 2)


def test_multi_host_launch_adds_distributed_and_defers_evaluation(capsys):
    assert run.main(["alpaca7b_methods", "--plan", "--distributed", "--runs-dir", "/r"]) == 0
    out = capsys.readouterr().out
    train_lines = [line for line in out.splitlines() if "-m safedpo_jax.train" in line]
    assert len(train_lines) == 4
    assert all("--distributed true" in line for line in train_lines)
    assert "-m safedpo_jax.evaluate" in out and "--stages evaluate" in out
    assert "v5p-16" in out and "MFU 40% assumed" in out


def test_the_evaluation_command_parses():
    pytest.importorskip("safedpo_jax.evaluate.cli")
    config = run.load_config("scale_qwen2.5-1.5b")
    stage = run.plan(config, "/r", stages=("evaluate",))[0]
    assert run._parse_evaluate(stage.argv)


def test_docstring_examples():
    for module in (est, run):
        assert doctest.testmod(module).failed == 0


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_dry_run_parses_builds_the_mesh_and_compiles(name, tmp_path):
    config = run.load_config(name)
    results = run.dry_run(config, tmp_path)
    stages = [r for r in results if r["stage"] != "evaluate"]
    assert [r["stage"] for r in stages] == list(run.stage_fields(config, tmp_path))
    chips = est.Pod.parse(config["pods"][0]).chips
    for r in stages:
        if "merged" in r:  # P-SACPO's merge of two earlier exports
            assert (Path(r["merged"]) / "config.json").exists()
            continue
        if "config" not in r:  # PPO-Lagrangian: its own config and loop
            assert r["step"] == run.DRY_RUN_STEPS, r
            continue
        c = r["config"]
        assert (c.mesh_data, c.mesh_fsdp, c.mesh_tensor) == run.scaled_mesh(c.__dict__, chips)
        if "same_program_as" in r:  # compiled earlier in this process, maybe by another config
            assert run.COMPILED[run.program_key(c)] == r["same_program_as"]
        else:
            assert r["step"] == run.DRY_RUN_STEPS and np.isfinite(r["loss"]), r
    if "sft" in config:  # the preference runs start from the SFT stage's exported model
        assert "same_program_as" not in stages[0]
        assert (tmp_path / config["group"] / "sft" / "hf" / "config.json").exists()
        assert all(r["config"].model.endswith("sft/hf") for r in stages[1:])
        assert "same_program_as" not in stages[1]  # a new model: compiled


def test_dry_run_compiles_one_model_program_per_distinct_setup(tmp_path):
    """Stages that differ only in constants or pairs share a program; others do not."""
    config = run.load_config("alpaca7b_methods")
    base = run.stage_fields(config, tmp_path)
    argv = lambda fields: list(run.plan({**config, "runs": {"x": fields}}, tmp_path)[0].argv)
    key = lambda fields: run.program_key(parse_args(argv(fields))[0])
    safedpo, helpful = base["safedpo_delta10"], base["dpo_helpful"]
    assert key(safedpo) == key(helpful) == key({**safedpo, "delta": 50.0, "output_dir": "o"})
    assert key(safedpo) != key({**safedpo, "micro_batches": 2})
    assert key(safedpo) != key({**safedpo, "remat": False})
