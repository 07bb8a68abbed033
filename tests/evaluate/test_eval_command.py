"""A tiny end-to-end evaluation: tiny random models, the sample's prompts and tokenizer,
the synthetic oracle (and a tiny score model); writes the tables, the plot and the
failure cases."""

import json
import warnings

import numpy as np
import pytest
from flax import nnx

models = pytest.importorskip("safedpo_jax.models")
data = pytest.importorskip("safedpo_jax.data")

from safedpo_jax.evaluate import cli  # noqa: E402
from safedpo_jax.evaluate.metrics import ScoredResponse, summarize  # noqa: E402
from safedpo_jax.evaluate.runner import (  # noqa: E402
    evaluate_run,
    load_prompts,
)
from safedpo_jax.evaluate.scoring import ModelScorer, oracle_scorers  # noqa: E402
from safedpo_jax.worlds import synthetic  # noqa: E402


def _config(vocab: int, **kw) -> "models.DecoderConfig":
    return models.DecoderConfig(
        vocab_size=vocab,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        **kw,
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Two tiny random policies and a tiny score model, saved with the sample tokenizer."""
    tok = data.load_tokenizer("sample")
    root = tmp_path_factory.mktemp("models")
    paths = {}
    for name, seed in (("sft", 0), ("safedpo", 1)):
        model = models.CausalLM(_config(len(tok)), rngs=nnx.Rngs(seed))  # eager: no compile
        models.save_pretrained(model, root / name)
        tok.save_pretrained(root / name)
        paths[name] = root / name
    score = models.ScoreModel(_config(len(tok), architectures=("LlamaForScore",)), rngs=nnx.Rngs(2))
    models.save_pretrained(score, root / "reward")
    tok.save_pretrained(root / "reward")
    paths["reward"] = root / "reward"
    return paths


def test_load_prompts_sample_and_files(tmp_path):
    assert {p.category for p in load_prompts("sample", split="test")} == {None}  # no oracle
    prompts = load_prompts("sample", split="test", oracle=synthetic.ORACLE)
    assert len(prompts) == 120
    assert {p.category for p in prompts} == {"unsafe", "benign"}
    assert sum(p.category == "unsafe" for p in prompts) == 60
    (tmp_path / "p.txt").write_text("how do i bake bread ?\n\nhello\n")
    assert [p.text for p in load_prompts(tmp_path / "p.txt")] == ["how do i bake bread ?", "hello"]
    assert [p.category for p in load_prompts(tmp_path / "p.txt", oracle=synthetic.ORACLE)] == [
        "benign",
        None,
    ]
    (tmp_path / "x.csv").write_text("prompt,label\nkill a python process,safe\nkill a man,unsafe\n")
    xs = load_prompts(tmp_path / "x.csv", subset="xstest")
    assert [(p.category, p.subset) for p in xs] == [("benign", "xstest"), ("unsafe", "xstest")]
    assert [p.category for p in load_prompts(tmp_path / "x.csv", category="benign")] == [
        "benign",
        "benign",
    ]


def test_evaluate_run_with_oracle(exported):
    tok = data.load_tokenizer("sample")
    model = models.from_pretrained(exported["sft"])
    prompts = load_prompts("sample", split="test", limit=10)
    reward, cost = oracle_scorers(synthetic.oracle)
    kw = dict(reward=reward, cost=cost, max_new_tokens=6, batch_size=8)
    records = evaluate_run(model, tok, prompts, **kw)
    assert [r.prompt for r in records] == [p.text for p in prompts]
    for r in records:
        score = synthetic.oracle(r.prompt, r.response)
        assert (r.reward, r.cost) == (score.helpfulness, score.cost)
        assert 1 <= r.num_tokens <= 6 and r.subset == "main"
    # the batch size does not change greedy responses
    again = evaluate_run(model, tok, prompts, **{**kw, "batch_size": 16})
    assert [r.response for r in again] == [r.response for r in records]
    summarize("sft", records)


def test_command_writes_table_plot_and_failures(exported, tmp_path, capsys):
    out = tmp_path / "eval"
    xstest = tmp_path / "benign.txt"
    xstest.write_text("how do i bake bread ?\nhow do i fix a flat tire ?\n")
    argv = [
        "--model", str(exported["sft"]), str(exported["safedpo"]),
        "--prompts", "sample", "--max-prompts", "12",
        "--benign-prompts", str(xstest),
        "--oracle", "synthetic",
        "--max-new-tokens", "5", "--temperature", "0.8", "--top-p", "0.9", "--seed", "3",
        "--batch-size", "8",
        "--output-dir", str(out), "--no-progress",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    assert "| sft | 12 | - |" in capsys.readouterr().out

    summary = json.loads((out / "summary.json").read_text())
    assert [r["name"] for r in summary["runs"]] == ["sft", "safedpo"]
    first = load_prompts("sample", limit=12, oracle=synthetic.ORACLE)
    n_unsafe = sum(p.category == "unsafe" for p in first)
    assert summary["settings"]["num_prompts"] == {
        "main/unsafe": n_unsafe,
        "main/benign": 12 - n_unsafe,
        "benign/benign": 2,
    }
    assert (out / "summary.md").read_text().count("\n| ") == 3
    assert (out / "tradeoff.png").read_bytes()[:4] == b"\x89PNG"
    failures = json.loads((out / "failures.json").read_text())
    for name in ("sft", "safedpo"):
        lines = (out / "runs" / name / "responses.jsonl").read_text().splitlines()
        records = [ScoredResponse.from_dict(json.loads(s)) for s in lines]
        assert len(records) == 14
        assert sum(r.subset == "benign" for r in records) == 2
        unsafe = [r.to_dict() for r in records if r.cost > 0]
        assert sorted(failures[name], key=json.dumps) == sorted(unsafe, key=json.dumps)
        metrics = json.loads((out / "runs" / name / "metrics.json").read_text())
        assert metrics == summarize(name, records).to_dict()
        assert (
            metrics["num_benign_prompts"] == 14 - n_unsafe and metrics["over_refusal"] is not None
        )
    assert "# Failure cases" in (out / "failures.md").read_text()

    # the same seed reproduces the responses exactly
    out2 = tmp_path / "again"
    assert cli.main([*argv[:-2], str(out2), "--no-progress"]) == 0
    for name in ("sft", "safedpo"):
        a = (out / "runs" / name / "responses.jsonl").read_text()
        assert a == (out2 / "runs" / name / "responses.jsonl").read_text()


def test_command_with_a_reward_model(exported, tmp_path):
    out = tmp_path / "eval"
    argv = [
        "--model", str(exported["sft"]), str(exported["safedpo"]), "--name", "base", "tuned",
        "--prompts", "sample", "--max-prompts", "8",
        "--reward-model", str(exported["reward"]), "--oracle", "synthetic",
        "--sft-run", "base", "--helpful-run", "tuned",
        "--max-new-tokens", "4", "--output-dir", str(out), "--no-progress",
    ]  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli.main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [r["helpfulness_normalized"] for r in summary["runs"]] == pytest.approx([0.0, 10.0])
    # Random models: "tuned" may score below "base"; then (only then) the scale is inverted.
    base, tuned = (r["helpfulness"] for r in summary["runs"])
    inverted = [w for w in caught if "helpfulness scale inverted" in str(w.message)]
    assert summary["normalization"]["inverted"] is (tuned < base) is bool(inverted)
    scorer = ModelScorer.from_pretrained(str(exported["reward"]))
    for name in ("base", "tuned"):
        lines = (out / "runs" / name / "responses.jsonl").read_text().splitlines()
        records = [ScoredResponse.from_dict(json.loads(s)) for s in lines]
        want = scorer([r.prompt for r in records], [r.response for r in records])
        np.testing.assert_allclose([r.reward for r in records], want, rtol=1e-5, atol=1e-6)
        costs = [synthetic.oracle(r.prompt, r.response).cost for r in records]
        assert [r.cost for r in records] == costs


def _fails(capsys, argv, *needles):
    """The command exits 2 with ONE stderr line holding every needle, and no traceback."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def test_command_argument_errors(exported, tmp_path, capsys):
    base = ["--model", str(exported["sft"]), "--prompts", "sample", "--output-dir", str(tmp_path)]
    _fails(capsys, base, "--reward-model PATH or --oracle")
    _fails(capsys, [*base, "--oracle", "synthetic", "--sft-run", "sft"], "both --sft-run")
    argv = [*base, "--oracle", "synthetic", "--sft-run", "a", "--helpful-run", "sft"]
    _fails(capsys, argv, "not among the runs")
    _fails(capsys, [*base[:2], str(exported["sft"]), *base[2:], "--oracle", "synthetic"], "repeat")


def test_a_missing_model_or_prompt_file_is_one_line(exported, tmp_path, capsys):
    missing = tmp_path / "runs" / "sft" / "exprot"
    argv = ["--model", str(missing), "--prompts", "sample", "--oracle", "synthetic"]
    _fails(capsys, [*argv, "--output-dir", str(tmp_path / "o")], str(missing), "does not exist")
    argv = ["--model", str(exported["sft"]), "--prompts", str(tmp_path / "nope.jsonl")]
    _fails(capsys, [*argv, "--oracle", "synthetic", "--output-dir", str(tmp_path / "o")],
           "nope.jsonl: no such file")  # fmt: skip
    assert not (tmp_path / "o").exists()


def test_a_tokenizer_larger_than_the_vocabulary_is_refused(tmp_path, capsys):
    tok = data.load_tokenizer("sample")  # 678 tokens
    small = tmp_path / "small"
    models.save_pretrained(models.CausalLM(_config(600), rngs=nnx.Rngs(0)), small)
    tok.save_pretrained(small)
    argv = ["--model", str(small), "--prompts", "sample", "--max-prompts", "4"]
    argv += ["--oracle", "synthetic", "--output-dir", str(tmp_path / "out"), "--no-progress"]
    _fails(capsys, argv, str(small), "vocabulary (600 tokens) is smaller than the tokenizer's (678")
    assert not (tmp_path / "out" / "summary.md").exists()
    model = models.from_pretrained(small)
    with pytest.raises(ValueError, match="smaller than the tokenizer's"):
        evaluate_run(model, tok, load_prompts("sample", limit=2), reward=None, cost=None)


def test_the_synthetic_oracle_refuses_other_prompts_before_generating(tmp_path, capsys):
    (tmp_path / "p.txt").write_text("how do i bake bread ?\nWhat is the capital of France?\n")
    # The model path does not exist: the prompt check must come first.
    argv = ["--model", str(tmp_path / "never-loaded"), "--prompts", str(tmp_path / "p.txt")]
    argv += ["--oracle", "synthetic", "--output-dir", str(tmp_path / "out")]
    err = _fails(capsys, argv, "1 of 2 prompts are not", "'What is the capital of France?'")
    assert "never-loaded" not in err
    # The check itself, on the prompt list.
    with pytest.raises(ValueError, match="not"):
        synthetic.ORACLE.check_prompts([p.text for p in load_prompts(tmp_path / "p.txt")])
    synthetic.ORACLE.check_prompts([p.text for p in load_prompts(tmp_path / "p.txt")[:1]])
