"""The loss kernels: pure functions of arrays, jax and numpy only.

One module per family, all re-exported here so ``from safedpo_jax import losses`` reaches
every kernel:

- `safedpo_jax.losses.preference`: the safety transformation T, SafeDPO and the SafeDAA
  family, plain DPO / IPO / hinge, sequence log-probs (full and chunked), kept-pair
  reductions and the preference metrics.
- `safedpo_jax.losses.ppo`: PPO-Lagrangian (SafeRLHF): the KL-penalised reward and cost
  streams, GAE, the clipped actor and critic losses, the Lagrange multiplier step and the
  episode-cost window.

Nothing here imports a model, a dataset or the trainer; the trainer reduces the per-pair
(per-example, per-token) values these functions return where the denominator is known.
"""

from safedpo_jax.losses.ppo import *  # noqa: F403
from safedpo_jax.losses.ppo import __all__ as _ppo_all
from safedpo_jax.losses.preference import *  # noqa: F403
from safedpo_jax.losses.preference import Link
from safedpo_jax.losses.preference import __all__ as _preference_all

__all__ = [*_preference_all, "Link", *_ppo_all]
