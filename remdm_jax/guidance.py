"""Denoiser combinators for guidance (Schiff et al. 2024, arXiv 2412.10193; ReMDM section 5.3).

- Classifier-free (D-CFG): `log x_gamma = gamma log x_theta(. | y) + (1 - gamma) log
  x_theta(. | null)`, renormalised per position.
- Classifier-based (D-CBG): for a masked position `l` and candidate token `v`,
  `log x_gamma(v)_l = log x_theta(v)_l + gamma log p_phi(y | z with z_l = v, t)`,
  renormalised over `v`; either exactly (every single-token change, `classifier_guidance(...,
  form="exact")`) or to first order with one gradient (`form="gradient"`):
  `log p(y | z_l = v) ~ log p(y | z) + g_l[v] - g_l[z_l]`, `g = d log p(y | x) / d x` at the
  one-hot `x` of `z`.

Both results are ordinary denoisers returning normalised log-probabilities, so they plug into
`remdm_jax.sample` with every strategy, prompt and sharding. The guidance paper applies the
classifier reweighting to the posterior of a position, including its chance of staying masked
(that entry gets `log p(y | z_t)`), which also changes how often positions unmask. Here it
reweights `x_theta` only: the strategy keeps deciding when positions unmask and remask (that
is what makes ReMDM's remasking schedules apply unchanged), and the classifier decides which
token a position takes. The two agree on the token drawn given that a position unmasks.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from remdm_jax.diffusion import Denoiser
from remdm_jax.rounds import in_rounds
from remdm_jax.validation import check_choice, check_scalar

Classifier = Callable[[jax.Array, jax.Array], jax.Array]
"""`(x [B, L, V] float32 one-hot (or soft) sequences, t [B] float32) -> logits [B, C]`: a
classifier of noisy sequences; taking one-hot inputs lets the gradient form differentiate it."""
GUIDANCE_FORMS = ("exact", "gradient")


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

  guided.time_conditioned = any(getattr(fn, "time_conditioned", False)
                                for fn in (conditional, unconditional))   # the cache check
  return guided


def _target_log_prob(classifier: Classifier, onehot: jax.Array, t: jax.Array,
                     target: jax.Array) -> jax.Array:
  """`log p(y = target | x, t)`, `[N]` float32, for `onehot [N, L, V]`, `t [N]`, `target [N]`."""
  logits = classifier(onehot, t).astype(jnp.float32)                  # [N, C]
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  return jnp.take_along_axis(log_probs, target[:, None], axis=-1)[:, 0]


def exact_classifier_scores(classifier: Classifier, z: jax.Array, t: jax.Array,
                            target: jax.Array, vocab_size: int,
                            selected: jax.Array | None = None) -> jax.Array:
  """`log p(y = target | z with z_l = v, t)` for every token `v` at the `selected [B, L] bool`
  positions (default: all); `[B, L, V] float32`, zero at positions not selected.

  One position per example per round (`remdm_jax.rounds.in_rounds`), each round one
  classifier call on `B * V` sequences; as many rounds as the example with the most selected
  positions has, so scoring only the masked positions costs in proportion to them. Meant for
  small vocabularies such as SMILES characters."""
  batch, length = z.shape
  selected = jnp.ones(z.shape, bool) if selected is None else selected
  candidates = jnp.arange(vocab_size, dtype=z.dtype)[None, :, None]     # [1, V, 1]
  t_rep = jnp.repeat(t, vocab_size)                                    # [B * V]
  target_rep = jnp.repeat(target, vocab_size)

  def at_positions(positions):                                         # [B, 1] int32
    changing = jnp.arange(length)[None, :] == positions                # [B, L]
    changed = jnp.where(changing[:, None, :], candidates, z[:, None, :])   # [B, V, L]
    onehot = jax.nn.one_hot(changed.reshape(batch * vocab_size, length), vocab_size,
                            dtype=jnp.float32)
    scores = _target_log_prob(classifier, onehot, t_rep, target_rep)
    return (scores.reshape(batch, 1, vocab_size),)

  return in_rounds(selected, 1, at_positions)[0]


def gradient_classifier_scores(classifier: Classifier, z: jax.Array, t: jax.Array,
                               target: jax.Array, vocab_size: int) -> jax.Array:
  """First-order `log p(y = target | z with z_l = v, t)` up to a constant per position:
  `g_l[v] - g_l[z_l]`, `g = d log p(y | x) / d x` at `x = one_hot(z)`; `[B, L, V] float32`.
  One classifier call and its gradient per step."""
  onehot = jax.nn.one_hot(z, vocab_size, dtype=jnp.float32)            # [B, L, V]
  grad = jax.grad(lambda x: jnp.sum(_target_log_prob(classifier, x, t, target)))(onehot)
  return grad - jnp.take_along_axis(grad, z[..., None], axis=-1)


def classifier_guidance(denoiser: Denoiser, classifier: Classifier, *, target, gamma,
                        mask_id: int, form: str = "exact") -> Denoiser:
  """D-CBG as a denoiser: `x_theta` reweighted at masked positions by the classifier's
  probability of `target` after each single-token change (module docstring).

  Args:
    denoiser: `(z [B, L] int32, t [B] float32) -> logits [B, L, V]`.
    classifier: `(x [B, L, V] float32, t [B] float32) -> logits [B, C]` (`Classifier`).
    target: the class to steer towards: an int, or `[B] int32` per example (traced is fine).
    gamma: guidance strength (0: the denoiser unchanged); a finite number, or traced data.
    mask_id: the mask token; only masked positions are reweighted.
    form: "exact" (`V` classifier inputs per masked position per example and step) or
      "gradient" (one call and one gradient per step).

  Returns:
    A denoiser returning `[B, L, V] float32` guided log-probabilities (normalised over V).

  Raises:
    ValueError: a function is not callable, gamma is not a finite number, or form is unknown.
  """
  for name, fn in (("denoiser", denoiser), ("classifier", classifier)):
    if not callable(fn):
      raise ValueError(f"{name} must be a function, got {fn!r}")
  check_scalar("gamma", gamma)
  check_choice("form", form, GUIDANCE_FORMS)
  if form == "exact":    # only the masked positions are scored
    score = functools.partial(exact_classifier_scores, classifier)
  else:                  # one gradient covers every position
    score = lambda z, t, targets, vocab, masked: gradient_classifier_scores(
        classifier, z, t, targets, vocab)

  def guided(z: jax.Array, t: jax.Array) -> jax.Array:
    log_x = jax.nn.log_softmax(denoiser(z, t).astype(jnp.float32), axis=-1)   # [B, L, V]
    targets = jnp.broadcast_to(jnp.asarray(target, jnp.int32), z.shape[:1])
    masked = z == mask_id                                                     # [B, L]
    scores = score(z, t, targets, log_x.shape[-1], masked)                    # [B, L, V]
    return jax.nn.log_softmax(jnp.where(masked[..., None], log_x + gamma * scores, log_x),
                              axis=-1)

  guided.time_conditioned = True   # the classifier reads t: the sampler's cache must not apply
  return guided
