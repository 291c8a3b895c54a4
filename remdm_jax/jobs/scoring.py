"""Scoring a job's samples: Gen PPL and mean unigram entropy under a causal model folder."""

from __future__ import annotations

from remdm_jax import eval as metrics
from remdm_jax.weights.checkpoint import load_model, load_tokenizer_name
from remdm_jax.models import DiT, as_evaluator
from remdm_jax.text.tokenizers import get_tokenizer
from remdm_jax.validation import check_range


def _text(record, position: int) -> str:
  """The `text` of a sample record; a record without one is an error naming it."""
  if not isinstance(record, dict) or not isinstance(record.get("text"), str):
    index = record.get("index", position) if isinstance(record, dict) else position
    raise ValueError(f"record {position} (sample {index}) has no text to score; records "
                     "are sample records as remdm-sample writes them (shards.merge checks "
                     "them)")
  return record["text"]


def evaluate_samples(records: list[dict], evaluator, *, add_bos: bool = False,
                     batch_size: int = 32) -> dict:
  """Gen PPL and mean unigram entropy of the records' texts under a causal model folder.

  Raises:
    ValueError: `evaluator` is not a causal model folder, a record without text, or a bad
      batch size.
  """
  check_range("batch_size", batch_size, 1)
  texts = [_text(record, i) for i, record in enumerate(records)]
  model = load_model(evaluator)
  if not isinstance(model, DiT) or not model.cfg.causal:
    raise ValueError(f"evaluator must be a causal model folder, {evaluator} is not")
  tokenizer = get_tokenizer(load_tokenizer_name(evaluator))
  logits_fn, _ = as_evaluator(model)
  return {"gen_ppl": metrics.gen_ppl(logits_fn, tokenizer, texts, model.cfg.max_length,
                                     batch_size, add_bos=add_bos),
          "entropy": metrics.mean_entropy([tokenizer.encode(text) for text in texts])}
