"""The output directory: identity check before resuming, overwrite, the lock, TensorBoard.

The tests that launch `train` failed on v0.1: a relaunch with another beta, learning
rate, step budget or architecture resumed (or declared the old checkpoints "damaged"),
a second launch on a locked directory ran, and a resumed run's TensorBoard events held
the redone steps twice.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from test_train import MICRO, ROOT, micro_config, read_metrics

from safedpo_jax.train import rundir
from safedpo_jax.train.loop import train
from safedpo_jax.train.metrics_log import MetricsLog, read_scalars


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (relative name -> bytes)."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != rundir.LOCK_FILE
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 2-step run, saved at step 2; each test works on its own copy."""
    base = tmp_path_factory.mktemp("finished")
    train(micro_config(base, "run", max_steps=2, save_every=2, eval_split=None))
    return base


def copy_run(finished_run: Path, tmp_path: Path) -> Path:
    shutil.copytree(finished_run / "run", tmp_path / "run")
    return tmp_path / "run"


CHANGES = {
    "beta": {"beta": 0.2},
    "delta": {"delta": 3.0},
    "learning_rate": {"learning_rate": 5e-3},
    "max_steps": {"max_steps": 3},
    "model_config": {"model_config": {**MICRO, "num_hidden_layers": 1}},
}


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_a_different_run_stops_before_touching_anything(finished_run, tmp_path, field):
    run = copy_run(finished_run, tmp_path)
    before = snapshot(run)
    config = micro_config(tmp_path, "run", eval_split=None, **{"max_steps": 2, **CHANGES[field]})
    with pytest.raises(rundir.RunDirMismatch, match=rf"\({field}: .*overwrite-output-dir") as e:
        train(config)
    assert "Nothing was changed" in str(e.value)
    assert snapshot(run) == before  # config.json, checkpoints, metrics untouched
    assert not (run / "checkpoints" / "damaged").exists()


def test_output_and_mesh_fields_may_differ_and_the_run_resumes(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    before = read_metrics(run)
    config = micro_config(
        tmp_path,
        "run",
        eval_split=None,
        max_steps=2,
        save_every=1,
        log_every=2,
        keep_checkpoints=5,
        eval_batches=7,
        mesh_data=2,
        mesh_fsdp=4,
        ref_cache_dir=str(tmp_path / "elsewhere"),
    )
    result = train(config)
    assert result.resumed_from == 2
    assert read_metrics(run) == before
    assert json.loads((run / "config.json").read_text())["save_every"] == 1


def test_overwrite_moves_the_old_run_aside_and_starts_over(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    before = snapshot(run)
    config = micro_config(
        tmp_path, "run", eval_split=None, max_steps=2, beta=0.2, overwrite_output_dir=True
    )
    result = train(config)
    assert result.resumed_from is None
    (aside,) = tmp_path.glob("run.replaced-*")
    assert snapshot(aside) == before
    assert json.loads((run / "config.json").read_text())["beta"] == 0.2
    assert [r["step"] for r in read_metrics(run)] == [1, 2]


def test_a_directory_with_checkpoints_but_no_config_is_refused(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    (run / "config.json").unlink()
    with pytest.raises(rundir.RunDirMismatch, match="no config.json"):
        train(micro_config(tmp_path, "run", eval_split=None, max_steps=2))
    assert not (run / "config.json").exists()


def test_differing_fields_treats_a_missing_field_at_its_default_as_equal():
    launch = json.loads(micro_config(Path("/x"), "run").to_json())
    on_disk = {k: v for k, v in launch.items() if k != "overwrite_output_dir"}
    assert rundir.differing_fields(on_disk, launch) == []
    on_disk.pop("label_smoothing")  # default 0.0 on both sides
    assert rundir.differing_fields(on_disk, launch) == []
    assert rundir.differing_fields(on_disk, {**launch, "label_smoothing": 0.1}) == [
        "label_smoothing"
    ]
    assert rundir.differing_fields({**on_disk, "seed": 1}, launch) == ["seed"]


# ------------------------------------------------------------------------------- the lock
def test_a_second_launch_on_a_locked_directory_refuses(tmp_path):
    config = micro_config(tmp_path, "run", eval_split=None, max_steps=1)
    with rundir.claim(config):
        before = snapshot(tmp_path / "run")
        with pytest.raises(rundir.RunDirLocked, match=r"in use by another launch \(pid \d+"):
            train(config)
        assert snapshot(tmp_path / "run") == before
    # Released at the end of the first launch: the next one may claim the directory.
    with rundir.claim(config) as directory:
        assert directory == tmp_path / "run"


def test_the_lock_of_another_process_is_respected_and_dies_with_it(tmp_path):
    config = micro_config(tmp_path, "run", eval_split=None, max_steps=1)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.write(fd, b'pid holder'); print('locked', flush=True); time.sleep(60)\n",
            str(tmp_path / "run" / rundir.LOCK_FILE),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    (tmp_path / "run").mkdir()
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(rundir.RunDirLocked, match="pid holder"):
            train(config)
        assert not (tmp_path / "run" / "config.json").exists()
    finally:
        holder.kill()
        holder.communicate()
    with rundir.claim(config):  # kill -9 released it
        assert (tmp_path / "run" / "config.json").exists()


# ---------------------------------------------------------------------------- TensorBoard
def test_metrics_log_truncation_cuts_tensorboard_events_too(tmp_path):
    first = MetricsLog(tmp_path, enabled=True)
    for step in (1, 2, 3, 4):
        first.write(step, {"loss": float(step), "grad_norm": 10.0 * step})
    first.close()  # killed after step 4; the newest checkpoint is step 2
    resumed = MetricsLog(tmp_path, enabled=True)
    resumed.truncate_after(2)
    for step in (3, 4):
        resumed.write(step, {"loss": step + 0.5, "grad_norm": 10.0 * step})
    resumed.close()
    scalars = sorted(read_scalars(tmp_path / "tensorboard"))
    assert scalars == sorted(
        [("loss", 1, 1.0), ("loss", 2, 2.0), ("loss", 3, 3.5), ("loss", 4, 4.5)]
        + [("grad_norm", s, 10.0 * s) for s in (1, 2, 3, 4)]
    )
    assert [r["loss"] for r in resumed.read()] == [1.0, 2.0, 3.5, 4.5]


@pytest.mark.slow
def test_after_a_resume_tensorboard_holds_each_step_once(tmp_path):
    config = micro_config(tmp_path, "run", eval_split=None, max_steps=4, save_every=2)
    train(config)
    straight = Counter(
        (tag, step) for tag, step, _ in read_scalars(tmp_path / "run" / "tensorboard")
    )
    assert {s for _, s in straight} == {1, 2, 3, 4}
    # As if killed after logging step 4 but before its checkpoint was written.
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "4")
    assert train(config).resumed_from == 2
    scalars = read_scalars(tmp_path / "run" / "tensorboard")
    counts = Counter((tag, step) for tag, step, _ in scalars)
    assert counts == straight and set(counts.values()) == {1}
    # The values are those of metrics.jsonl (the redone steps).
    jsonl = {(k, r["step"]): v for r in read_metrics(tmp_path / "run") for k, v in r.items()}
    for tag, step, value in scalars:
        if tag != "tokens_per_s":
            assert value == pytest.approx(jsonl[(tag, step)], rel=1e-6), (tag, step)
    # Killed before the first checkpoint: the relaunch starts over and the records of the
    # lost launch go, from both outputs.
    shutil.rmtree(tmp_path / "run" / "checkpoints")
    assert train(config).resumed_from is None
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2, 3, 4]
    again = Counter((tag, step) for tag, step, _ in read_scalars(tmp_path / "run" / "tensorboard"))
    assert again == straight


def test_check_identity_and_move_aside_on_a_recorded_config(tmp_path):
    config = micro_config(tmp_path, "run")
    run = tmp_path / "run"
    assert rundir.check_identity(run, config) is False  # nothing there yet
    with rundir.claim(config):
        pass
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    assert rundir.check_identity(run, config) is False  # the same run: resume
    assert rundir.check_identity(run, config.replace(save_every=7)) is False
    with pytest.raises(rundir.RunDirMismatch, match=r"\(beta: 0\.1 -> 0\.3; seed: 42 -> 1\)"):
        rundir.check_identity(run, config.replace(beta=0.3, seed=1))
    # --overwrite-output-dir starts over whether or not the run matches.
    assert rundir.check_identity(run, config.replace(overwrite_output_dir=True)) is True
    with rundir.claim(config.replace(beta=0.3, overwrite_output_dir=True)):
        (aside,) = tmp_path.glob("run.replaced-*")
        assert sorted(p.name for p in aside.iterdir()) == ["config.json", "metrics.jsonl"]
        assert sorted(p.name for p in run.iterdir()) == [rundir.LOCK_FILE, "config.json"]
    assert json.loads((run / "config.json").read_text())["beta"] == 0.3
