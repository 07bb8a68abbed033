"""How a model is built and carried: `ModelOptions` (numerics and memory) and `Model` (a handle).

`ModelOptions` gathers the six settings every model constructor takes (compute and
parameter dtype, rematerialisation, attention implementation, matmul precision, scanned or
unrolled layers), so they travel as one frozen value from the command line to
`from_pretrained` / `init_model` instead of loose arguments through every signature.

`Model` is a model split for `jax.jit`: its static graph, its trainable `nnx.Param` state
and the rest (buffers). It is a pytree whose graph is static metadata, so a step can take
a policy or a frozen reference as one argument, and ``model.merge()`` gives the module back.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, get_args

import jax
import jax.numpy as jnp
from flax import nnx

DTypeName = Literal["float32", "bfloat16", "float16"]
DTYPE_NAMES: tuple[str, ...] = get_args(DTypeName)
DTYPES: dict[str, Any] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
AttentionImpl = Literal["xla", "cudnn"]
Precision = Literal["default", "high", "highest"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelOptions:
    """The build options of a model (any family, causal LM or score model).

    dtype: compute dtype of activations and matmuls ("bfloat16" for mixed precision).
    param_dtype: the dtype parameters are stored (and trained) in.
    remat: rematerialise each decoder block in the backward pass (True, False, or a
      `jax.checkpoint` policy name understood by `safedpo_jax.models.decoder`).
    attention_impl: None (XLA's attention) or "cudnn" (flash attention on NVIDIA GPUs).
    precision: matmul precision for float32 ("highest" keeps GPU/TPU log-probs equal to the
      CPU's; None leaves the backend default, TF32 on NVIDIA GPUs).
    scan_layers: apply the stacked decoder blocks with `jax.lax.scan` (True: compile time
      flat in depth) or a Python loop over the same stack (False: the same parameters and
      numbers, compile time growing with depth).

    >>> ModelOptions(dtype="bfloat16").kwargs()["dtype"]
    <class 'jax.numpy.bfloat16'>
    """

    dtype: DTypeName = "float32"
    param_dtype: DTypeName = "float32"
    remat: bool | str = False
    attention_impl: str | None = None
    precision: str | None = "highest"
    scan_layers: bool = True

    def __post_init__(self) -> None:
        for name in ("dtype", "param_dtype"):
            value = getattr(self, name)
            if value not in DTYPES:
                raise ValueError(
                    f"ModelOptions: {name} must be one of {DTYPE_NAMES}, got {value!r}"
                )
        if self.attention_impl not in (None, "xla", "cudnn"):
            raise ValueError(
                f"ModelOptions: attention_impl must be None, 'xla' or 'cudnn', "
                f"got {self.attention_impl!r}"
            )

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `from_pretrained` / `init_model` (dtypes as jnp types)."""
        return {
            "dtype": DTYPES[self.dtype],
            "param_dtype": DTYPES[self.param_dtype],
            "remat": self.remat,
            "attention_impl": None if self.attention_impl == "xla" else self.attention_impl,
            "precision": self.precision,
            "scan_layers": self.scan_layers,
        }


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Model:
    """A split model: static ``graphdef``, trainable ``params`` and the ``rest`` (buffers).

    >>> import jax.numpy as jnp
    >>> m = Model.split(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
    >>> m.merge()(jnp.ones((1, 2))).shape
    (1, 3)
    """

    graphdef: nnx.GraphDef = dataclasses.field(metadata={"static": True})
    params: nnx.State
    rest: nnx.State

    @classmethod
    def split(cls, module: nnx.Module) -> Model:
        graphdef, params, rest = nnx.split(module, nnx.Param, ...)
        return cls(graphdef=graphdef, params=params, rest=rest)

    def merge(self) -> Any:
        """The module (inside a trace: a fresh module over the traced state)."""
        return nnx.merge(self.graphdef, self.params, self.rest)

    def with_params(self, params: nnx.State) -> Model:
        """The same model with other parameters (the policy at a training step)."""
        return dataclasses.replace(self, params=params)
