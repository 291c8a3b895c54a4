"""Gen PPL, unigram entropy and MAUVE, under any causal evaluator.

An evaluator is `logits_fn(tokens [B, L] int32) -> logits [B, L, V]` (position i predicts
token i + 1) and, for MAUVE, `features_fn(tokens) -> [B, L, D]` hidden states. The paper uses
GPT-2 Large; offline, a small causal model trained on the same data stands in.

Definitions (Wang et al. 2025, following Sahoo et al. 2024):
  - Gen PPL: retokenise each text with the evaluator's tokenizer, truncate to `max_len`, add
    no BOS; the first token is never scored; every later token up to and including the first
    EOS is; `exp(sum NLL / number of scored tokens)` over all samples (token-weighted).
  - Entropy: per sample, the unigram entropy (nats) of its generated ids; mean over samples.
  - MAUVE: `mauve-text` defaults (c = 5, buckets = n / 10) on last-token features.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from remdm_jax.diffusion import next_token_nll
from remdm_jax.text.tokenizers import encode_rows
from remdm_jax.validation import check_int, check_strings


def _id_row(ids, name: str) -> np.ndarray:
  """A non-empty 1-D integer array, or a `ValueError` naming `name`."""
  row = np.asarray(ids)
  if row.size == 0:
    raise ValueError(f"{name} is empty: an entropy needs at least one id")
  if isinstance(ids, (str, bytes)) or row.ndim != 1 or not np.issubdtype(row.dtype,
                                                                          np.integer):
    raise ValueError(f"{name} must be a 1-D sequence of integer ids, got "
                     f"{type(ids).__name__} {row.dtype}{list(row.shape)}")
  return row


def unigram_entropy(ids: Sequence[int]) -> float:
  """Entropy (nats) of the empirical distribution of one sample's ids (`[N] int`, N >= 1)."""
  _, counts = np.unique(_id_row(ids, "ids"), return_counts=True)
  p = counts / counts.sum()
  return float(-np.sum(p * np.log(p)))


def mean_entropy(rows) -> float:
  """Mean `unigram_entropy` over samples (each a sequence of ids; at least one sample)."""
  if isinstance(rows, (str, bytes)) or len(rows) == 0:
    raise ValueError(f"rows must be a non-empty sequence of id sequences, got {rows!r:.60}")
  return float(np.mean([unigram_entropy(_id_row(r, f"rows[{i}]")) for i, r in enumerate(rows)]))


def _check_texts(texts, max_len: int, batch_size: int) -> list[str]:
  texts = check_strings("texts", texts)
  if len(texts) == 0:
    raise ValueError("texts is empty: there is nothing to score")
  check_int("max_len", max_len, 2)
  check_int("batch_size", batch_size, 1)
  return texts


def _encode_batch(tokenizer, texts: Sequence[str], max_len: int, add_bos: bool):
  """Ids `[N, max_len] int32` (EOS-padded), the scored mask `[N, max_len - 1] bool` and the
  encoded lengths `[N] int` (after truncation)."""
  ids, lengths = encode_rows(tokenizer, texts, max_len, fill=tokenizer.eos_id, bos=add_bos,
                             truncate=True)
  scored = np.zeros((len(texts), max_len - 1), bool)
  for i, row in enumerate(ids):
    eos = np.flatnonzero(row[1:lengths[i]] == tokenizer.eos_id)
    stop = eos[0] + 2 if len(eos) else lengths[i]   # up to and including the first EOS
    scored[i, :max(stop - 1, 0)] = True             # target positions 1 .. stop - 1
  return ids, scored, lengths


def _batched_apply(fn: Callable, batch_size: int, *arrays: np.ndarray) -> np.ndarray:
  """`fn(*blocks)` jitted over fixed-size blocks of the aligned `arrays` (the last block
  padded with leading rows, its padding dropped); outputs concatenated, `[N, ...]`."""
  jitted, out, n = jax.jit(fn), [], len(arrays[0])
  for start in range(0, n, batch_size):
    size = min(batch_size, n - start)
    blocks = [np.concatenate([a[start:start + size], a[:batch_size - size]]) for a in arrays]
    out.append(np.asarray(jitted(*map(jnp.asarray, blocks)))[:size])
  return np.concatenate(out)


def gen_ppl(logits_fn: Callable, tokenizer, texts: Sequence[str], max_len: int,
            batch_size: int = 32, add_bos: bool = False) -> float:
  """Generative perplexity of `texts` under a causal evaluator (token-weighted).

  `add_bos=False` is the paper's protocol (GPT-2). An evaluator trained only on rows that
  start with BOS (as `train/shipped_models.py` trains the shipped one) needs `add_bos=True`:
  the BOS is then the unscored first token and every text token is scored.

  Raises:
    ValueError: `texts` is not a non-empty list of strings, `max_len < 2`, no token is
      left to score (empty texts), or the evaluator's scores are not finite.
  """
  texts = _check_texts(texts, max_len, batch_size)
  ids, scored, _ = _encode_batch(tokenizer, texts, max_len, add_bos)
  if not scored.any():
    raise ValueError(f"no token to score in {len(texts)} texts (each needs at least two "
                     "tokens after retokenising; empty texts score nothing)")
  nll = _batched_apply(lambda t: next_token_nll(logits_fn(t), t), batch_size, ids)  # [N, L-1]
  total = float(np.sum(nll[scored], dtype=np.float64))
  if not np.isfinite(total):
    raise ValueError("the evaluator's log-probabilities are not finite (NaN or -inf on a "
                     "scored token); check the evaluator's parameters")
  return float(np.exp(total / int(scored.sum())))


def evaluator_features(features_fn: Callable, tokenizer, texts: Sequence[str], max_len: int,
                       batch_size: int = 32, add_bos: bool = False) -> np.ndarray:
  """Hidden state at each text's last token; `[N, D] float32` (for MAUVE)."""
  texts = _check_texts(texts, max_len, batch_size)
  ids, _, lengths = _encode_batch(tokenizer, texts, max_len, add_bos)
  last = np.maximum(lengths, 1) - 1
  at_last = lambda t, i: features_fn(t)[jnp.arange(t.shape[0]), i]        # [B, D]
  return _batched_apply(at_last, batch_size, ids, last).astype(np.float32)


def mauve_score(p_features: np.ndarray, q_features: np.ndarray, seed: int = 25) -> float:
  """MAUVE between model features `p` and reference features `q` (mauve-text defaults).

  Args: `p_features [N, D]`, `q_features [M, D]`, finite floats, N and M >= 2.
  """
  for name, features in (("p_features", p_features), ("q_features", q_features)):
    features = np.asarray(features)
    if features.ndim != 2 or len(features) < 2 or not np.isfinite(features).all():
      raise ValueError(f"{name} must be a finite [N, D] array with N >= 2, got "
                       f"{features.dtype}{list(features.shape)}")
  if np.shape(p_features)[1] != np.shape(q_features)[1]:
    raise ValueError(f"p_features and q_features must have the same width D, got "
                     f"{np.shape(p_features)[1]} and {np.shape(q_features)[1]}")
  try:
    import mauve
  except ImportError:
    raise ValueError("MAUVE needs the mauve-text package: pip install 'remdm-jax[eval]'"
                     ) from None
  result = mauve.compute_mauve(p_features=p_features, q_features=q_features, device_id=-1,
                               verbose=False, seed=seed)
  return float(result.mauve)
