"""--report-to: TensorBoard, Weights & Biases (process 0 only), or neither; metrics.jsonl always.

wandb is optional and not a dependency: the W&B tests drive `MetricsLog` against a module
that records the calls the W&B API receives, and, when wandb is installed, against wandb
itself in offline mode (no network)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from safedpo_jax.train.config import from_preset
from safedpo_jax.train.metrics_log import WANDB_ID_FILE, MetricsLog


class _Recorder:
    """Stands in for the ``wandb`` module: records init / log / finish calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.util = types.SimpleNamespace(generate_id=lambda: f"id{len(self.calls)}")

    def init(self, **kwargs):
        self.calls.append(("init", kwargs))
        recorder = self

        class Run:
            def log(self, data, step):
                recorder.calls.append(("log", {"data": data, "step": step}))

            def finish(self):
                recorder.calls.append(("finish", {}))

        return Run()


@pytest.fixture
def recorder(monkeypatch):
    module = _Recorder()
    monkeypatch.setitem(sys.modules, "wandb", module)
    monkeypatch.setenv("WANDB_PROJECT", "my-project")
    return module


def _config(report_to: str, **kw):
    return from_preset("tiny", report_to=report_to, **kw)


def test_wandb_gets_every_record_with_its_step_and_the_whole_config(tmp_path, recorder):
    out = tmp_path / "run-a"
    log = MetricsLog.for_run(_config("wandb"), out, enabled=True)
    log.write(5, {"loss": 0.5, "rewards/accuracies": 0.75})
    log.write(10, {"eval/loss": 0.25})
    log.close()
    kinds = [k for k, _ in recorder.calls]
    assert kinds == ["init", "log", "log", "finish"]
    init = recorder.calls[0][1]
    assert init["project"] == "my-project" and init["name"] == "run-a"
    assert init["dir"] == str(out) and init["resume"] == "allow"
    assert init["config"]["report_to"] == "wandb" and init["config"]["beta"] == 0.1
    assert recorder.calls[1][1] == {"data": {"loss": 0.5, "rewards/accuracies": 0.75}, "step": 5}
    assert recorder.calls[2][1] == {"data": {"eval/loss": 0.25}, "step": 10}
    assert not (out / "tensorboard").exists()  # wandb only
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [
        5,
        10,
    ]
    # a resumed run continues the same W&B run (same id), under --run-name when given
    first_id = init["id"]
    assert (out / WANDB_ID_FILE).read_text().strip() == first_id
    log = MetricsLog.for_run(_config("all", run_name="mine"), out, enabled=True)
    log.write(1, {"loss": 1.0})  # TensorBoard's writer opens at the first record
    log.close()
    again = recorder.calls[4][1]
    assert again["id"] == first_id and again["name"] == "mine"
    assert (out / "tensorboard").is_dir()  # all = both


def test_only_the_primary_process_logs(tmp_path, recorder):
    log = MetricsLog.for_run(_config("all"), tmp_path / "run", enabled=False)
    log.write(1, {"loss": 1.0})
    log.close()
    assert recorder.calls == []
    assert not (tmp_path / "run").exists()


def test_report_to_none_writes_metrics_jsonl_only(tmp_path, recorder):
    log = MetricsLog.for_run(_config("none"), tmp_path, enabled=True)
    log.write(1, {"loss": 1.0})
    log.close()
    assert recorder.calls == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_missing_wandb_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with pytest.raises(RuntimeError, match="--report-to wandb needs the wandb package"):
        MetricsLog.for_run(_config("wandb"), tmp_path, enabled=True)


def test_real_wandb_offline(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    log = MetricsLog.for_run(_config("wandb"), tmp_path, enabled=True)
    log.write(3, {"loss": 0.5})
    log.close()
    runs = list(Path(tmp_path, "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))
    assert wandb.run is None
