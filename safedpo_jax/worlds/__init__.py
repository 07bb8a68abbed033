"""Research worlds where the truth is known: fixtures for proofs and comparisons.

- `safedpo_jax.worlds.synthetic`: the synthetic safety world behind the embedded sample
  (``dataset="sample"``): its grammar, compositions (``pku``, ``adversarial``), exact
  oracle of helpfulness and cost, and every response a prompt can get.
- `safedpo_jax.worlds.closed_form`: a tabular world with closed-form optima, where each
  method's population loss is trained and compared with what it must converge to.

Worlds sit above the library they exercise: they may use data, losses and the
evaluation's types; nothing in the library imports a world. The evaluation takes a
world's oracle as a value (`safedpo_jax.evaluate.scoring.Oracle`).
"""
