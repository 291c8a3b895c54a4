"""Training objectives: the MDLM and ReMDM negative ELBOs and the autoregressive loss.

Every NELBO here is `w(t) * sum over masked positions of -log x_theta(z_t)[x]`, averaged as
nats per (non-padding) token, with `x_theta` the SUBS parameterisation (mask logit removed):

- MDLM, continuous time: `w = -alpha'(t) / (1 - alpha(t))` (`1 / t` for log-linear);
  Sahoo et al. 2024, arXiv 2406.07524, eq. 10.
- MDLM, T discrete steps: `w = T (alpha_s - alpha_t) / (1 - alpha_t)`, `t = i / T`,
  `s = (i - 1) / T`, `i ~ U{1..T}`.
- ReMDM (Wang et al. 2025, arXiv 2503.00307, eq. 9):
  `w = T (alpha_s - alpha_t + sigma_t alpha_t) / (1 - alpha_t)`; `sigma = 0` is MDLM's.

Times are drawn antithetically: `u_i = (u_0 + i / B) mod 1`.

One call per objective, for training a model of your own with `jax.value_and_grad` and optax:
`mdlm_loss`, `mdlm_discrete_loss`, `remdm_loss` (each takes a sampler-style denoiser
`(z, t) -> logits`, the clean tokens, a key and an optional padding mask) and `ar_loss` (a
causal `logits_fn(x)`). The functions below them are the pieces they chain.
The discrete bounds leave out the reconstruction term at `t = 0`, which is exactly 0 when
`alpha(0) = 1` (log-linear, polynomial, linear with sigma_min = 0; not cosine with eps > 0).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from remdm_jax import diffusion
from remdm_jax.denoiser import Denoiser
from remdm_jax.schedules import LogLinear


def antithetic_uniform(key: jax.Array, batch_size: int) -> jax.Array:
  """`u_i = (u_0 + i / B) mod 1`; `[B] float32` in [0, 1)."""
  u0 = jax.random.uniform(key, (), jnp.float32)
  return jnp.mod(u0 + jnp.arange(batch_size, dtype=jnp.float32) / batch_size, 1.0)


def continuous_times(key: jax.Array, batch_size: int, eps: float = 1e-3) -> jax.Array:
  """`t = eps + (1 - eps) u`, u antithetic; `[B] float32`."""
  return eps + (1.0 - eps) * antithetic_uniform(key, batch_size)


def discrete_steps(key: jax.Array, batch_size: int, num_steps: int) -> jax.Array:
  """`i ~ U{1..T}` (antithetic); `[B] int32`."""
  u = antithetic_uniform(key, batch_size)
  return jnp.minimum(jnp.floor(u * num_steps).astype(jnp.int32) + 1, num_steps)


def corrupt(key: jax.Array, x: jax.Array, alpha_t: jax.Array, mask_id: int) -> jax.Array:
  """Forward process: each token becomes `mask_id` with probability `1 - alpha_t`.

  Args: x `[B, L] int32`; alpha_t `[B] float32`. Returns z_t `[B, L] int32`.
  """
  keep = jax.random.uniform(key, x.shape, jnp.float32) < alpha_t[:, None]
  return jnp.where(keep, x, mask_id).astype(jnp.int32)


def _per_token(weighted: jax.Array, valid: jax.Array | None) -> jax.Array:
  """Sum of `[B, L]` terms over valid positions divided by their number (nats / token)."""
  valid = jnp.ones_like(weighted, bool) if valid is None else valid
  return jnp.sum(jnp.where(valid, weighted, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def mdlm_continuous_weight(schedule, t: jax.Array) -> jax.Array:
  """`-alpha'(t) / (1 - alpha(t))`; `[B] float32`."""
  return -schedule.alpha_prime(t) / (1.0 - schedule.alpha(t))


def remdm_discrete_weight(schedule, step: jax.Array, num_steps: int,
                          sigma_rule: str | None = None,
                          eta: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """Weight of eq. 9 at step `i`, with sigma from `diffusion.base_sigma(sigma_rule, eta, .)`;
  `sigma_rule=None` (sigma = 0) gives MDLM's discrete weight.

  Returns:
    `(weight [B] f32, t [B] f32)`: `T (alpha_s - alpha_t + sigma alpha_t) / (1 - alpha_t)`
    and `t = i / T`.
  """
  t = step.astype(jnp.float32) / num_steps
  s = (step - 1).astype(jnp.float32) / num_steps
  alpha_t, alpha_s = schedule.alpha(t), schedule.alpha(s)
  sigma = 0.0 if sigma_rule is None else diffusion.base_sigma(
      sigma_rule, eta, diffusion.sigma_max(alpha_t, alpha_s))
  return num_steps * (alpha_s - alpha_t + sigma * alpha_t) / (1.0 - alpha_t), t


def nelbo(logits: jax.Array, x: jax.Array, z_t: jax.Array, weight: jax.Array, mask_id: int,
          valid: jax.Array | None = None) -> jax.Array:
  """Weighted masked NLL in nats per valid token; `[] float32`.

  Args:
    logits: `[B, L, V]` raw denoiser output for `z_t`. x: `[B, L] int32` clean tokens.
    z_t: `[B, L] int32`. weight: `[B] float32` (from the functions above).
    valid: optional `[B, L] bool`, False at padding (excluded from sum and count).
  """
  return _per_token(weight[:, None] * diffusion.masked_nll(logits, x, z_t, mask_id), valid)


def autoregressive_nll(logits: jax.Array, x: jax.Array,
                       valid: jax.Array | None = None) -> jax.Array:
  """Next-token cross-entropy, logits at `i` predicting `x[i + 1]`; nats per token, `[] f32`.

  `valid [B, L]` marks real tokens; a target counts when it is valid.
  """
  return _per_token(diffusion.next_token_nll(logits, x), None if valid is None else valid[:, 1:])


def _diffusion_loss(denoiser: Denoiser, x: jax.Array, key: jax.Array, mask_id: int,
                    valid: jax.Array | None, eps: float, num_steps: int,
                    sigma_rule: str | None, eta: float) -> jax.Array:
  """The masked-diffusion NELBO of one batch, nats per valid token; `[] float32`.

  `key` is split in three: times, masks, and a third key left to the caller (the training
  loop's dropout), so these losses and the training objectives (`Objective.loss`) draw
  the same noise.
  """
  key_time, key_mask, _ = jax.random.split(key, 3)
  batch_size = x.shape[0]
  schedule = LogLinear(eps=eps)
  if num_steps == 0:
    t = continuous_times(key_time, batch_size, eps)
    weight = mdlm_continuous_weight(schedule, t)
  else:
    step = discrete_steps(key_time, batch_size, num_steps)
    weight, t = remdm_discrete_weight(schedule, step, num_steps, sigma_rule, eta)
  z_t = corrupt(key_mask, x, schedule.alpha(t), mask_id)
  return nelbo(denoiser(z_t, t), x, z_t, weight, mask_id, valid)


def mdlm_loss(denoiser: Denoiser, x: jax.Array, key: jax.Array, *, mask_id: int,
              valid: jax.Array | None = None, eps: float = 1e-3) -> jax.Array:
  """MDLM's continuous-time NELBO (eq. 10 of Sahoo et al.) of one batch under the log-linear
  schedule `alpha(t) = 1 - (1 - eps) t`, nats per valid token; `[] float32`.

  Args:
    denoiser: `(z [B, L] int32, t [B] float32) -> logits [B, L, V]` (e.g. a closure over the
      parameters being trained, or `models.as_denoiser(model)`).
    x: `[B, L] int32` clean tokens. key: a PRNG key (times and masks).
    mask_id: the mask id. valid: optional `[B, L] bool`, False at padding.
    eps: times are drawn from [eps, 1].

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> uniform = lambda z, t: jnp.zeros(z.shape + (5,))     # 4 tokens and the mask
    >>> x = jnp.zeros((8, 16), jnp.int32)
    >>> round(float(mdlm_loss(uniform, x, jax.random.key(0), mask_id=4)), 3)  # E = log 4 = 1.386
    1.421
  """
  return _diffusion_loss(denoiser, x, key, mask_id, valid, eps, 0, None, 0.0)


def mdlm_discrete_loss(denoiser: Denoiser, x: jax.Array, key: jax.Array, *, num_steps: int,
                       mask_id: int, valid: jax.Array | None = None,
                       eps: float = 1e-3) -> jax.Array:
  """MDLM's NELBO with `num_steps` discrete steps (ReMDM eq. 9 with sigma = 0); arguments as
  in `mdlm_loss`; `[] float32` nats per valid token."""
  return _diffusion_loss(denoiser, x, key, mask_id, valid, eps, num_steps, None, 0.0)


def remdm_loss(denoiser: Denoiser, x: jax.Array, key: jax.Array, *, num_steps: int,
               sigma_rule: str, eta: float, mask_id: int, valid: jax.Array | None = None,
               eps: float = 1e-3) -> jax.Array:
  """ReMDM's NELBO (eq. 9) with `num_steps` steps and sigma from `sigma_rule` ("cap",
  "rescale", "constant" or "max") and `eta`; arguments as in `mdlm_loss`; `[] float32`."""
  return _diffusion_loss(denoiser, x, key, mask_id, valid, eps, num_steps, sigma_rule, eta)


def classifier_loss(classifier: Callable[[jax.Array, jax.Array], jax.Array], x: jax.Array,
                    labels: jax.Array, key: jax.Array, *, mask_id: int, vocab_size: int,
                    eps: float = 1e-3) -> jax.Array:
  """Cross-entropy of a classifier of noisy sequences, nats per example; `[] float32`.

  Times and masks are drawn as in `mdlm_loss` (the same key split), so the classifier sees
  `z_t` from the forward process at `t ~ U[eps, 1]`.

  Args:
    classifier: `(x [B, L, V] float32 one-hot, t [B] float32) -> logits [B, C]`.
    x: `[B, L] int32` clean tokens; labels: `[B] int32` classes; key: a PRNG key.
    mask_id: the mask id; vocab_size: V, the one-hot width (mask included).
  """
  key_time, key_mask, _ = jax.random.split(key, 3)
  t = continuous_times(key_time, x.shape[0], eps)
  z_t = corrupt(key_mask, x, LogLinear(eps=eps).alpha(t), mask_id)
  logits = classifier(jax.nn.one_hot(z_t, vocab_size, dtype=jnp.float32), t)
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))


def ar_loss(logits_fn: Callable[[jax.Array], jax.Array], x: jax.Array,
            valid: jax.Array | None = None) -> jax.Array:
  """Next-token cross-entropy of a causal model `logits_fn(x [B, L]) -> [B, L, V]`, nats per
  valid target; `[] float32`."""
  return autoregressive_nll(logits_fn(x), x, valid)
