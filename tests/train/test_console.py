"""What a training run prints: held-out lines and the closing summary."""

from __future__ import annotations

from safedpo_jax.train.console import closing_summary, eval_line, number


def test_numbers_have_four_significant_digits_and_no_exponent_in_ordinary_ranges():
    cases = {
        3.11253: "3.113",
        0.5: "0.5000",
        1883.34: "1883",
        12.345: "12.35",
        -0.03125: "-0.03125",
    }
    for value, text in cases.items():
        assert number(value) == text
    assert number(2.5e-9) == "2.5e-09" and number(1.5e7) == "1.5e+07"
    assert number(0.0) == "0" and number(float("nan")) == "nan"


def test_eval_line_shows_the_headline_metrics_in_order_without_the_prefix():
    line = eval_line(
        40, {"eval/rewards/margins": 0.25, "eval/loss": 0.6, "eval/logps/chosen": -90.0}
    )
    assert line == "held-out      step 40   loss 0.6000   rewards/margins 0.2500"


def test_closing_summary_of_a_resumed_run_without_export(tmp_path):
    text = closing_summary(
        steps=120,
        seconds=3725,
        resumed_from=100,
        metrics={"loss": 0.25, "tokens_per_s": 1234.6, "rewards/accuracies": 0.75},
        eval_metrics={},
        output_dir=tmp_path,
        export_dir=None,
    )
    lines = text.splitlines()
    assert lines[0] == (
        "done          120 steps in 1 h 02 min (resumed from step 100), "
        "1235 tokens/s (last log window)"
    )
    assert lines[1] == "train         loss 0.2500   rewards/accuracies 0.7500"
    assert lines[2] == f"outputs       {tmp_path}/"
    assert "held-out" not in text and "hf/" not in text
    # the file rows line up under one column
    assert len({line.index(line.split()[1]) for line in lines[3:]}) == 1
