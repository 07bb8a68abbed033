"""What the benchmark scripts share: model sizes, FLOP counts, the matmul peak, memory, timing.

Conventions (RESULTS.md repeats them):

- Time: `time.perf_counter` around a call that ends with a host sync; the first calls
  (compilation, warm-up) are reported apart and left out; figures are medians.
- Peak memory: the resident-set high-water mark (``VmHWM``) of a fresh subprocess per
  configuration (XLA's CPU client keeps no device memory statistics), reset after the
  warm-up (and after ``malloc_trim`` returns freed heap pages) so that compilation and
  start-up are left out: the peak of the steps alone, runtime and weights included.
- FLOPs (`train_flops`): matmul FLOPs of the model as executed: ``2 * N`` per token for a
  forward pass and ``6 * N`` for forward and backward, N the matmul parameters (every
  weight except the input embedding, which is a gather; the LM head counts), plus
  attention's ``QK^T`` and ``AV``, ``4 * T^2 * D`` per sequence and layer forward (all
  T^2 scores, as XLA computes them under a causal mask), times 3 with the backward. A DPO
  step runs the policy forward and backward over chosen and rejected (2B sequences) and,
  with the reference in the step, the reference forward over the same sequences. Norms,
  rotary, softmax, the log-softmax and the optimizer are not counted.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script from anywhere: the library by path
    sys.path.insert(0, str(ROOT))

# The `tiny` preset's Llama, and one of about 25M parameters (hidden 512, 8 layers) where
# the matmuls dominate, and a 0.27B one for generation. The vocabulary is the caller's.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 176,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
    "small": {
        "hidden_size": 512,
        "intermediate_size": 1536,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
    },
    # issue 19's shape (its vocabulary, 151,936, comes with `--vocab`)
    "issue": {
        "hidden_size": 512,
        "intermediate_size": 1536,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 8,
    },
    # 0.27B (of which embedding and LM head 32.8M each at a 32k vocabulary): generation.
    "medium": {
        "hidden_size": 1024,
        "intermediate_size": 2816,
        "num_hidden_layers": 16,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
    },
}


# The optimizer both sides of a TRL comparison use: AdamW, no warmup, clipping at 1.
LR, BETAS, EPS, WD = 1e-4, (0.9, 0.95), 1e-8, 0.05
# The same AdamW as `TrainConfig` fields (TRL's side: DPOConfig's learning_rate, adam_beta*,
# adam_epsilon, weight_decay from the constants above).
OPTIMIZER_FIELDS = {
    "learning_rate": LR,
    "warmup_ratio": 0.0,
    "weight_decay": WD,
    "adam_b1": BETAS[0],
    "adam_b2": BETAS[1],
    "adam_eps": EPS,
    "max_grad_norm": 1.0,
}


def llama_config(size: str | dict[str, Any], *, vocab_size: int, **ids: int) -> dict[str, Any]:
    """A Hugging Face ``config.json`` dict for a Llama of ``size`` (a `SIZES` name or dict)."""
    dims = SIZES[size] if isinstance(size, str) else size
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": vocab_size,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        **dims,
        **ids,
    }


def matmul_params(config: dict[str, Any]) -> int:
    """N of `train_flops`: every matmul weight (attention, MLP, LM head), no embedding."""
    d, f, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    n, k = config["num_attention_heads"], config["num_key_value_heads"]
    h = config.get("head_dim") or d // n
    attention = d * n * h * 2 + d * k * h * 2  # q, o; k, v
    mlp = 3 * d * f
    return layers * (attention + mlp) + d * config["vocab_size"]


def train_flops(config: dict[str, Any], rows: int, length: int, *, reference: bool) -> float:
    """Model FLOPs of one DPO step over ``rows`` (= 2B) sequences of ``length`` tokens."""
    n = matmul_params(config)
    d_attn = config["num_attention_heads"] * (
        config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    )
    tokens = rows * length
    attention_fwd = 4 * config["num_hidden_layers"] * length * length * d_attn * rows
    policy = 6 * n * tokens + 3 * attention_fwd
    ref = 2 * n * tokens + attention_fwd if reference else 0
    return float(policy + ref)


def matmul_peak_gflops(n: int = 2048, repeats: int = 3) -> tuple[float, float]:
    """One reading of dense float32 matmul throughput through XLA (median of ``repeats``).

    Returns (GFLOP/s by wall clock, GFLOP/s by process CPU time over all cores): the
    second is what the cores deliver while this process runs, whatever else shares them.
    """
    import jax
    import jax.numpy as jnp

    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.random.normal(key_a, (n, n), jnp.float32)
    b = jax.random.normal(key_b, (n, n), jnp.float32)
    f = jax.jit(jnp.matmul)
    f(a, b).block_until_ready()
    runs = [timed_cpu(lambda: f(a, b).block_until_ready()) for _ in range(repeats)]
    wall = median([w for w, _ in runs])
    cpu = median([c for _, c in runs]) / os.cpu_count()
    return 2 * n**3 / wall / 1e9, 2 * n**3 / cpu / 1e9


def timed(fn: Callable[[], Any]) -> float:
    """Seconds of one call (``fn`` must end with a host sync)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def timed_cpu(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds over all threads) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def rss_mib() -> float:
    """This process's current resident set, MiB."""
    return _status_kib("VmRSS") / 1024


def peak_rss_mib() -> float:
    """This process's resident-set high-water mark since start or `reset_peak_rss`, MiB."""
    return _status_kib("VmHWM") / 1024


def reset_peak_rss() -> None:
    """Hands freed heap pages back (glibc ``malloc_trim``), then resets the high-water mark
    to the current resident set (Linux ``clear_refs`` 5): memory that compilation or
    start-up freed but the allocator kept stops counting."""
    import ctypes

    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")


def memory_breakdown_mib() -> dict[str, float]:
    """This process's resident set split by kind (``/proc/self/status``: anonymous,
    file-backed, shared memory) and glibc's heap state (``mallinfo2``: bytes in use and free
    in the ``brk`` arenas, bytes in blocks mapped one by one), MiB."""
    import ctypes

    out = {
        name: round(_status_kib(field) / 1024, 1)
        for name, field in (("rss", "VmRSS"), ("anon", "RssAnon"), ("file", "RssFile"),
                            ("shmem", "RssShmem"))
    }  # fmt: skip

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]  # fmt: skip

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
        info = libc.mallinfo2()
        mib = 1 / 2**20
        out |= {
            "malloc_in_use": round(info.uordblks * mib, 1),
            "malloc_free": round(info.fordblks * mib, 1),
            "malloc_mmapped": round(info.hblkhd * mib, 1),
        }
    except (OSError, AttributeError):
        pass
    return out


def mapped_files_rss_mib(suffix: str) -> dict[str, float]:
    """Resident MiB of this process's mappings of files whose path ends with ``suffix``
    (``/proc/self/smaps``), by path: e.g. the pages of memory-mapped checkpoints."""
    out: dict[str, float] = {}
    path = None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            path = head[5] if len(head) > 5 else None
        elif head and head[0] == "Rss:" and path and path.endswith(suffix):
            out[path] = round(out.get(path, 0.0) + int(head[1]) / 1024, 1)
    return out


class PeakSampler:
    """A thread that samples `memory_breakdown_mib` every ``interval`` seconds and keeps
    the sample of largest resident set since the last `reset`: what the peak was made of
    (the high-water mark itself comes from ``VmHWM``, which sampling can miss)."""

    def __init__(self, interval: float = 0.05):
        import threading

        self.interval, self.peak = interval, memory_breakdown_mib()
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            sample = memory_breakdown_mib()
            with self._lock:
                if sample["rss"] > self.peak["rss"]:
                    self.peak = sample

    def reset(self) -> dict[str, float]:
        """The largest sample since the last reset; starts a new period."""
        with self._lock:
            peak, self.peak = self.peak, memory_breakdown_mib()
        return peak

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_child(args: list[str], timeout: float = 1800) -> dict[str, Any]:
    """Runs this Python on ``args`` and returns the JSON object on its last stdout line."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    out = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env
    )
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> dict[str, Any]:
    """Where and when: CPU model, core count, date, library versions."""
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import jax

    info = {
        "cpu": model,
        "cores": os.cpu_count(),
        "date": datetime.date.today().isoformat(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    return info


class RandomBatchStep:
    """Our compiled DPO step on a fixed batch of random ids (no padding); call = one step.

    ``spec`` is ``"<pairs>x<tokens>"`` with optional suffixes ``:remat`` (rematerialised
    blocks), ``:chunk<N>`` (``logprob_chunk_size = N``; default automatic) and
    ``:cached`` (reference log-probs in the batch instead of the reference in the step) and
    ``:unrolled`` (the decoder's layers as a Python loop instead of `jax.lax.scan`).
    """

    def __init__(self, spec: str, size: str, vocab: int):
        import jax
        import jax.numpy as jnp
        import numpy as np
        from flax import nnx

        from safedpo_jax import models, sharding
        from safedpo_jax.train import objectives as steps_lib
        from safedpo_jax.train.config import from_preset
        from safedpo_jax.train.setup import setup_step

        shape, *options = spec.split(":")
        b, t = (int(x) for x in shape.split("x"))
        self.spec, self.b, self.t = spec, b, t
        remat = "remat" in options
        cached = "cached" in options
        scan_layers = "unrolled" not in options
        chunk = next((int(o[5:]) for o in options if o.startswith("chunk")), None)
        self.hf = llama_config(size, vocab_size=vocab)
        mesh = sharding.make_mesh(1, 1, 1)
        config = from_preset(
            "tiny",
            model_config=self.hf,
            pairs="helpful",
            batch_size=b,
            max_length=t,
            remat=remat,
            logprob_chunk_size=chunk,
            reference="cached" if cached else "in_step",
            warmup_ratio=0.0,
        )
        dc = models.DecoderConfig.from_hf(self.hf)
        build = lambda seed: models.init_model(  # noqa: E731
            dc,
            rngs=nnx.Rngs(seed),
            mesh=mesh,
            remat=remat,
            dtype=jnp.float32,
            scan_layers=scan_layers,
        )
        self.setup = setup_step(config, build(0), mesh, reference=build(1), total_steps=100)
        self.fn = self.setup.compile(reference_in_step=not cached)
        rng = np.random.default_rng(0)
        ids = rng.integers(3, vocab, (b, 2, t)).astype(np.int32)
        loss_mask = np.zeros((b, 2, t), bool)
        loss_mask[:, :, t // 4 :] = True
        ref = rng.normal(-50, 5, (b, 2)).astype(np.float32) if cached else None
        self.batch = steps_lib.StepBatch(
            input_ids=jnp.asarray(ids),
            attention_mask=jnp.ones((b, 2, t), jnp.int32),
            loss_mask=jnp.asarray(loss_mask),
            unsafe=jnp.zeros((b, 2), bool),
            valid=jnp.ones((b,), bool),
            ref_logps=None if ref is None else jnp.asarray(ref),
        )
        self.reference = None if cached else self.setup.reference
        self.state = self.setup.state
        self.mesh, self.jax = mesh, jax
        self.flops = train_flops(self.hf, 2 * b, t, reference=not cached)
        self.times: list[tuple[float, float]] = []
        self.compile_s = timed(self)

    def __call__(self) -> None:
        with self.jax.set_mesh(self.mesh):
            self.state, metrics = self.fn(self.state, self.reference, self.batch)
        metrics["loss"].block_until_ready()


def emit(result: dict[str, Any]) -> None:
    """Prints the result as the one JSON line that ends every benchmark's output."""
    print(json.dumps(result, sort_keys=True), flush=True)
