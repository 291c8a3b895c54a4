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

Every public function checks its arguments before computing anything it returns: shapes,
dtypes, options (`num_steps`, `sigma_rule`, `eta`, `eps`, `mask_id`) and the key always (they
are static under `jax.jit`); the values of token ids, labels and a concrete `eta` only when
they are concrete. Under a trace (`jax.jit`, `jax.grad`, a training step) ids out of range
cannot be seen, and give NaN or inf instead of an error. The vocabulary size `V` is the last
axis of the logits that the model returns (the model is called once, as for the loss), so
ids are checked against the model, not against a number passed alongside it.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from remdm_jax import diffusion
from remdm_jax.denoiser import Denoiser
from remdm_jax.sampling.checks import as_typed_key
from remdm_jax.schedules import LogLinear
from remdm_jax.validation import (ArgumentTypeError, check_array, check_choice, check_ids,
                                  check_int, check_range, check_scalar)


# Argument checks: shapes, dtypes and options always; ids when concrete (`check_ids`).

def _check_key(key) -> None:
  """A typed key (`jax.random.key`) or a legacy `uint32[2]` one, as the samplers take."""
  as_typed_key(key)


def _check_function(name: str, fn, contract: str) -> None:
  if not callable(fn):
    raise ArgumentTypeError(f"{name} must be a function {contract}, got {fn!r:.80}")


def _check_tokens(x, valid=None, *, min_len: int = 1):
  """`x [B, L]` integer (`B >= 1`, `L >= min_len`) and an optional `valid [B, L] bool`."""
  x = check_array("x", x, ndim=2, dtype="int", dims="[B, L]")
  check_range("x's batch size B", x.shape[0], 1)
  check_range("x's length L", x.shape[1], min_len)
  if valid is not None:
    check_array("valid", valid, shape=x.shape, dtype="bool", dims="[B, L] (x's shape)")
  return x


def _check_logits(name: str, logits, leading: tuple[int, ...], dims: str) -> int:
  """Float logits shaped `leading + (V,)`; returns `V`."""
  check_array(name, logits, shape=leading + (None,), dtype="float", dims=dims)
  return logits.shape[-1]


def _check_vocab(x, vocab_size: int, mask_id: int | None, source: str) -> None:
  """`mask_id` in `[0, V)` and the clean ids `x` in `[0, V)` other than the mask id (their
  values only when `x` is concrete)."""
  if mask_id is not None:
    check_range("mask_id", mask_id, 0, vocab_size, high_open=True,
                context=f" (V = {vocab_size}, {source})")
  check_ids("x", x, 0, vocab_size, exclude=mask_id, excluded="the mask id")


def check_eta(sigma_rule: str, eta) -> None:
  """`sigma_rule` one of `diffusion.SIGMA_RULES` and `eta` its parameter: a finite real, in
  `[0, inf)` for "cap" (`min(eta, sigma_max)`), in `[0, 1]` for "rescale"
  (`eta * sigma_max`) and "constant" (sigma itself, a probability), 0 for "max"
  (`sigma_max`, no parameter). A traced `eta` is data and is not checked."""
  check_choice("sigma_rule", sigma_rule, diffusion.SIGMA_RULES)
  if sigma_rule == "max" and not isinstance(eta, jax.core.Tracer):
    check_scalar("eta", eta)
    if eta != 0:
      raise ValueError(f"eta does not apply to sigma_rule 'max' (sigma = sigma_max); use 0 "
                       f"or sigma_rule 'cap' / 'rescale', got {eta}")
  check_scalar("eta", eta, 0.0, None if sigma_rule == "cap" else 1.0,
               context=f" for sigma_rule {sigma_rule!r}")


def _check_eps(eps) -> None:
  check_scalar("eps", eps, 0.0, 1.0, low_open=True, high_open=True)


def antithetic_uniform(key: jax.Array, batch_size: int) -> jax.Array:
  """`u_i = (u_0 + i / B) mod 1`; `[B] float32` in [0, 1). `batch_size`: an int >= 1."""
  _check_key(key)
  check_int("batch_size", batch_size, 1)
  u0 = jax.random.uniform(key, (), jnp.float32)
  return jnp.mod(u0 + jnp.arange(batch_size, dtype=jnp.float32) / batch_size, 1.0)


def continuous_times(key: jax.Array, batch_size: int, eps: float = 1e-3) -> jax.Array:
  """`t = eps + (1 - eps) u`, u antithetic; `[B] float32`. `eps` in (0, 1)."""
  _check_eps(eps)
  return eps + (1.0 - eps) * antithetic_uniform(key, batch_size)


def discrete_steps(key: jax.Array, batch_size: int, num_steps: int) -> jax.Array:
  """`i ~ U{1..T}` (antithetic); `[B] int32`. `num_steps` T: an int >= 1."""
  check_int("num_steps", num_steps, 1)
  u = antithetic_uniform(key, batch_size)
  return jnp.minimum(jnp.floor(u * num_steps).astype(jnp.int32) + 1, num_steps)


def corrupt(key: jax.Array, x: jax.Array, alpha_t: jax.Array, mask_id: int) -> jax.Array:
  """Forward process: each token becomes `mask_id` with probability `1 - alpha_t`.

  Args: x `[B, L] int32`; alpha_t `[B] float32`; mask_id an int >= 0. Shapes, dtypes and
  the key are checked (ids are not: `corrupt` knows no vocabulary). Returns z_t `[B, L] int32`.
  """
  _check_key(key)
  x = _check_tokens(x)
  check_array("alpha_t", alpha_t, shape=x.shape[:1], dtype="float", dims="[B] (x's batch)")
  return _corrupt(key, x, alpha_t, check_int("mask_id", mask_id, 0))


def _corrupt(key, x, alpha_t, mask_id):
  keep = jax.random.uniform(key, x.shape, jnp.float32) < alpha_t[:, None]
  return jnp.where(keep, x, mask_id).astype(jnp.int32)


def _per_token(weighted: jax.Array, valid: jax.Array | None) -> jax.Array:
  """Sum of `[B, L]` terms over valid positions divided by their number (nats / token)."""
  valid = jnp.ones_like(weighted, bool) if valid is None else valid
  return jnp.sum(jnp.where(valid, weighted, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def mdlm_continuous_weight(schedule, t: jax.Array) -> jax.Array:
  """`-alpha'(t) / (1 - alpha(t))`; `[B] float32` for `t [B]` float."""
  check_array("t", t, ndim=1, dtype="float", dims="[B]")
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
  check_array("step", step, ndim=1, dtype="int", dims="[B]")
  check_int("num_steps", num_steps, 1)
  if sigma_rule is not None:
    check_eta(sigma_rule, eta)
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
    logits: `[B, L, V]` float, raw denoiser output for `z_t`. x: `[B, L] int32` clean tokens,
      ids in `[0, V)` other than `mask_id` (values checked when concrete).
    z_t: `[B, L] int32`. weight: `[B] float32` (from the functions above).
    mask_id: an int in `[0, V)`.
    valid: optional `[B, L] bool`, False at padding (excluded from sum and count).
  """
  x = _check_tokens(x, valid)
  check_array("z_t", z_t, shape=x.shape, dtype="int", dims="[B, L] (x's shape)")
  check_array("weight", weight, shape=x.shape[:1], dtype="float", dims="[B] (x's batch)")
  vocab_size = _check_logits("logits", logits, x.shape, "[B, L, V]")
  _check_vocab(x, vocab_size, check_int("mask_id", mask_id, 0), "the logits' last axis")
  return _nelbo(logits, x, z_t, weight, mask_id, valid)


def _nelbo(logits, x, z_t, weight, mask_id, valid):
  return _per_token(weight[:, None] * diffusion.masked_nll(logits, x, z_t, mask_id), valid)


def autoregressive_nll(logits: jax.Array, x: jax.Array,
                       valid: jax.Array | None = None) -> jax.Array:
  """Next-token cross-entropy, logits at `i` predicting `x[i + 1]`; nats per token, `[] f32`.

  `logits [B, L, V]` float; `x [B, L]` integer, `L >= 2`, ids in `[0, V)` (values checked
  when concrete); `valid [B, L] bool` marks real tokens; a target counts when it is valid.
  """
  x = _check_tokens(x, valid, min_len=2)
  check_ids("x", x, 0, _check_logits("logits", logits, x.shape, "[B, L, V]"))
  return _autoregressive_nll(logits, x, valid)


def _autoregressive_nll(logits, x, valid):
  return _per_token(diffusion.next_token_nll(logits, x), None if valid is None else valid[:, 1:])


def _check_diffusion_args(denoiser, x, key, mask_id, valid, eps):
  """The arguments every diffusion loss shares; returns `x` as an array."""
  _check_function("denoiser", denoiser, "(z [B, L] int32, t [B] float32) -> logits [B, L, V]")
  x = _check_tokens(x, valid)
  _check_key(key)
  check_int("mask_id", mask_id, 0)
  _check_eps(eps)
  if isinstance(denoiser, Denoiser) and denoiser.vocab_size is not None:
    _check_vocab(x, denoiser.vocab_size, mask_id, "the denoiser's vocab_size")
  return x


def _answer_only(x, valid, prompt):
  """`(valid, prompt)` with the prompt positions left out of `valid` (checked `[B, L] bool`)."""
  if prompt is None:
    return valid, None
  check_array("prompt", prompt, shape=x.shape, dtype="bool", dims="[B, L] (x's shape)")
  return (~prompt if valid is None else valid & ~prompt), prompt


def _diffusion_loss(denoiser: Denoiser, x: jax.Array, key: jax.Array, mask_id: int,
                    valid: jax.Array | None, eps: float, num_steps: int,
                    sigma_rule: str | None, eta: float,
                    prompt: jax.Array | None = None) -> jax.Array:
  """The masked-diffusion NELBO of one batch, nats per valid token; `[] float32`.

  `num_steps=0` is continuous time. `key` is split in three: times, masks, and a third key
  left to the caller (the training loop's dropout), so these losses and the training
  objectives (`Objective.loss`) draw the same noise. `prompt` (`[B, L] bool`), when given,
  marks positions that are never masked (a prompt: pass `valid=~prompt` so that they are not
  counted either). The logits are checked once the
  denoiser has returned them: `[B, L, V]` float with `mask_id < V`, and `x`'s ids (when
  concrete) against `V`.
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
  z_t = _corrupt(key_mask, x, schedule.alpha(t), mask_id)
  if prompt is not None:
    z_t = jnp.where(prompt, x, z_t)
  logits = denoiser(z_t, t)
  vocab_size = _check_logits("the denoiser's logits", logits, x.shape, "[B, L, V]")
  _check_vocab(x, vocab_size, mask_id, "the denoiser's logits' last axis")
  return _nelbo(logits, x, z_t, weight, mask_id, valid)


def mdlm_loss(denoiser: Denoiser, x: jax.Array, key: jax.Array, *, mask_id: int,
              valid: jax.Array | None = None, eps: float = 1e-3,
              prompt: jax.Array | None = None) -> jax.Array:
  """MDLM's continuous-time NELBO (eq. 10 of Sahoo et al.) of one batch under the log-linear
  schedule `alpha(t) = 1 - (1 - eps) t`, nats per valid token; `[] float32`.

  Args:
    denoiser: `(z [B, L] int32, t [B] float32) -> logits [B, L, V]` float (e.g. a closure
      over the parameters being trained, or `models.as_denoiser(model)`).
    x: `[B, L] int32` clean tokens, ids in `[0, V)` other than `mask_id`.
    key: a PRNG key (times and masks).
    mask_id: the mask id, in `[0, V)`. valid: optional `[B, L] bool`, False at padding.
    eps: in (0, 1); times are drawn from [eps, 1].
    prompt: optional `[B, L] bool`, True at positions never masked and never counted (a
      prompt: the bound of the answer given the prompt).

  Raises:
    ValueError: `x` is not `[B, L]` (or `valid` not `[B, L] bool`), `eps` not in (0, 1),
      `mask_id` not in `[0, V)`, the logits not `[B, L, V]`, or (when `x` is concrete, not
      under a trace) an id of `x` outside `[0, V)` or equal to `mask_id`.
    ArgumentTypeError: `x` not integer, `valid` not boolean, the logits not floating-point,
      `key` not a PRNG key, an option of the wrong type.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> uniform = lambda z, t: jnp.zeros(z.shape + (5,))     # 4 tokens and the mask
    >>> x = jnp.zeros((8, 16), jnp.int32)
    >>> round(float(mdlm_loss(uniform, x, jax.random.key(0), mask_id=4)), 3)  # E = log 4 = 1.386
    1.421
  """
  x = _check_diffusion_args(denoiser, x, key, mask_id, valid, eps)
  valid, prompt = _answer_only(x, valid, prompt)
  return _diffusion_loss(denoiser, x, key, mask_id, valid, eps, 0, None, 0.0, prompt)


def mdlm_discrete_loss(denoiser: Denoiser, x: jax.Array, key: jax.Array, *, num_steps: int,
                       mask_id: int, valid: jax.Array | None = None,
                       eps: float = 1e-3, prompt: jax.Array | None = None) -> jax.Array:
  """MDLM's NELBO with `num_steps` discrete steps (ReMDM eq. 9 with sigma = 0); `num_steps`
  an int >= 1, other arguments as in `mdlm_loss`; `[] float32` nats per valid token.

  Raises:
    ValueError, ArgumentTypeError: as `mdlm_loss`, and `num_steps` not an int >= 1.
  """
  x = _check_diffusion_args(denoiser, x, key, mask_id, valid, eps)
  check_int("num_steps", num_steps, 1)
  valid, prompt = _answer_only(x, valid, prompt)
  return _diffusion_loss(denoiser, x, key, mask_id, valid, eps, num_steps, None, 0.0, prompt)


def remdm_loss(denoiser: Denoiser, x: jax.Array, key: jax.Array, *, num_steps: int,
               sigma_rule: str, eta: float, mask_id: int, valid: jax.Array | None = None,
               eps: float = 1e-3, prompt: jax.Array | None = None) -> jax.Array:
  """ReMDM's NELBO (eq. 9) with `num_steps` steps (an int >= 1) and sigma from `sigma_rule`
  ("cap", "rescale", "constant" or "max") and `eta` (see `check_eta`: >= 0 for cap, in
  [0, 1] for rescale and constant, 0 for max; a traced eta is not checked); other arguments
  as in `mdlm_loss`; `[] float32`.

  Raises:
    ValueError, ArgumentTypeError: as `mdlm_loss`, `num_steps` not an int >= 1, an unknown
      `sigma_rule`, or `eta` outside its range (NaN included).
  """
  x = _check_diffusion_args(denoiser, x, key, mask_id, valid, eps)
  check_int("num_steps", num_steps, 1)
  check_eta(sigma_rule, eta)
  valid, prompt = _answer_only(x, valid, prompt)
  return _diffusion_loss(denoiser, x, key, mask_id, valid, eps, num_steps, sigma_rule, eta,
                         prompt)


def classifier_loss(classifier: Callable[[jax.Array, jax.Array], jax.Array], x: jax.Array,
                    labels: jax.Array, key: jax.Array, *, mask_id: int, vocab_size: int,
                    eps: float = 1e-3) -> jax.Array:
  """Cross-entropy of a classifier of noisy sequences, nats per example; `[] float32`.

  Times and masks are drawn as in `mdlm_loss` (the same key split), so the classifier sees
  `z_t` from the forward process at `t ~ U[eps, 1]`.

  Args:
    classifier: `(x [B, L, V] float32 one-hot, t [B] float32) -> logits [B, C]` float,
      `C >= 2` classes.
    x: `[B, L] int32` clean tokens, ids in `[0, V)` other than `mask_id`.
    labels: `[B] int32` classes in `[0, C)`. key: a PRNG key.
    mask_id: the mask id, in `[0, V)`; vocab_size: V, the one-hot width (mask included).
    eps: in (0, 1).

  Raises:
    ValueError: a shape or range above, the ids of `x` and `labels` included when they are
      concrete (under a trace only their shapes and dtypes are checked).
    ArgumentTypeError: a wrong type or dtype, or `key` not a PRNG key.
  """
  _check_function("classifier", classifier, "(x [B, L, V] one-hot, t [B]) -> logits [B, C]")
  x = _check_tokens(x)
  labels = check_array("labels", labels, shape=x.shape[:1], dtype="int", dims="[B] (x's batch)")
  _check_key(key)
  check_int("vocab_size", vocab_size, 2)
  check_int("mask_id", mask_id, 0)
  _check_eps(eps)
  _check_vocab(x, vocab_size, mask_id, "vocab_size")
  key_time, key_mask, _ = jax.random.split(key, 3)
  t = continuous_times(key_time, x.shape[0], eps)
  z_t = _corrupt(key_mask, x, LogLinear(eps=eps).alpha(t), mask_id)
  logits = classifier(jax.nn.one_hot(z_t, vocab_size, dtype=jnp.float32), t)
  num_classes = _check_logits("the classifier's logits", logits, x.shape[:1], "[B, C]")
  check_range("the classifier's number of classes C", num_classes, 2)
  check_ids("labels", labels, 0, num_classes)
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))


def ar_loss(logits_fn: Callable[[jax.Array], jax.Array], x: jax.Array,
            valid: jax.Array | None = None) -> jax.Array:
  """Next-token cross-entropy of a causal model `logits_fn(x [B, L]) -> [B, L, V]` float,
  nats per valid target; `[] float32`. `x [B, L]` integer with `L >= 2` and ids in `[0, V)`
  (checked when concrete); `valid` optional `[B, L] bool`."""
  _check_function("logits_fn", logits_fn, "(x [B, L] int32) -> logits [B, L, V]")
  x = _check_tokens(x, valid, min_len=2)
  logits = logits_fn(x)
  check_ids("x", x, 0, _check_logits("logits_fn's logits", logits, x.shape, "[B, L, V]"))
  return _autoregressive_nll(logits, x, valid)


SFT_WEIGHTINGS = ("inverse", "linear")


def sft_loss(denoiser: Denoiser, x: jax.Array, prompt: jax.Array, key: jax.Array, *,
             mask_id: int, eps: float = 1e-3, weighting: str = "inverse",
             time_steps: int = 20) -> jax.Array:
  """Supervised fine-tuning loss of a masked diffusion model on prompt-answer rows, nats;
  `[] float32`.

  The prompt is never masked; each answer position is masked with probability `r` (one `r`
  per row), and the cross-entropy of the full softmax (the mask id included, as the
  reference trains) at the masked positions is weighted and summed over the row, divided by
  the row's answer length, and averaged over rows:

  - `weighting="inverse"` (LLaDA's SFT, Nie et al. 2025, Algorithm / guidelines):
    `r = (1 - eps) t + eps`, `t ~ U(0, 1)`, weight `1 / r`;
  - `weighting="linear"` (Ye et al., ICLR 2025, `time_reweighting="linear"`): `k ~ U{0..T-1}`,
    `r = (k + 1) / T`, weight `T - k`, `T = time_steps`.

  Args:
    denoiser: `(z [B, L] int32, t [B] float32) -> logits [B, L, V]` (`t` is `r`).
    x: `[B, L] int32` rows (prompt, then answer), ids in `[0, V)` other than `mask_id`.
    prompt: `[B, L] bool`, True at prompt positions; every row needs an answer position.
    key: a PRNG key, split in three as the NELBOs split it (times, masks, dropout).
    mask_id: in `[0, V)`. eps: in (0, 1). time_steps: T >= 1 ("linear" only).

  Raises:
    ValueError / ArgumentTypeError: a shape, dtype or option out of range.
  """
  _check_function("denoiser", denoiser, "(z [B, L] int32, t [B] float32) -> logits [B, L, V]")
  x = _check_tokens(x)
  check_array("prompt", prompt, shape=x.shape, dtype="bool", dims="[B, L] (x's shape)")
  _check_key(key)
  check_int("mask_id", mask_id, 0)
  _check_eps(eps)
  check_choice("weighting", weighting, SFT_WEIGHTINGS)
  check_int("time_steps", time_steps, 1)
  key_time, key_mask, _ = jax.random.split(key, 3)
  batch_size = x.shape[0]
  if weighting == "inverse":
    ratio = (1.0 - eps) * jax.random.uniform(key_time, (batch_size,)) + eps
    weight = 1.0 / ratio
  else:
    k = jax.random.randint(key_time, (batch_size,), 0, time_steps)
    ratio, weight = (k + 1) / time_steps, (time_steps - k).astype(jnp.float32)
  masked = (jax.random.uniform(key_mask, x.shape) < ratio[:, None]) & ~prompt
  logits = denoiser(jnp.where(masked, mask_id, x).astype(jnp.int32), ratio)
  vocab_size = _check_logits("the denoiser's logits", logits, x.shape, "[B, L, V]")
  _check_vocab(x, vocab_size, mask_id, "the denoiser's logits' last axis")
  nll = diffusion.token_nll(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), x)
  per_row = jnp.sum(jnp.where(masked, nll, 0.0), axis=1) * weight
  return jnp.mean(per_row / jnp.maximum(jnp.sum(~prompt, axis=1), 1))
