"""Reasoning tasks with exact verifiers, in the field's JSON-lines format.

A task is a frozen dataclass registered by name (`REGISTRY`): it generates examples from a
seed, verifies a predicted answer exactly, and assigns every example to a split by a hash of
what must not leak between splits (`split_key`: a Sudoku's solution grid, a Countdown's
numbers and target), so a test item's key never occurs in training, whatever the seeds.

An example is `{"input": str, "output": str}`, one JSON object per line (`read_examples`,
`write_examples`); any file in that format can be scored (`verify`).
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
import pathlib
from typing import ClassVar

import numpy as np

from remdm_jax import files
from remdm_jax.registry import Registry, flat_options
from remdm_jax.validation import check_choice, check_fields, check_int, check_string

REGISTRY = Registry("task", "countdown")
register = REGISTRY.register
SPLITS = ("train", "valid", "test")
SPLIT_SHARES = (0.8, 0.1, 0.1)      # of the split keys, by hash
MAX_FILE_BYTES = 256 * 2**20        # a JSON-lines file larger than this is refused
MAX_TEXT = 4_096                    # characters of one input or output


def split_of(key: str) -> str:
  """The split ("train", "valid" or "test") of a split key: the first 8 bytes of its
  SHA-256 as a fraction in [0, 1), cut at 0.8 and 0.9 (`SPLIT_SHARES`)."""
  fraction = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
  return SPLITS[int(np.searchsorted(np.cumsum(SPLIT_SHARES), fraction, side="right"))]


@dataclasses.dataclass(frozen=True)
class Task(abc.ABC):
  """Base class: a `name`, `draw` (one candidate example), `verify` and `split_key`."""

  name: ClassVar[str]
  CHOICE: ClassVar = ("task", REGISTRY)

  def __post_init__(self):
    check_fields(self)

  def options(self) -> dict:
    """The flat form `{"task": name, **fields}` (`REGISTRY.build(**it)` rebuilds it)."""
    return flat_options(self)

  @abc.abstractmethod
  def draw(self, rng: np.random.Generator) -> dict[str, str]:
    """One random example `{"input", "output"}` (of any split)."""

  @abc.abstractmethod
  def verify(self, input_text: str, prediction: str) -> bool:
    """Whether `prediction` solves `input_text` (exactly; never raises on a bad prediction)."""

  @abc.abstractmethod
  def split_key(self, example: dict[str, str]) -> str:
    """What decides an example's split (`split_of`)."""

  @property
  @abc.abstractmethod
  def max_input_length(self) -> int:
    """The most characters an input of this task has."""

  @property
  @abc.abstractmethod
  def max_output_length(self) -> int:
    """The most characters a reference output of this task has."""

  def generate(self, seed: int, n: int, split: str) -> list[dict[str, str]]:
    """`n` distinct examples of `split`, the same for the same task, seed and split.

    Raises:
      ValueError: a bad argument, or fewer than `n` distinct examples found in `200 n + 10000`
        draws (the task has too few of them: ask for fewer).
    """
    seed, n = check_int("seed", seed, 0), check_int("n", n, 1)
    check_choice("split", split, SPLITS)
    rng = np.random.default_rng([seed, SPLITS.index(split), 0x7A5C])
    found: dict[str, dict[str, str]] = {}
    for _ in range(200 * n + 10_000):
      example = self.draw(rng)
      if split_of(f"{self.name}:{self.split_key(example)}") == split:
        found.setdefault(example["input"], example)
        if len(found) == n:
          return list(found.values())
    raise ValueError(f"task {self.name!r} gave {len(found)} distinct {split} examples, fewer "
                     f"than n={n}; ask for fewer")


def check_example(example, where: str) -> dict[str, str]:
  """`{"input": str, "output": str}` (other keys dropped), or a ValueError naming `where`."""
  if not isinstance(example, dict) or not isinstance(example.get("input"), str):
    raise ValueError(f"{where}: expected an object with a string \"input\", got "
                     f"{str(example)[:60]!r}")
  output = example.get("output", "")
  if not isinstance(output, str):
    raise ValueError(f"{where}: \"output\" must be a string, got {type(output).__name__}")
  for name, text in (("input", example["input"]), ("output", output)):
    if len(text) > MAX_TEXT:
      raise ValueError(f"{where}: \"{name}\" has {len(text)} characters, more than {MAX_TEXT}")
  return {"input": example["input"], "output": output}


def read_examples(path) -> list[dict[str, str]]:
  """The examples of a JSON-lines file (one object per non-blank line, with a string
  "input" and, optionally, a string "output").

  Raises:
    ValueError: the file is missing, over 256 MiB, not UTF-8, or a line is not such an
      object (naming the file and line).
  """
  path = pathlib.Path(path)
  if path.is_file() and path.stat().st_size > MAX_FILE_BYTES:
    raise ValueError(f"{path}: {path.stat().st_size} bytes, more than {MAX_FILE_BYTES}")
  examples = []
  for number, line in enumerate(files.read_text(path, "examples file").splitlines(), 1):
    if not line.strip():
      continue
    try:
      example = json.loads(line)
    except json.JSONDecodeError as err:
      raise ValueError(f"{path}:{number}: not valid JSON ({err.msg})") from None
    examples.append(check_example(example, f"{path}:{number}"))
  if not examples:
    raise ValueError(f"{path}: no examples (one JSON object per line)")
  return examples


def write_examples(path, examples: list[dict[str, str]]) -> None:
  """Writes `examples` as JSON lines, atomically."""
  files.write_atomic(path, "".join(json.dumps(check_example(e, f"examples[{i}]")) + "\n"
                                   for i, e in enumerate(examples)))


def make_task(task: str = "countdown", **options) -> Task:
  """A task from flat keywords: `make_task("sudoku", size=6)`."""
  return REGISTRY.build(check_string("task", task), **options)
