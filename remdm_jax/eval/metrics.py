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


def unigram_entropy(ids: Sequence[int]) -> float:
  """Entropy (nats) of the empirical distribution of one sample's ids."""
  _, counts = np.unique(np.asarray(ids), return_counts=True)
  p = counts / counts.sum()
  return float(-np.sum(p * np.log(p)))


def mean_entropy(rows) -> float:
  return float(np.mean([unigram_entropy(r) for r in rows]))


def _encode_batch(tokenizer, texts: Sequence[str], max_len: int, add_bos: bool):
  """Ids `[N, max_len] int32` (EOS-padded) and the scored mask `[N, max_len - 1] bool`."""
  ids = np.full((len(texts), max_len), tokenizer.eos_id, np.int32)
  scored = np.zeros((len(texts), max_len - 1), bool)
  for i, text in enumerate(texts):
    seq = ([tokenizer.bos_id] if add_bos else []) + tokenizer.encode(text)
    seq = seq[:max_len]
    ids[i, :len(seq)] = seq
    eos = [j for j, t in enumerate(seq) if t == tokenizer.eos_id and j > 0]
    stop = eos[0] + 1 if eos else len(seq)     # count up to and including the first EOS
    scored[i, :max(stop - 1, 0)] = True        # target positions 1 .. stop - 1
  return ids, scored


def gen_ppl(logits_fn: Callable, tokenizer, texts: Sequence[str], max_len: int,
            batch_size: int = 32, add_bos: bool = False) -> float:
  """Generative perplexity of `texts` under a causal evaluator (token-weighted).

  `add_bos=False` is the paper's protocol (GPT-2). An evaluator trained only on rows that
  start with BOS (as `train/shipped_models.py` trains the shipped one) needs `add_bos=True`:
  the BOS is then the unscored first token and every text token is scored.
  """
  ids, scored = _encode_batch(tokenizer, texts, max_len, add_bos)
  nll_fn = jax.jit(lambda t: _token_nll(logits_fn(t), t))
  total, count = 0.0, 0
  for start in range(0, len(texts), batch_size):
    block = ids[start:start + batch_size]
    pad = batch_size - len(block)
    nll = np.asarray(nll_fn(jnp.asarray(np.concatenate([block, ids[:pad]]))))[:len(block)]
    mask = scored[start:start + batch_size]
    total += float(np.sum(nll[mask], dtype=np.float64))
    count += int(mask.sum())
  return float(np.exp(total / max(count, 1)))


def _token_nll(logits: jax.Array, tokens: jax.Array) -> jax.Array:
  """`-log p(tokens[:, 1:])`; `[B, L - 1] float32`."""
  log_probs = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(log_probs, tokens[:, 1:, None], axis=-1)[..., 0]


def evaluator_features(features_fn: Callable, tokenizer, texts: Sequence[str], max_len: int,
                       batch_size: int = 32, add_bos: bool = False) -> np.ndarray:
  """Hidden state at each text's last token; `[N, D] float32` (for MAUVE)."""
  ids, _ = _encode_batch(tokenizer, texts, max_len, add_bos)
  last = np.array([min(max(len(tokenizer.encode(t)) + add_bos, 1), max_len) - 1
                   for t in texts])
  fn = jax.jit(features_fn)
  out = []
  for start in range(0, len(texts), batch_size):
    block = ids[start:start + batch_size]
    pad = batch_size - len(block)
    hidden = np.asarray(fn(jnp.asarray(np.concatenate([block, ids[:pad]]))))[:len(block)]
    out.append(hidden[np.arange(len(block)), last[start:start + batch_size]])
  return np.concatenate(out).astype(np.float32)


def mauve_score(p_features: np.ndarray, q_features: np.ndarray, seed: int = 25) -> float:
  """MAUVE between model features `p` and reference features `q` (mauve-text defaults)."""
  try:
    import mauve
  except ImportError:
    raise ValueError("MAUVE needs the mauve-text package: pip install 'remdm-jax[eval]'"
                     ) from None
  result = mauve.compute_mauve(p_features=p_features, q_features=q_features, device_id=-1,
                               verbose=False, seed=seed)
  return float(result.mauve)
