"""``python -m safedpo_jax.data``, run as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from datahelpers import TABLE

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "safedpo_jax.data", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_summary_ends_with_one_json_line():
    out = run("sample", "--split", "train", "--pairs", "safedpo", "--max-length", "64")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["rows"] == 2160
    # The pku sample's train cells: 890 safe>safe, 265 safe>unsafe, 50 unsafe>safe (swapped),
    # 955 unsafe>unsafe (dropped); 2160 - 955 = 1205 pairs kept.
    assert summary["pairs"] == 1205 and summary["swapped"] == 50
    assert summary["dropped"] == {"both_unsafe": 955} and summary["truncated"] == 0
    assert "pairs kept: 1205" in out.stdout and "both_unsafe: 955" in out.stdout


def test_bad_input_exits_non_zero_with_the_message(tmp_path):
    table = [dict(r) for r in TABLE]
    table[1]["better_response_id"] = 7
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in table))
    cache = str(tmp_path / "cache")
    out = run(str(path), "--pairs", "helpful", "--cache-dir", cache)
    assert out.returncode == 2 and out.stdout == ""
    assert f"{path}: row 1: column 'better_response_id': expected 0 or 1, got int 7" in out.stderr
    assert "Traceback" not in out.stderr
    # --on-error drop counts it instead; no tokenizer -> truncated is null.
    out = run(str(path), "--pairs", "helpful", "--on-error", "drop", "--cache-dir", cache)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.splitlines()[-1])
    assert summary["rows"] == 5 and summary["pairs"] == 4 and summary["truncated"] is None
    assert summary["dropped"] == {"invalid_response_id": 1}
    missing = run(str(tmp_path / "missing.jsonl"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
