"""A classifier of noisy sequences, `p(y | z_t, t)`, for classifier-based guidance (D-CBG).

The DiT's blocks over embedded one-hot (or soft) inputs, a final LayerNorm, a mean over
positions and a linear layer to the classes. Taking `[B, L, V]` inputs (not ids) lets
`remdm_jax.classifier_guidance(form="gradient")` differentiate it with respect to each token.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from remdm_jax.denoiser import Classifier
from remdm_jax.models.dit import Block, DiTConfig, SigmaMap, check_length
from remdm_jax.schedules import total_noise
from remdm_jax.validation import check_range


class NoisyClassifier(nnx.Module):
  """`classifier(x [B, L, V] float32, sigma [B] float32) -> logits [B, C] float32`, where the
  sizes come from a `DiTConfig` and `C = cfg.num_classes` is the number of classes it predicts."""

  def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
    check_range("num_classes", cfg.num_classes, 2, context=" (the classes a classifier predicts)")
    self.cfg = cfg
    self.embedding = nnx.Param(
        jax.random.normal(rngs.params(), (cfg.vocab_size, cfg.hidden), jnp.float32))
    self.sigma_map = SigmaMap(cfg.cond_dim, rngs=rngs)
    self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.blocks)])
    self.norm = nnx.LayerNorm(cfg.hidden, epsilon=1e-5, rngs=rngs)
    self.output = nnx.Linear(cfg.hidden, cfg.num_classes, rngs=rngs)

  def __call__(self, x: jax.Array, sigma: jax.Array, *,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    """Args: x `[B, L, V]` float (one-hot rows for ids); sigma `[B] float32`; rngs enables
    dropout."""
    if x.ndim != 3 or x.shape[-1] != self.cfg.vocab_size:
      raise ValueError(f"x must be [B, L, V = {self.cfg.vocab_size}] one-hot rows, got "
                       f"{list(x.shape)}")
    check_length(x.shape[1], self.cfg)
    sigma = sigma if self.cfg.time_conditioning else jnp.zeros_like(sigma)
    c = self.sigma_map(sigma)                                             # [B, C]
    h = (x.astype(jnp.float32) @ self.embedding[...]).astype(jnp.dtype(self.cfg.dtype))
    for block in self.blocks:
      h = block(h, c, rngs)
    pooled = jnp.mean(self.norm(h.astype(jnp.float32)), axis=1)           # [B, D]
    return self.output(pooled).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class _ClassifierCall:
  """`(state, x [B, L, V] f32, t [B] f32) -> logits [B, C]`; equal for equal settings."""

  graphdef: nnx.GraphDef
  schedule: object          # alpha(t) for the total noise; None: log-linear, eps = 1e-3

  def __call__(self, state, x: jax.Array, t: jax.Array) -> jax.Array:
    return nnx.merge(self.graphdef, state)(x, total_noise(t, self.schedule))


def as_classifier(model: NoisyClassifier, schedule=None) -> Classifier:
  """The model as a guidance `Classifier`, `(x [B, L, V] float32, t [B] float32) -> logits
  [B, C]`, for `remdm_jax.classifier_guidance`: the sampler's time `t` becomes the total
  noise `sigma = -log alpha(t)` (default: log-linear with eps = 1e-3, as the DiT). The model's
  state is the classifier's `params` (an argument of a compiled sampler, not a constant); its
  `num_classes` is the model's, so guidance checks a target class before sampling."""
  graphdef, state = nnx.split(model)
  return Classifier(_ClassifierCall(graphdef, schedule), state,
                    num_classes=model.cfg.num_classes)
