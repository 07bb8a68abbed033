"""The loss kernels: pure functions of arrays, jax and numpy only.

One module per family, all re-exported here so ``from safedpo_jax import losses`` reaches
every kernel:

- `safedpo_jax.losses.preference`: the safety transformation T, SafeDPO and the SafeDAA
  family, plain DPO / IPO / hinge, sequence log-probs (full and chunked), kept-pair
  reductions and the preference metrics.
- `safedpo_jax.losses.score`: Safe RLHF's score-model losses (`reward_model_loss`,
  `cost_model_loss`), their metric sums, `roc_auc`, and the running score normaliser
  (`update_score_normalizer`, `normalize_reward`, `normalize_cost`).
- `safedpo_jax.losses.kto`: KTO as TRL computes it (`kto_loss`, `kto_reference_point`,
  `kto_metric_sums`) and SACPO's `kto_undesirable_weight`.
- `safedpo_jax.losses.bfpo`: BFPO's supervised loss (`bfpo_loss`, `bfpo_target`).
- `safedpo_jax.losses.ppo`: PPO-Lagrangian (SafeRLHF): the KL-penalised reward and cost
  streams, GAE, the clipped actor and critic losses, the Lagrange multiplier step and the
  episode-cost window.

Nothing here imports a model, a dataset or the trainer; the trainer reduces the per-pair
(per-example, per-token) values these functions return where the denominator is known.
"""

from safedpo_jax.losses.bfpo import *  # noqa: F403
from safedpo_jax.losses.bfpo import __all__ as _bfpo_all
from safedpo_jax.losses.kto import *  # noqa: F403
from safedpo_jax.losses.kto import __all__ as _kto_all
from safedpo_jax.losses.ppo import *  # noqa: F403
from safedpo_jax.losses.ppo import __all__ as _ppo_all
from safedpo_jax.losses.preference import *  # noqa: F403
from safedpo_jax.losses.preference import Link
from safedpo_jax.losses.preference import __all__ as _preference_all
from safedpo_jax.losses.score import *  # noqa: F403
from safedpo_jax.losses.score import __all__ as _score_all

__all__ = [*_preference_all, "Link", *_score_all, *_kto_all, *_bfpo_all, *_ppo_all]
