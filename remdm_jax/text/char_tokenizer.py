"""A character-level tokenizer for the reasoning tasks, stored as one small JSON file.

Ids: 0 PAD, 1 BOS, 2 EOS, 3 MASK, then one id per character of `characters`. A model folder
holding `char_tokenizer.json` (`{"characters": "0123..."}`) uses it (`from_folder`).
"""

from __future__ import annotations

import json
import pathlib
from typing import Iterable

from remdm_jax import files
from remdm_jax.text.token_checks import _check_ids
from remdm_jax.validation import check_string

FILE = "char_tokenizer.json"
SPECIALS = ("<|pad|>", "<|bos|>", "<|eos|>", "<|mask|>")
TASK_CHARACTERS = "0123456789+-*/=,\n"      # Countdown and Sudoku
_MAX_CHARACTERS = 4_096


class CharTokenizer:
  """One id per character (after the four special ids); `encode` refuses any other
  character, naming it and its position."""

  pad_id, bos_id, eos_id, mask_id = 0, 1, 2, 3

  def __init__(self, characters: str = TASK_CHARACTERS):
    characters = check_string("characters", characters)
    if not characters or len(set(characters)) != len(characters):
      raise ValueError(f"characters must be distinct and at least one, got {characters!r:.80}")
    if len(characters) > _MAX_CHARACTERS:
      raise ValueError(f"characters must be at most {_MAX_CHARACTERS}, got {len(characters)}")
    self.characters = characters
    self._ids = {c: i + len(SPECIALS) for i, c in enumerate(characters)}
    self.vocab_size = len(SPECIALS) + len(characters)

  def __eq__(self, other) -> bool:
    return isinstance(other, CharTokenizer) and other.characters == self.characters

  def __hash__(self) -> int:
    return hash(self.characters)

  def encode(self, text: str) -> list[int]:
    """The id of each character of `text`."""
    text = check_string("text", text)
    for position, char in enumerate(text):
      if char not in self._ids:
        raise ValueError(f"text holds {char!r} at position {position}, not a character of "
                         f"this tokenizer ({self.characters!r})")
    return [self._ids[c] for c in text]

  def decode(self, ids: Iterable[int]) -> str:
    """The characters of ids in `[0, vocab_size)`, special ids dropped."""
    ids = _check_ids(ids, self.vocab_size)
    return "".join(self.characters[i - len(SPECIALS)] for i in ids.tolist()
                   if i >= len(SPECIALS))

  def save(self, folder) -> None:
    """Writes `FOLDER/char_tokenizer.json`."""
    files.write_atomic(pathlib.Path(folder) / FILE,
                       json.dumps({"characters": self.characters}) + "\n")

  @classmethod
  def from_folder(cls, folder) -> "CharTokenizer":
    """The tokenizer stored in `FOLDER/char_tokenizer.json`.

    Raises:
      ValueError: the file is missing, not a JSON object with a string "characters", or
        larger than 64 KiB.
    """
    path = pathlib.Path(folder) / FILE
    if path.is_file() and path.stat().st_size > 65_536:
      raise ValueError(f"{path}: larger than 64 KiB")
    payload = files.read_json_object(path, "character tokenizer")
    if not isinstance(payload.get("characters"), str):
      raise ValueError(f"{path}: \"characters\" must be a string")
    return cls(payload["characters"])
