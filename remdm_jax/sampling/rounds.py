"""Per-position work done only where it is needed, in rounds of a fixed size.

Under `jit` shapes are static, so "only the masked positions" cannot shrink an array. Instead
the selected positions of each example are gathered `capacity` at a time, computed, and
scattered back, in as many rounds as the example with the most selected positions needs. The
sampler draws tokens this way (only the rows it draws go through the output head) and exact
classifier guidance scores only the masked positions.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def in_rounds(selected: jax.Array, capacity: int,
              compute: Callable[[jax.Array], tuple]) -> tuple:
  """Computes per-position values only at `selected [B, L] bool` positions.

  Args:
    selected: `[B, L] bool`, where values are wanted.
    capacity: positions per example per round (`K`); rounds = ceil(max selected count / K).
    compute: `positions [B, K] int32 -> tuple of [B, K, ...]` arrays, the values at those
      positions (a position past an example's last selected one repeats `L - 1`; its value
      is dropped).

  Returns:
    One `[B, L, ...]` array per output of `compute` (same dtype and trailing shape),
    meaningful where `selected`, zero elsewhere.
  """
  batch, length = selected.shape
  rank = jnp.cumsum(selected, axis=1) - 1                                      # [B, L]
  count = jnp.sum(selected, axis=1)                                            # [B]
  rows = jnp.arange(batch)[:, None]
  shapes = jax.eval_shape(compute, jax.ShapeDtypeStruct((batch, capacity), jnp.int32))

  def one_round(round_index, out):
    in_round = selected & (rank // capacity == round_index)
    positions = jax.vmap(lambda s: jnp.nonzero(s, size=capacity, fill_value=length)[0])(
        in_round).astype(jnp.int32)                                            # [B, K]
    values = compute(jnp.minimum(positions, length - 1))
    return tuple(whole.at[rows, positions].set(piece, mode="drop")
                 for whole, piece in zip(out, values))

  init = tuple(jnp.zeros((batch, length) + s.shape[2:], s.dtype) for s in shapes)
  rounds = (jnp.max(count) + capacity - 1) // capacity
  return jax.lax.fori_loop(0, rounds, one_round, init)
