"""The configured training objective of a batch, and its value on held-out rows.

`objective_loss` dispatches a `TrainConfig` to the losses of `remdm_jax.losses` (MDLM in
continuous or discrete time, the ReMDM NELBO of eq. 9, or the autoregressive NLL);
`held_out_loss` is the one validation measure, used by the training loop's periodic
evaluation and by the scripts that compare trained models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from remdm_jax import losses
from remdm_jax.models.dit import DiT
from remdm_jax.schedules import LogLinear
from remdm_jax.validation import check_int

if TYPE_CHECKING:
  from remdm_jax.training import TrainConfig


def objective_loss(model: DiT, batch: jax.Array, key: jax.Array, cfg: TrainConfig,
                   mask_id: int, train: bool) -> jax.Array:
  """The configured loss of one batch `[B, L] int32`, in nats per token; `[] float32`.

  `train=True` applies dropout (from the key); the noise (times and masks) always comes from
  `key`, so a fixed key gives a fixed value.
  """
  key_time, key_mask, key_drop = jax.random.split(key, 3)
  rngs = nnx.Rngs(dropout=key_drop) if train else None
  batch_size = batch.shape[0]
  if cfg.objective == "ar":
    logits = model(batch, jnp.zeros((batch_size,), jnp.float32), rngs=rngs)
    return losses.autoregressive_nll(logits, batch)
  schedule = LogLinear(eps=cfg.eps)
  if cfg.discrete_steps == 0:
    t = losses.continuous_times(key_time, batch_size, cfg.eps)
    weight = losses.mdlm_continuous_weight(schedule, t)
  else:
    rule = cfg.sigma_rule if cfg.objective == "remdm" else None
    step = losses.discrete_steps(key_time, batch_size, cfg.discrete_steps)
    weight, t = losses.remdm_discrete_weight(schedule, step, cfg.discrete_steps, rule, cfg.eta)
  alpha_t = schedule.alpha(t)
  z_t = losses.corrupt(key_mask, batch, alpha_t, mask_id)
  logits = model(z_t, -jnp.log(alpha_t), rngs=rngs)
  return losses.nelbo(logits, batch, z_t, weight, mask_id)


def model_loss(model: DiT, cfg: TrainConfig, mask_id: int) -> Callable:
  """`jit((batch [B, L] int32, key) -> [] float32)`: a model's `cfg` loss without dropout."""
  return jax.jit(lambda batch, key: objective_loss(model, batch, key, cfg, mask_id, False))


def held_out_loss(loss: Callable, rows: np.ndarray, batch_size: int, *, seed: int,
                  max_batches: int | None = None, draws: int = 1) -> float:
  """Mean of `loss(batch, key)` over the full batches of `rows` (at most `max_batches`),
  with `draws` noise draws per batch; batch j of draw d uses `fold_in(key(seed + d), j)`, so
  every model evaluated with the same seed sees the same noise.

  Raises:
    ValueError: `rows` holds no full batch.
  """
  check_int("batch_size", batch_size, 1)
  count = len(rows) // batch_size
  if max_batches is not None:
    count = min(count, max_batches)
  if count < 1:
    raise ValueError(f"held-out rows: {len(rows)} rows hold no full batch of {batch_size}")
  values = [float(loss(rows[j * batch_size:(j + 1) * batch_size],
                       jax.random.fold_in(jax.random.key(seed + draw), j)))
            for draw in range(draws) for j in range(count)]
  return float(np.mean(values))
