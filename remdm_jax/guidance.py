"""Denoiser combinators for guidance.

Classifier-free guidance for discrete diffusion (D-CFG; Nisonoff et al. 2024, used by ReMDM
section 5.3): `log p_gamma(x | y) = gamma log p(x | y) + (1 - gamma) log p(x)`, renormalised per
position. The result is an ordinary denoiser, so it plugs into `remdm_jax.sample` unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from remdm_jax.diffusion import Denoiser
from remdm_jax.validation import check_scalar


def classifier_free_guidance(conditional: Denoiser, unconditional: Denoiser,
                             gamma: float) -> Denoiser:
  """Mixes two denoisers' log-probabilities with weight `gamma` (1: conditional only).

  Args:
    conditional: `(z [B, L] int32, t [B] float32) -> logits [B, L, V]`, conditioned on y.
    unconditional: the same signature, without y.
    gamma: guidance strength (>= 0 in practice); a finite number, or traced data.

  Returns:
    A denoiser returning `[B, L, V] float32` guided log-probabilities (normalised over V).

  Raises:
    ValueError: a denoiser is not callable, or a concrete gamma is not a finite number.
  """
  for name, fn in (("conditional", conditional), ("unconditional", unconditional)):
    if not callable(fn):
      raise ValueError(f"{name} must be a denoiser function (z, t) -> logits, got {fn!r}")
  check_scalar("gamma", gamma)

  def guided(z: jax.Array, t: jax.Array) -> jax.Array:
    log_cond = jax.nn.log_softmax(conditional(z, t).astype(jnp.float32), axis=-1)
    log_uncond = jax.nn.log_softmax(unconditional(z, t).astype(jnp.float32), axis=-1)
    return jax.nn.log_softmax(gamma * log_cond + (1.0 - gamma) * log_uncond, axis=-1)

  return guided
