"""The shared math of masked diffusion, written once and imported by the sampler, the losses
and the evaluation: SUBS, the two negative log-likelihoods and the ReMDM sigma rules.

References:
  Sahoo et al., "Simple and Effective Masked Diffusion Language Models", 2024,
  arXiv 2406.07524 (SUBS).
  Wang, Schiff, Sahoo, Kuleshov, "Remasking Discrete Diffusion Models with Inference-Time
  Scaling", NeurIPS 2025, arXiv 2503.00307 (sigma_max, eq. 6; the sigma rules, section 4.1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from remdm_jax.schedules import array_module

SIGMA_RULES = ("constant", "cap", "rescale", "max")



def without_mask(logits: jax.Array, mask_id: int) -> jax.Array:
  """SUBS's zero-masking: float32 logits with `-inf` at `mask_id`; `[..., V] -> [..., V] f32`."""
  ids = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
  return jnp.where(ids == mask_id, -jnp.inf, logits.astype(jnp.float32))


def subs_log_probs(logits: jax.Array, mask_id: int, temperature=1.0) -> jax.Array:
  """SUBS parameterisation (MDLM): float32 log-probabilities with the mask id excluded.

  The carry-over part of SUBS (a decoded position predicts its own token) is applied by the
  sampler, which never changes a decoded token into another one, and by `masked_nll`, which
  counts masked positions only.

  Args:
    logits: `[..., V]` any float dtype; V includes `mask_id`.
    mask_id: the mask token id, `0 <= mask_id < V`.
    temperature: `[] float32 > 0`; logits are divided by it.

  Returns:
    `[..., V] float32` log-probabilities, `-inf` at `mask_id`.
  """
  return jax.nn.log_softmax(without_mask(logits, mask_id) / temperature, axis=-1)


def token_nll(log_probs: jax.Array, targets: jax.Array) -> jax.Array:
  """`-log_probs[..., target]`; `[..., V] f32, [...] int -> [...] f32`."""
  return -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]


def masked_nll(logits: jax.Array, x: jax.Array, z_t: jax.Array, mask_id: int) -> jax.Array:
  """`-log x_theta(z_t)[x]` at masked positions (0 elsewhere, SUBS carry-over); `[B, L] f32`.

  Args: logits `[B, L, V]`; x, z_t `[B, L] int32`.
  """
  nll = token_nll(subs_log_probs(logits, mask_id), x)
  return jnp.where(z_t == mask_id, nll, 0.0)


def next_token_nll(logits: jax.Array, x: jax.Array) -> jax.Array:
  """Causal cross-entropy: logits at `i` predict `x[i + 1]`; `[B, L, V], [B, L] -> [B, L - 1]
  float32` nats."""
  return token_nll(jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1), x[:, 1:])


def sigma_max(alpha_t, alpha_s):
  """`min(1, (1 - alpha_s) / alpha_t)` (1 where `alpha_t = 0`), the largest valid remasking
  probability; NumPy (host tables) or JAX (training losses) arrays."""
  xp = array_module(alpha_t)
  positive = alpha_t > 0
  ratio = (1.0 - alpha_s) / xp.where(positive, alpha_t, 1.0)
  return xp.where(positive, xp.minimum(1.0, ratio), 1.0)


def base_sigma(rule: str, eta, smax):
  """A sigma rule of the paper, shared by the sampler's tables and the ReMDM NELBO: `constant`
  (eta), `cap` (min(eta, sigma_max)), `rescale` (eta sigma_max) or `max` (sigma_max); NumPy or
  JAX arrays shaped like `smax`."""
  xp = array_module(smax)
  if rule == "constant":
    return xp.full_like(smax, eta)
  if rule == "cap":
    return xp.minimum(eta, smax)
  if rule == "rescale":
    return eta * smax
  if rule == "max":
    return smax
  raise ValueError(f"unknown sigma rule {rule!r}; choose from {list(SIGMA_RULES)}")
