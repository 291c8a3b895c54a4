"""The masked-diffusion NELBOs of MDLM and ReMDM (eq. 9) written out in float64 NumPy, for any
float64 logits function; only the uniform draws come from JAX, from the documented key split
(times, masks, dropout)."""

import jax
import jax.numpy as jnp
import numpy as np


def noise(key, batch_size, length):
  """`(u0, mask uniforms [B, L])` float64: the draws behind a loss of `key`."""
  key_time, key_mask, _ = jax.random.split(key, 3)
  u0 = float(jax.random.uniform(key_time, (), jnp.float32))
  mask = jax.random.uniform(key_mask, (batch_size, length), jnp.float32)
  return u0, np.asarray(mask, np.float64)


def reference_nelbo(x, key, logits_fn, mask_id, *, rule=None, eta=0.0, eps=1e-3,
                    num_steps=None, valid=None, mistake=False, prompt=None):
  """Nats per token of `x [B, L]` under `logits_fn(z [B, L], t [B]) -> [B, L, V]` (float64):
  `rule` None is MDLM in continuous time (weight -alpha' / (1 - alpha)); "mdlm" its
  `num_steps`-step bound; "cap" / "rescale" ReMDM's eq. 9 with that sigma. Log-linear
  schedule `alpha(t) = 1 - (1 - eps) t`; antithetic times; SUBS (the mask is never
  predicted); only masked positions count, averaged over the `valid [B, L]` tokens (all by
  default). `mistake` swaps in a plausible wrong weight (`1 / alpha` for `1 / (1 - alpha)`,
  the T-step weight without T, or sigma dropped), for tests that show the check can fail.
  `prompt [B, L] bool` positions are never masked and never counted."""
  b, l = x.shape
  u0, mask_draws = noise(key, b, l)
  u = np.mod(u0 + np.arange(b) / b, 1.0)                        # antithetic, [B]
  alpha = lambda t: 1.0 - (1.0 - eps) * t
  if rule is None:
    t = eps + (1.0 - eps) * u
    weight = (1.0 - eps) / (alpha(t) if mistake else 1.0 - alpha(t))
  else:
    i = np.minimum(np.floor(u * num_steps) + 1, num_steps)      # i ~ U{1..T}
    t, s = i / num_steps, (i - 1) / num_steps
    alpha_t, alpha_s = alpha(t), alpha(s)
    sigma_max = np.minimum(1.0, (1.0 - alpha_s) / alpha_t)
    sigma = {"mdlm": 0.0, "cap": np.minimum(eta, sigma_max), "rescale": eta * sigma_max}[rule]
    weight = num_steps * (alpha_s - alpha_t + sigma * alpha_t) / (1.0 - alpha_t)
    if mistake:
      weight = (weight / num_steps if rule == "mdlm"
                else num_steps * (alpha_s - alpha_t) / (1.0 - alpha_t))
  masked = mask_draws >= alpha(t)[:, None]                      # [B, L] bool
  if prompt is not None:
    masked &= ~prompt
    valid = ~prompt if valid is None else valid & ~prompt
  z = np.where(masked, mask_id, x)
  logits = np.array(logits_fn(z, t), np.float64)                # [B, L, V] f64
  logits[..., mask_id] = -np.inf
  top = logits.max(-1, keepdims=True)
  log_probs = logits - top - np.log(np.sum(np.exp(logits - top), axis=-1, keepdims=True))
  nll = -np.take_along_axis(log_probs, x[..., None], -1)[..., 0]
  valid = np.ones(x.shape, bool) if valid is None else valid
  return float(np.sum(weight[:, None] * np.where(masked, nll, 0.0) * valid) / np.sum(valid))


def reference_sft(x, prompt, key, logits_fn, mask_id, *, eps=1e-3, weighting="inverse",
                  time_steps=20):
  """LLaDA's SFT loss (or Ye et al.'s linear weighting) in float64 NumPy, from the same
  draws: per row, the full-softmax cross-entropy at masked answer positions times the
  weight, summed, divided by the row's answer length; the mean over rows."""
  b, l = x.shape
  key_time, key_mask, _ = jax.random.split(key, 3)
  if weighting == "inverse":
    ratio = (1 - eps) * np.asarray(jax.random.uniform(key_time, (b,)), np.float64) + eps
    weight = 1.0 / ratio
  else:
    k = np.asarray(jax.random.randint(key_time, (b,), 0, time_steps))
    ratio, weight = (k + 1) / time_steps, (time_steps - k).astype(np.float64)
  draws = np.asarray(jax.random.uniform(key_mask, (b, l)), np.float64)
  masked = (draws < ratio[:, None]) & ~prompt
  logits = np.array(logits_fn(np.where(masked, mask_id, x), ratio), np.float64)
  top = logits.max(-1, keepdims=True)
  log_probs = logits - top - np.log(np.sum(np.exp(logits - top), axis=-1, keepdims=True))
  nll = -np.take_along_axis(log_probs, x[..., None], -1)[..., 0]
  per_row = np.sum(np.where(masked, nll, 0.0), 1) * weight
  return float(np.mean(per_row / np.sum(~prompt, 1)))
