"""Argument checks of the sampler's entry points and the non-finite-logits error.

Shapes, dtypes and sizes are checked before anything is traced; the id range of a prompt is
checked when the prompt is concrete (under a trace it cannot be read).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from remdm_jax.validation import ArgumentTypeError, check_int, check_range

class NonFiniteLogitsError(FloatingPointError):
  """The denoiser returned logits that define no distribution where a token was drawn."""


def nonfinite_message(flags: np.ndarray, first_index) -> str:
  """What went wrong, naming the global indices of the flagged examples (`flags [B] bool`;
  `first_index` the global index of the first, or `[B]` the index of each)."""
  indices = (first_index + np.arange(len(flags)) if np.ndim(first_index) == 0
             else np.asarray(first_index))
  bad = indices[np.asarray(flags, bool)].tolist()
  return (f"the denoiser returned non-finite logits (NaN, +inf, or -inf for every id but the "
          f"mask) at masked positions of {len(bad)} of {len(flags)} examples (global "
          f"indices {bad[:8]}{'...' if len(bad) > 8 else ''}); their tokens would be "
          "meaningless. Check the model's parameters and inputs (a guided denoiser also "
          "gives them for a target outside its classifier's classes)")


def raise_nonfinite(flags, first_index) -> None:
  """Host side of the check: raises when any example's flag is set."""
  flags = np.asarray(flags)
  if flags.any():
    raise NonFiniteLogitsError(nonfinite_message(flags, int(first_index)))


_KEY_HELP = "key must be jax.random.key(seed) or a legacy jax.random.PRNGKey(seed) uint32[2]"


def as_typed_key(key: jax.Array) -> jax.Array:
  """Accepts a typed key (`jax.random.key`) or a legacy `uint32[2]` key; returns a typed one.

  Raises:
    ArgumentTypeError: anything else (None, a seed, a string), naming what was given.
  """
  if not isinstance(key, (jax.Array, np.ndarray)):
    hint = f" (for seed {key}: jax.random.key({key}))" if isinstance(key, int) else ""
    raise ArgumentTypeError(f"{_KEY_HELP}, got {type(key).__name__} {key!r:.40}{hint}")
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    if key.shape != ():
      raise ValueError(f"key must be a single key (shape []), got shape {list(key.shape)}")
    return key
  if key.dtype != jnp.uint32 or key.shape != (2,):
    raise ValueError(f"{_KEY_HELP}, got {key.dtype}{list(key.shape)}")
  return jax.random.wrap_key_data(key)


def check_sizes(batch_size, seq_len, mask_id) -> None:
  check_int("batch_size", batch_size, 1)
  check_int("seq_len", seq_len, 1)
  check_int("mask_id", mask_id, 0)


def check_first_index(first_index, batch_size: int):
  """An int (or a concrete or traced integer scalar, e.g. a jit argument) with every global
  index `first_index + i`, `i < batch_size`, in int32: concrete values in
  `[0, 2**31 - batch_size]`."""
  if isinstance(first_index, jax.Array):
    if first_index.shape != () or not jnp.issubdtype(first_index.dtype, jnp.integer):
      raise ValueError(f"first_index must be an integer scalar, got "
                       f"{first_index.dtype}{list(first_index.shape)}")
    if isinstance(first_index, jax.core.Tracer):
      return first_index
    value = check_int("first_index", int(first_index), 0)
  else:
    value = check_int("first_index", first_index, 0)
  check_range("first_index", value, 0, 2 ** 31 - batch_size,
              context=" (example indices are int32)")
  return first_index


def check_prompt(prompt, batch_size: int, seq_len: int, vocab_size) -> jax.Array:
  """A `[B, L]`, `[1, L]` or `[L]` integer prompt as `[B, L] int32`. Shape and dtype are
  always checked; the ids are checked in `[0, V)` when the prompt can be read here (not
  traced, and held by this process alone), `V` being `vocab_size` or, when it is a function,
  what it returns (called only then). A `[B, L] int32` array comes back as it is (a device
  array keeps its placement)."""
  prompt = prompt if isinstance(prompt, jax.Array) else np.asarray(prompt)
  if prompt.shape not in ((batch_size, seq_len), (1, seq_len), (seq_len,)):
    raise ValueError(
        f"prompt must have shape [batch_size, seq_len] = [{batch_size}, {seq_len}], "
        f"[1, {seq_len}] or [{seq_len}], got {list(prompt.shape)}")
  if not jnp.issubdtype(prompt.dtype, jnp.integer):
    raise ValueError(f"prompt must hold integer ids, got dtype {prompt.dtype}")
  readable = (not isinstance(prompt, jax.core.Tracer) and
              getattr(prompt, "is_fully_addressable", True))
  vocab_size = vocab_size() if readable and callable(vocab_size) else vocab_size
  if readable and vocab_size is not None:
    with jax.ensure_compile_time_eval():   # a concrete prompt inside a user's trace too
      low, high = int(prompt.min()), int(prompt.max())
    if low < 0 or high >= vocab_size:
      raise ValueError(
          f"prompt ids must be in [0, V) = [0, {vocab_size}), got values in [{low}, {high}]")
  if prompt.shape == (batch_size, seq_len) and prompt.dtype == np.int32:
    return prompt
  return jnp.broadcast_to(jnp.asarray(prompt, jnp.int32), (batch_size, seq_len))
