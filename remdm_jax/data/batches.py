"""Rows of a data set, as the training loop and the held-out loss see them: `[N, L] int32`
token ids, `{"tokens": [N, L] int32, "labels": [N] int32}` for class-conditional training, or
`{"tokens": [N, L] int32, "prompt_lengths": [N] int32}` for prompt-answer rows (the first
`prompt_lengths[n]` positions of row n are its prompt, never masked and never scored)."""

from __future__ import annotations

import numpy as np


def check_rows(rows) -> None:
  """Raises a `ValueError` unless `rows` is `[N, L]` integer ids or such ids with `[N]` labels."""
  tokens = rows["tokens"] if isinstance(rows, dict) else rows
  tokens = np.asarray(tokens)
  if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
    raise ValueError(f"rows must be [N, L] integer ids, got {tokens.dtype}{list(tokens.shape)}")
  if isinstance(rows, dict):
    if set(rows) not in ({"tokens", "labels"}, {"tokens", "prompt_lengths"}):
      raise ValueError(f"dict rows need exactly the keys 'tokens' and 'labels' (labelled "
                       f"rows) or 'tokens' and 'prompt_lengths' (prompt-answer rows), got "
                       f"{sorted(rows)}")
    name = "labels" if "labels" in rows else "prompt_lengths"
    values = np.asarray(rows[name])
    if values.shape != tokens.shape[:1] or not np.issubdtype(values.dtype, np.integer):
      what = "integer class ids" if name == "labels" else "integers"
      raise ValueError(f"{name} must be [N] = [{len(tokens)}] {what}, got "
                       f"{values.dtype}{list(values.shape)}")
    if name == "prompt_lengths" and len(values) and (
        values.min() < 1 or values.max() >= tokens.shape[1]):
      raise ValueError(f"prompt_lengths must be in [1, L) = [1, {tokens.shape[1]}) so that "
                       f"every row has an answer, got values in [{values.min()}, "
                       f"{values.max()}]")


def num_rows(rows) -> int:
  return len(rows["tokens"] if isinstance(rows, dict) else rows)


def take_rows(rows, index):
  """The rows at `index` (an index array or a slice), of the same kind as `rows`."""
  if isinstance(rows, dict):
    return {name: value[index] for name, value in rows.items()}
  return rows[index]


def tokens_and_labels(batch):
  """`(tokens [B, L], labels [B] or None)` of a batch of any kind."""
  if isinstance(batch, dict):
    return batch["tokens"], batch.get("labels")
  return batch, None

