"""Countdown as Ye et al. (ICLR 2025) and the Dream evaluation write it.

Input: the numbers, then the target, joined by commas: `"15,44,79,50"`. Output: a chain of
binary equations, each on two numbers still available (given or an earlier result), whose
last result is the target: `"44-15=29,79-29=50"`. Every given number is used exactly once;
every intermediate result is an integer (subtraction larger minus smaller, division exact).

Ye et al., "Beyond Autoregression: Discrete Diffusion for Complex Reasoning and Planning",
ICLR 2025, arXiv 2410.14157 (github.com/HKUNLP/diffusion-vs-ar).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import re
from typing import ClassVar

import numpy as np

from remdm_jax.tasks.base import Task, register
from remdm_jax.validation import check_int, check_range, option

_EQUATION = re.compile(r"(\d{1,9})([-+*/])(\d{1,9})=(-?\d{1,18})")
_NUMBERS = re.compile(r"\d{1,9}(,\d{1,9})+")


def _apply(a: int, op: str, b: int) -> int | None:
  """`a op b` when it is an integer (division exact, by a nonzero number), else None."""
  if op == "+":
    return a + b
  if op == "-":
    return a - b
  if op == "*":
    return a * b
  return a // b if b and a % b == 0 else None


def parse_input(input_text: str) -> tuple[list[int], int] | None:
  """`(numbers, target)` of an input such as "15,44,79,50", or None when it is not one."""
  text = input_text.strip()
  if not _NUMBERS.fullmatch(text):
    return None
  values = [int(v) for v in text.split(",")]
  return values[:-1], values[-1]


def check_chain(numbers: list[int], target: int, prediction: str) -> bool:
  """Whether `prediction` is a chain of `len(numbers) - 1` true equations that uses each
  given number exactly once, reuses only results written before it, and ends at `target`."""
  equations = [e.strip() for e in prediction.strip().split(",")]
  if len(equations) != len(numbers) - 1:
    return False
  pool = collections.Counter(numbers)
  result = None
  for equation in equations:
    match = _EQUATION.fullmatch(equation.replace(" ", ""))
    if match is None:
      return False
    a, op, b, result = int(match[1]), match[2], int(match[3]), int(match[4])
    pool[a] -= 1
    pool[b] -= 1
    if pool[a] < 0 or pool[b] < 0 or _apply(a, op, b) != result:
      return False
    pool[result] += 1
  return result == target and +pool == collections.Counter([target])


def solutions(numbers: list[int], target: int) -> list[str]:
  """The chains that solve `numbers` for `target` written the way the generator writes them:
  every equation larger operand first, every result positive (so a subset of what
  `check_chain` accepts: it also takes "5-5=0,7+0=7" and smaller operands first).

  Args:
    numbers: the given numbers, at least 2 positive integers.
    target: a positive integer.

  Returns:
    The distinct chains (equal numbers would repeat one), fewest multiplications and
    divisions first, then by operators (+ before - before * before /), then as text. The
    search is exhaustive: 48 chains for 3 numbers, 1,152 for 4, about a second for 6.

  Raises:
    ValueError: fewer than 2 numbers, or a number or the target not a positive integer.

  Examples:
    >>> solutions([15, 44, 79], 50)
    ['79+15=94,94-44=50', '79-44=35,35+15=50', '44-15=29,79-29=50']
  """
  if len(numbers) < 2:
    raise ValueError(f"numbers must hold at least 2 numbers, got {list(numbers)}")
  for name, value in [*((f"numbers[{i}]", n) for i, n in enumerate(numbers)),
                      ("target", target)]:
    check_int(name, value, 1)
  found = []

  def extend(pool: list[int], equations: list[str], operators: str) -> None:
    if len(pool) == 1:
      if pool[0] == target:
        found.append((sum(op in "*/" for op in operators),
                      ["+-*/".index(op) for op in operators], ",".join(equations)))
      return
    for i, j in itertools.combinations(range(len(pool)), 2):
      a, b = max(pool[i], pool[j]), min(pool[i], pool[j])
      rest = [x for k, x in enumerate(pool) if k not in (i, j)]
      for op in "+-*/":
        value = _apply(a, op, b)
        if value is not None and value > 0:
          extend(rest + [value], equations + [f"{a}{op}{b}={value}"], operators + op)

  extend(list(numbers), [], "")
  return list(dict.fromkeys(chain for *_, chain in sorted(found)))   # equal numbers repeat


@register
@dataclasses.dataclass(frozen=True)
class Countdown(Task):
  """Countdown with `num_numbers` numbers from `[low, high]` and a target in
  `[min_target, max_target]`; the defaults are the standard CD3 (Ye et al.'s data)."""

  name: ClassVar[str] = "countdown"
  num_numbers: int = option(3, "given numbers (CD3: 3, CD4: 4)")
  low: int = option(1, "smallest given number")
  high: int = option(99, "largest given number")
  min_target: int = option(10, "smallest target")
  max_target: int = option(100, "largest target")
  simplest: bool = option(False, "write the first of `solutions` (fewest * and /) as the "
                                 "output instead of the chain that drew the target (about "
                                 "a second per example for 6 numbers)")

  def __post_init__(self):
    super().__post_init__()
    check_range("num_numbers", self.num_numbers, 2, 6)
    check_range("low", self.low, 1)
    check_range("high", self.high, self.low)
    check_range("min_target", self.min_target, 1)
    check_range("max_target", self.max_target, self.min_target)
    if not isinstance(self.simplest, bool):
      raise ValueError(f"simplest must be true or false, got {self.simplest!r}")

  @property
  def max_input_length(self) -> int:
    return (len(str(self.high)) + 1) * self.num_numbers + len(str(self.max_target))

  @property
  def max_output_length(self) -> int:
    """Each equation `a op b=c` with operands at most `high ** k` (k numbers merged) bounded
    by the product of all the numbers; a generous bound, used to size the answer."""
    digits = len(str(self.high ** self.num_numbers))
    return (self.num_numbers - 1) * (3 * digits + 3) - 1

  def _combine(self, rng: np.random.Generator, pool: list[int]) -> str | None:
    """Merges two random items of `pool` by a random operator (in place); returns the
    equation, or None when the operator does not apply (a zero or an inexact division)."""
    i, j = (int(k) for k in rng.choice(len(pool), size=2, replace=False))
    a, b = max(pool[i], pool[j]), min(pool[i], pool[j])
    op = "+-*/"[int(rng.integers(4))]
    value = _apply(a, op, b)
    if value is None or value <= 0:
      return None
    pool[:] = [x for k, x in enumerate(pool) if k not in (i, j)] + [value]
    return f"{a}{op}{b}={value}"

  def draw(self, rng: np.random.Generator) -> dict[str, str]:
    while True:
      numbers = [int(x) for x in rng.integers(self.low, self.high + 1, size=self.num_numbers)]
      pool, equations = list(numbers), []
      while len(pool) > 1 and (equation := self._combine(rng, pool)) is not None:
        equations.append(equation)
      if len(pool) == 1 and self.min_target <= pool[0] <= self.max_target:
        output = solutions(numbers, pool[0])[0] if self.simplest else ",".join(equations)
        return {"input": ",".join(map(str, numbers + pool)), "output": output}

  def verify(self, input_text: str, prediction: str) -> bool:
    parsed = parse_input(input_text)
    return (parsed is not None and isinstance(prediction, str) and
            check_chain(parsed[0], parsed[1], prediction))

  def split_key(self, example: dict[str, str]) -> str:
    numbers, target = parse_input(example["input"])
    return ",".join(map(str, sorted(numbers) + [target]))
