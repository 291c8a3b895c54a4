"""Training objectives: the MDLM and ReMDM negative ELBOs and the autoregressive loss.

Every NELBO here is `w(t) * sum over masked positions of -log x_theta(z_t)[x]`, averaged as
nats per (non-padding) token, with `x_theta` the SUBS parameterisation (mask logit removed).
  - MDLM, continuous time: `w = -alpha'(t) / (1 - alpha(t))` (`1 / t` for log-linear);
    Sahoo et al. 2024, arXiv 2406.07524, eq. 10.
  - MDLM, T discrete steps: `w = T (alpha_s - alpha_t) / (1 - alpha_t)`, `t = i / T`,
    `s = (i - 1) / T`, `i ~ U{1..T}`.
  - ReMDM (Wang et al. 2025, arXiv 2503.00307, eq. 9):
    `w = T (alpha_s - alpha_t + sigma_t alpha_t) / (1 - alpha_t)`; `sigma = 0` is MDLM's.
Times are drawn antithetically: `u_i = (u_0 + i / B) mod 1`.
The discrete bounds leave out the reconstruction term at `t = 0`, which is exactly 0 when
`alpha(0) = 1` (log-linear, polynomial, linear with sigma_min = 0; not cosine with eps > 0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from remdm_jax import diffusion


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
