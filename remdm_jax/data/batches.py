"""Rows of a data set, as the training loop and the held-out loss see them: `[N, L] int32`
token ids, or `{"tokens": [N, L] int32, "labels": [N] int32}` for class-conditional training."""

from __future__ import annotations

import numpy as np


def check_rows(rows) -> None:
  """Raises a `ValueError` unless `rows` is `[N, L]` integer ids or such ids with `[N]` labels."""
  tokens = rows["tokens"] if isinstance(rows, dict) else rows
  tokens = np.asarray(tokens)
  if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
    raise ValueError(f"rows must be [N, L] integer ids, got {tokens.dtype}{list(tokens.shape)}")
  if isinstance(rows, dict):
    if set(rows) != {"tokens", "labels"}:
      raise ValueError(f"labelled rows need exactly the keys 'tokens' and 'labels', got "
                       f"{sorted(rows)}")
    labels = np.asarray(rows["labels"])
    if labels.shape != tokens.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
      raise ValueError(f"labels must be [N] = [{len(tokens)}] integer class ids, got "
                       f"{labels.dtype}{list(labels.shape)}")


def num_rows(rows) -> int:
  return len(rows["tokens"] if isinstance(rows, dict) else rows)


def take_rows(rows, index):
  """The rows at `index` (an index array or a slice), of the same kind as `rows`."""
  if isinstance(rows, dict):
    return {name: value[index] for name, value in rows.items()}
  return rows[index]


def tokens_and_labels(batch):
  """`(tokens [B, L], labels [B] or None)` of a batch of either kind."""
  if isinstance(batch, dict):
    return batch["tokens"], batch["labels"]
  return batch, None
