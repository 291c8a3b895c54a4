"""Metrics against direct computations on a fixed toy evaluator."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remdm_jax import eval as ev
from remdm_jax.text.tokenizers import ByteTokenizer

TOK = ByteTokenizer()
TABLE = np.random.default_rng(0).standard_normal((TOK.vocab_size, TOK.vocab_size)) * 2


def bigram_logits(tokens):
  """A causal evaluator: next-token logits depend on the current token only."""
  return jnp.asarray(TABLE, jnp.float32)[tokens]


def _direct_gen_ppl(texts, max_len):
  total, count = 0.0, 0
  for text in texts:
    seq = TOK.encode(text)[:max_len]
    for j in range(1, len(seq)):
      row = TABLE[seq[j - 1]]
      total -= row[seq[j]] - np.log(np.exp(row).sum())
      count += 1
      if seq[j] == TOK.eos_id:
        break
  return np.exp(total / count)


def test_gen_ppl_is_token_weighted_and_skips_the_first_token():
  texts = ["hello there", "a", "the quick brown fox jumps", "zz"]
  got = ev.gen_ppl(bigram_logits, TOK, texts, max_len=12, batch_size=3)
  assert got == pytest.approx(_direct_gen_ppl(texts, 12), rel=1e-5)


def test_gen_ppl_stops_after_the_first_eos():
  class WithEos(ByteTokenizer):
    def encode(self, text):
      return [self.eos_id if c == ord("|") else c for c in super().encode(text)]
  tok = WithEos()
  a = ev.gen_ppl(bigram_logits, tok, ["ab|cdef"], max_len=16)
  ids = tok.encode("ab|cdef")
  nll = [-(TABLE[ids[j - 1]][ids[j]] - np.log(np.exp(TABLE[ids[j - 1]]).sum()))
         for j in (1, 2)]
  assert a == pytest.approx(np.exp(np.mean(nll)), rel=1e-5)


def test_unigram_entropy():
  assert ev.unigram_entropy([1, 1, 2, 2]) == pytest.approx(np.log(2))
  assert ev.unigram_entropy([5] * 10) == 0.0
  assert ev.mean_entropy([[1, 2], [3, 3]]) == pytest.approx(np.log(2) / 2)


def test_features_take_the_last_token():
  feats = ev.evaluator_features(lambda t: jax.nn.one_hot(t, 300) * 1.0, TOK, ["abc", "xy"],
                                max_len=8, batch_size=4)
  assert feats.shape == (2, 300) and feats[0, ord("c")] == 1 and feats[1, ord("y")] == 1


def test_mauve_separates_distributions():
  rng = np.random.default_rng(0)
  p = rng.standard_normal((200, 8)).astype(np.float32)
  same = rng.standard_normal((200, 8)).astype(np.float32)
  far = (rng.standard_normal((200, 8)) + 4).astype(np.float32)
  assert ev.mauve_score(p, same) > 0.9 > 0.2 > ev.mauve_score(p, far)


def test_add_bos_scores_every_text_token():
  got = ev.gen_ppl(bigram_logits, TOK, ["hi"], max_len=8, add_bos=True)
  seq = [TOK.bos_id] + TOK.encode("hi")
  nll = [-(TABLE[seq[j - 1]][seq[j]] - np.log(np.exp(TABLE[seq[j - 1]]).sum())) for j in (1, 2)]
  assert got == pytest.approx(np.exp(np.mean(nll)), rel=1e-5)
  feats = ev.evaluator_features(lambda t: jax.nn.one_hot(t, 300) * 1.0, TOK, ["ab"],
                                max_len=8, add_bos=True)
  assert feats[0, ord("b")] == 1


@pytest.mark.parametrize("texts,max_len,match", [
    ([], 12, "texts is empty"),
    ("hello there", 12, "texts must be a list of strings"),
    (["", ""], 12, "no token to score in 2 texts"),
    (["a", "b"], 12, "no token to score"),                     # one byte each: nothing scored
    (["hello there"], 1, r"max_len must be in \[2, inf\), got 1"),
    ([b"bytes"], 12, "texts must be a list of strings"),
])
def test_degenerate_texts_are_refused_never_scored_1(texts, max_len, match):
  with pytest.raises(ValueError, match=match):
    ev.gen_ppl(bigram_logits, TOK, texts, max_len=max_len)


def test_nonfinite_evaluator_is_refused():
  broken = lambda tokens: jnp.full(tokens.shape + (TOK.vocab_size,), jnp.nan)
  with pytest.raises(ValueError, match="log-probabilities are not finite"):
    ev.gen_ppl(broken, TOK, ["hello there"], max_len=12)


@pytest.mark.parametrize("rows,match", [
    ("abc", "rows must be a non-empty sequence"),
    ([], "rows must be a non-empty sequence"),
    (["abc"], r"rows\[0\] must be a 1-D sequence of integer ids"),
    ([[1, 2], []], r"rows\[1\] is empty"),
])
def test_entropy_refuses_what_is_not_ids(rows, match):
  with pytest.raises(ValueError, match=match):
    ev.mean_entropy(rows)


@pytest.mark.parametrize("p,q,match", [
    (np.ones((1, 4)), np.ones((5, 4)), r"p_features must be a finite \[N, D\]"),
    (np.full((5, 4), np.nan), np.ones((5, 4)), "p_features must be a finite"),
    (np.ones((5, 4)), np.ones((5, 3)), "same width D, got 4 and 3"),
])
def test_mauve_refuses_bad_features(p, q, match):
  with pytest.raises(ValueError, match=match):
    ev.mauve_score(p, q)


def test_scoring_names_a_record_without_text():
  from remdm_jax.jobs import scoring
  with pytest.raises(ValueError, match=r"record 1 \(sample 7\) has no text to score"):
    scoring.evaluate_samples([{"index": 0, "text": "a"}, {"index": 7, "ids": [1]}],
                             "no-evaluator-needed")
