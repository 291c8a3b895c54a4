"""A task's examples as fixed-length training rows and prompts, and answers read back.

A row is `[BOS] input PAD... | output EOS...`: the prompt part is `prompt_length` positions
(BOS, the input's characters, PAD to the end), the answer part `answer_length` positions
(the output's characters, then EOS to the end, at least one). Fixed lengths let one compiled
sampler decode a whole batch: the answer part starts at the same position in every row. As in
LLaDA's supervised fine-tuning, the EOS padding is part of the answer the model learns.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from remdm_jax.text.char_tokenizer import CharTokenizer
from remdm_jax.validation import check_fields, check_range, option


@dataclasses.dataclass(frozen=True)
class RowFormat:
  """Where a task's prompt and answer sit in a row."""

  prompt_length: int = option(32, "positions of BOS + input + PAD")
  answer_length: int = option(32, "positions of output + EOS (at least one EOS)")

  def __post_init__(self):
    check_fields(self)
    check_range("prompt_length", self.prompt_length, 2)
    check_range("answer_length", self.answer_length, 2)

  @property
  def seq_len(self) -> int:
    return self.prompt_length + self.answer_length

  def prompt_ids(self, tokenizer: CharTokenizer, input_text: str) -> np.ndarray:
    """`[prompt_length] int32`: BOS, the input, PAD (EOS for a tokenizer without PAD, such
    as a released LLaDA's).

    Raises:
      ValueError: the input is longer than `prompt_length - 1` characters or holds a
        character the tokenizer does not have.
    """
    ids = [tokenizer.bos_id] + tokenizer.encode(input_text)
    if len(ids) > self.prompt_length:
      raise ValueError(f"input {input_text!r:.40} has {len(ids) - 1} characters, more than "
                       f"prompt_length - 1 = {self.prompt_length - 1}")
    pad = getattr(tokenizer, "pad_id", tokenizer.eos_id)    # a tokenizer without PAD: EOS
    return np.array(ids + [pad] * (self.prompt_length - len(ids)), np.int32)

  def answer_ids(self, tokenizer: CharTokenizer, output_text: str) -> np.ndarray:
    """`[answer_length] int32`: the output, then EOS (at least one)."""
    ids = tokenizer.encode(output_text)
    if len(ids) >= self.answer_length:
      raise ValueError(f"output {output_text!r:.40} has {len(ids)} characters; "
                       f"answer_length={self.answer_length} holds at most "
                       f"{self.answer_length - 1}")
    return np.array(ids + [tokenizer.eos_id] * (self.answer_length - len(ids)), np.int32)

  def training_rows(self, tokenizer: CharTokenizer, examples) -> dict[str, np.ndarray]:
    """`{"tokens": [N, L] int32, "prompt_lengths": [N] int32}` of examples with outputs."""
    tokens = np.stack([np.concatenate([self.prompt_ids(tokenizer, e["input"]),
                                       self.answer_ids(tokenizer, e["output"])])
                       for e in examples])
    return {"tokens": tokens,
            "prompt_lengths": np.full(len(examples), self.prompt_length, np.int32)}

  def prompts(self, tokenizer: CharTokenizer, inputs, mask_id: int) -> np.ndarray:
    """`[N, L] int32` sampler prompts: the prompt part, then `mask_id` in the answer part."""
    return np.stack([np.concatenate([self.prompt_ids(tokenizer, text),
                                     np.full(self.answer_length, mask_id, np.int32)])
                     for text in inputs])

  def answer(self, tokenizer: CharTokenizer, row) -> str:
    """The text of a sampled row's answer part, up to its first EOS (PAD, BOS and mask ids
    dropped)."""
    ids = np.asarray(row)[self.prompt_length:]
    ends = np.flatnonzero(ids == tokenizer.eos_id)
    return tokenizer.decode(ids[:ends[0]] if len(ends) else ids)
