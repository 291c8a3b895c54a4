"""The argument checks every tokenizer shares: `encode` takes only a string, `decode` only a
1-D list or array of integer ids in `[0, vocab_size)`.

They live apart from `remdm_jax.text.tokenizers` so that tokenizers in their own modules
(`remdm_jax.text.hf_tokenizer`) use them while `get_tokenizer` imports those modules, with every
import pointing one way.
"""

from __future__ import annotations

import numbers

import jax
import numpy as np

from remdm_jax.validation import check_array, check_ids, check_items


def _is_integer(item) -> bool:
  return isinstance(item, numbers.Integral) and not isinstance(item, (bool, np.bool_))


def _check_ids(ids, vocab_size: int) -> np.ndarray:
  """`ids` (a list, tuple, iterable or 1-D array of integers in `[0, vocab_size)`) as a
  `[N]` NumPy integer array; an empty one as `[0] int32`."""
  if not isinstance(ids, (np.ndarray, jax.Array)):
    ids = check_items("ids", ids, "integer token ids", _is_integer)
    if not ids:
      return np.zeros(0, np.int32)
  return check_ids("ids", np.asarray(check_array("ids", ids, ndim=1, dims="[N]")), 0,
                   vocab_size)
