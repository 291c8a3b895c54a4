"""The configured training objective of a batch, and its value on held-out rows.

`objective_loss` dispatches a `TrainConfig` to the losses of `remdm_jax.losses` (MDLM in
continuous or discrete time, the ReMDM NELBO of eq. 9, the autoregressive NLL, or the
cross-entropy of a classifier of noisy sequences);
`held_out_loss` is the one validation measure, used by the training loop's periodic
evaluation and by the scripts that compare trained models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from remdm_jax import batches, losses
from remdm_jax.models.dit import DiT
from remdm_jax.schedules import LogLinear, total_noise
from remdm_jax.validation import check_int

if TYPE_CHECKING:
  from remdm_jax.training import TrainConfig


def _training_labels(model: DiT, labels, key: jax.Array, cfg: TrainConfig, train: bool):
  """Class labels as the model sees them: in training, each is replaced by the null class
  (`num_classes`) with probability `cfg.label_dropout`, so one model learns the conditional
  and the unconditional `x_theta` (classifier-free guidance)."""
  if labels is None:
    return None
  if not model.cfg.num_classes:
    raise ValueError("labelled batches need a class-conditional model (model num_classes > 0)")
  if not train:
    return labels
  drop = jax.random.uniform(jax.random.fold_in(key, 7), labels.shape) < cfg.label_dropout
  return jnp.where(drop, model.cfg.num_classes, labels)


def objective_loss(model: DiT, batch, key: jax.Array, cfg: TrainConfig,
                   mask_id: int, train: bool) -> jax.Array:
  """The configured loss of one batch (`[B, L] int32`, or `{"tokens", "labels"}` for a
  class-conditional model), in nats per token; `[] float32`.

  `train=True` applies dropout and label dropout (from the key); the noise (times and masks)
  always comes from `key`, so a fixed key gives a fixed value.
  """
  rngs = nnx.Rngs(dropout=jax.random.split(key, 3)[2]) if train else None
  batch, labels = batches.tokens_and_labels(batch)
  schedule = LogLinear(eps=cfg.eps)
  if cfg.objective == "classifier":
    if labels is None:
      raise ValueError("objective 'classifier' needs labelled rows (--data.label=qed|rings)")
    return losses.classifier_loss(
        lambda x, t: model(x, total_noise(t, schedule), rngs=rngs), batch, labels, key,
        mask_id=mask_id, vocab_size=model.cfg.vocab_size, eps=cfg.eps)
  labels = _training_labels(model, labels, key, cfg, train)
  if cfg.objective == "ar":
    return losses.ar_loss(
        lambda x: model(x, jnp.zeros((x.shape[0],), jnp.float32), rngs=rngs), batch)
  denoiser = lambda z, t: model(z, total_noise(t, schedule), labels=labels, rngs=rngs)
  if cfg.discrete_steps == 0:
    return losses.mdlm_loss(denoiser, batch, key, mask_id=mask_id, eps=cfg.eps)
  if cfg.objective == "mdlm":
    return losses.mdlm_discrete_loss(denoiser, batch, key, num_steps=cfg.discrete_steps,
                                     mask_id=mask_id, eps=cfg.eps)
  return losses.remdm_loss(denoiser, batch, key, num_steps=cfg.discrete_steps,
                           sigma_rule=cfg.sigma_rule, eta=cfg.eta, mask_id=mask_id,
                           eps=cfg.eps)


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
  count = batches.num_rows(rows) // batch_size
  if max_batches is not None:
    count = min(count, max_batches)
  if count < 1:
    raise ValueError(f"held-out rows: {batches.num_rows(rows)} rows hold no full batch of "
                     f"{batch_size}")
  values = [float(loss(batches.take_rows(rows, slice(j * batch_size, (j + 1) * batch_size)),
                       jax.random.fold_in(jax.random.key(seed + draw), j)))
            for draw in range(draws) for j in range(count)]
  return float(np.mean(values))
