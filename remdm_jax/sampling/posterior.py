"""One sampler step's randomness, exactly: per-token probabilities and the draws.

The backward step of MDLM and ReMDM (paper eq. 6) is, per position, a Bernoulli decision
(remask a decoded token / unmask a masked one) and, when unmasking, one draw from `x_theta`.
Drawing it that way instead of one categorical over `V + 1` outcomes keeps tiny unmask
probabilities exact (Zheng et al. 2024, arXiv 2409.02908, show float32 Gumbel-max over the
joint categorical loses the token tail). The remaining draws are made tail-safe here:

- `bernoulli` compares 32 random bits with `p * 2^32`: resolution 2.3e-10 (a float32
  uniform has 2^-23 = 1.2e-7, biasing p = 1e-6 by 7%);
- `draw_categorical` is Gumbel-max in two levels (a block of about sqrt(V) ids, then an id
  within it), each with JAX's 64-bit "highest" Gumbel, whose tail reaches about 44 instead
  of 16.6: exact for probability ratios down to about 1e-19, at ~2 sqrt(V) draws per row
  instead of V.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

_TWO_32 = 4294967296.0


def bernoulli(key: jax.Array, p: jax.Array) -> jax.Array:
  """`True` with probability `p` (clipped to [0, 1]), resolution 2^-32.

  Args:
    key: a typed PRNG key.
    p: `[...] float32` probabilities.

  Returns:
    `[...] bool` of p's shape.
  """
  bits = jax.random.bits(key, p.shape, jnp.uint32).astype(jnp.float32)
  return (p >= 1.0) | (bits < p * _TWO_32)


def _block_size(vocab_size: int) -> int:
  return max(1, math.isqrt(vocab_size - 1) + 1)


def draw_categorical(key: jax.Array, probs: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Draws one id per row of `probs` and returns it with its probability.

  Two-level Gumbel-max: pick a block of ids with probability equal to its mass, then an id
  within the block in proportion to its probability; the product is exactly `probs[id]`. The
  Gumbel noise of both levels comes from one draw (independent entries; one random-bits
  kernel to compile instead of two).

  Args:
    key: a typed PRNG key.
    probs: `[..., V] float32`, non-negative rows summing to 1.

  Returns:
    `ids [...] int32` and `probs[ids] [...] float32`.
  """
  vocab_size = probs.shape[-1]
  block = _block_size(vocab_size)
  num_blocks = -(-vocab_size // block)
  pad = num_blocks * block - vocab_size
  padded = jnp.pad(probs, [(0, 0)] * (probs.ndim - 1) + [(0, pad)])
  blocks = padded.reshape(probs.shape[:-1] + (num_blocks, block))     # [..., nb, bs]
  gumbel = jax.random.gumbel(key, probs.shape[:-1] + (num_blocks + block,), jnp.float32,
                             mode="highest")                          # one draw, both levels
  mass = jnp.sum(blocks, axis=-1)                                     # [..., nb]
  chosen = jnp.argmax(jnp.log(mass) + gumbel[..., :num_blocks], axis=-1)           # [...]
  within = jnp.take_along_axis(blocks, chosen[..., None, None], axis=-2)[..., 0, :]  # [..., bs]
  offset = jnp.argmax(jnp.log(within) + gumbel[..., num_blocks:], axis=-1)         # [...]
  ids = (chosen * block + offset).astype(jnp.int32)
  return ids, jnp.take_along_axis(within, offset[..., None], axis=-1)[..., 0]


def transition_probs(table_row, sigma: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-token remask and unmask probabilities of one step (paper eq. 6).

  Args:
    table_row: a `StepTable` row (scalars).
    sigma: `[B, L] float32` per-token remasking probability (the row's sigma, or the conf
      weight times it).

  Returns:
    `(p_remask, p_unmask)`, both `[B, L] float32`: the probability that a decoded token becomes
    the mask, and that a masked position is unmasked (its token then drawn from `x_theta`).
  """
  p_unmask = table_row.unmask_base + sigma * table_row.unmask_per_sigma
  return sigma, jnp.clip(p_unmask, 0.0, 1.0)
