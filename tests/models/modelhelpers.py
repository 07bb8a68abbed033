"""Shared by the decoder's numerics tests: option variants of one model, its forward and
the gradient of a next-token loss (jitted once per model shape)."""

import jax
import jax.numpy as jnp
from flax import nnx


def rngs():
    # rbg keys compile ~3x faster than threefry on CPU; sharding invariance is not needed here.
    return nnx.Rngs(jax.random.key(0, impl="rbg"))


def variant(model, **options):
    """The same weights under other (static) options, without a second random init."""
    abstract = nnx.eval_shape(lambda: type(model)(model.config, rngs=rngs(), **options))
    return nnx.merge(nnx.graphdef(abstract), nnx.state(model))


@nnx.jit
def forward(model, ids, mask):
    return model(ids, mask)


def loss(model, ids, mask):
    """Summed next-token negative log-likelihood over the masked positions (float32)."""
    logp = jax.nn.log_softmax(model(ids, mask).astype(jnp.float32))
    picked = jnp.take_along_axis(logp[:, :-1], ids[:, 1:, None], axis=-1)[..., 0]
    return -jnp.sum(jnp.where(mask[:, 1:] > 0, picked, 0.0))


@nnx.jit
def grads(model, ids, mask):
    return nnx.grad(loss)(model, ids, mask)
