"""Tables, the plot and the failure-case report."""

import json

import pytest

from safedpo_jax.evaluate.metrics import ScoredResponse
from safedpo_jax.evaluate.report import (
    failure_cases,
    failures_markdown,
    metrics_markdown,
    run_dirname,
    tradeoff_ylabel,
    write_report,
)


def _records(costs, rewards, prefix):
    return [
        ScoredResponse(f"{prefix} prompt {i}", f"{prefix} response {i}", reward=r, cost=c)
        for i, (c, r) in enumerate(zip(costs, rewards, strict=True))
    ]


RUNS = {
    "sft": _records([1.0, -1.0, 2.0, -1.0], [1.0, 1.0, 1.0, 1.0], "sft"),
    "dpo-helpful": _records([3.0, 1.0, 2.0, -1.0], [3.0, 3.0, 3.0, 3.0], "helpful"),
    "safedpo": _records([-1.0, -1.0, 0.5, -2.0], [2.0, 1.5, 2.5, 2.0], "safedpo"),
}


def test_write_report_writes_tables_plot_and_failures(tmp_path):
    report = write_report(
        tmp_path, RUNS, sft_run="sft", helpful_run="dpo-helpful", settings={"seed": 0}
    )
    by_name = {m.name: m for m in report.metrics}
    assert by_name["safedpo"].helpfulness == pytest.approx(2.0)
    assert by_name["safedpo"].helpfulness_normalized == pytest.approx(5.0)
    assert by_name["safedpo"].harmless_ratio == pytest.approx(0.75)

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["name"] for r in summary["runs"]] == ["sft", "dpo-helpful", "safedpo"]
    assert summary["normalization"] == {
        "sft_run": "sft",
        "helpful_run": "dpo-helpful",
        "inverted": False,
    }
    assert summary["settings"] == {"seed": 0}
    md = (tmp_path / "summary.md").read_text()
    assert "| safedpo | 4 | 5.00 | 2.000 | 0.875 | 75.00% | 1 |" in md
    assert "sft = 0 and dpo-helpful = 10" in md

    png = (tmp_path / "tradeoff.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000

    failures = json.loads((tmp_path / "failures.json").read_text())
    assert [r["cost"] for r in failures["dpo-helpful"]] == [3.0, 2.0, 1.0]
    assert [r["prompt"] for r in failures["safedpo"]] == ["safedpo prompt 2"]
    assert all(r["unsafe"] for rs in failures.values() for r in rs)
    fmd = (tmp_path / "failures.md").read_text()
    assert "## dpo-helpful: 3 of 4 responses judged unsafe" in fmd
    assert "helpful response 0" in fmd and "helpful response 3" not in fmd

    for name in RUNS:
        d = tmp_path / "runs" / name
        assert json.loads((d / "metrics.json").read_text())["name"] == name
        assert (d / "metrics.md").read_text().startswith(f"# {name}")
        lines = (d / "responses.jsonl").read_text().splitlines()
        assert [ScoredResponse.from_dict(json.loads(s)) for s in lines] == RUNS[name]
        assert len(json.loads((d / "failures.json").read_text())) == sum(
            r.cost > 0 for r in RUNS[name]
        )
    assert report.files["plot"] == tmp_path / "tradeoff.png"


def test_without_anchors_reports_raw_helpfulness(tmp_path):
    report = write_report(tmp_path, {"a": RUNS["sft"]})
    assert report.metrics[0].helpfulness_normalized is None
    assert "| a | 4 | - | 1.000 |" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "tradeoff.png").exists()


def test_anchor_errors(tmp_path):
    with pytest.raises(ValueError, match="both"):
        write_report(tmp_path, RUNS, sft_run="sft")
    with pytest.raises(ValueError, match="not among"):
        write_report(tmp_path, RUNS, sft_run="base", helpful_run="dpo-helpful")
    with pytest.raises(ValueError, match="collide"):
        write_report(tmp_path, {"a/b": RUNS["sft"], "a b": RUNS["sft"]})


def test_equal_anchors_leave_helpfulness_raw_with_a_note(tmp_path):
    report = write_report(
        tmp_path, {"a": RUNS["sft"], "b": RUNS["sft"]}, sft_run="a", helpful_run="b"
    )
    assert all(m.helpfulness_normalized is None for m in report.metrics)
    assert "not normalised" in (tmp_path / "summary.md").read_text()
    assert (
        "distinct" in json.loads((tmp_path / "summary.json").read_text())["normalization"]["error"]
    )


def test_failure_markdown_survives_backticks_and_pipes():
    r = ScoredResponse("p | q", "```python\nrm -rf /\n```", reward=0.0, cost=1.0)
    md = failures_markdown({"run|1": [r]})
    assert "````text\n```python\nrm -rf /\n```\n````" in md
    assert failure_cases([r]) == [r]
    table = metrics_markdown([])
    assert table.count("\n") == 2  # header and rule only


def test_run_dirname():
    assert run_dirname("runs/safedpo") == "runs_safedpo"
    assert run_dirname("") == "_"


def test_an_inverted_scale_is_reported_and_warned(tmp_path):
    # DPO-HELPFUL (mean reward 1) below SFT (mean reward 3): higher normalised = less helpful.
    runs = {"sft": RUNS["dpo-helpful"], "dpo-helpful": RUNS["sft"], "safedpo": RUNS["safedpo"]}
    with pytest.warns(UserWarning, match=r"inverted: dpo-helpful \(1\) scores below sft \(3\)"):
        report = write_report(tmp_path, runs, sft_run="sft", helpful_run="dpo-helpful")
    by_name = {m.name: m.helpfulness_normalized for m in report.metrics}
    assert by_name["sft"] == 0.0 and by_name["dpo-helpful"] == 10.0
    assert by_name["safedpo"] == pytest.approx(10 * (2.0 - 3.0) / (1.0 - 3.0))
    assert "inverted" in (tmp_path / "summary.md").read_text()
    normalization = json.loads((tmp_path / "summary.json").read_text())["normalization"]
    assert normalization["inverted"] is True
    assert "INVERTED" in tradeoff_ylabel(report.metrics, inverted=True)
    assert "INVERTED" not in tradeoff_ylabel(report.metrics, inverted=False)
    # The usual order warns about nothing (warnings are errors here) and says so.
    write_report(tmp_path / "ok", RUNS, sft_run="sft", helpful_run="dpo-helpful")
    ok = json.loads((tmp_path / "ok" / "summary.json").read_text())["normalization"]
    assert ok["inverted"] is False
