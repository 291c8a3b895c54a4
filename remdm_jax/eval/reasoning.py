"""Reasoning answers as LLaDA-class models are scored: Countdown, GSM8K numbers, pass@1.

Holds the task side of a reasoning evaluation (problems, answer extraction, exact scoring and
the interval over seeds); sampling lives in `remdm_jax.jobs.sample_job`, and
`sample/llm_countdown_eval.py` joins the two. Nothing here needs JAX or a model.

Countdown with 3 numbers (the "countdown3" task of the ReMDM-LLaDA experiments): given
numbers and a target, write an arithmetic expression over + - * / that equals the target. The
problems and the prompt are generated here (no data set is read), scored in the manner of the
TinyZero and d1 verifiers. Each number is used **exactly once**: the usual wording "can only
be used once" is scored by those verifiers as "the multiset of numbers in the answer equals
the given one", and so it is here. Answers are parsed with `ast` (numbers,
+ - * /, unary minus and parentheses only; never `eval`) and evaluated exactly with
`fractions.Fraction`, so 7 / 2 * 4 = 14 holds and 1 / 3 * 3 = 1 holds.

GSM8K: the reference answer is the number after "####"; a model's answer is taken by the
usual precedence ("####", then `\\boxed{}`, then "The answer is", then the last number) and
compared exactly as a decimal (1,000.00 = 1000), never with a float tolerance.

pass@1 over seeds, with its interval, is in `remdm_jax.eval.intervals`.

References: Nie et al., "Large Language Diffusion Models" (LLaDA), 2025, arXiv:2502.09992;
Zhao et al., "d1: Scaling Reasoning in Diffusion Large Language Models via Reinforcement
Learning", 2025, arXiv:2504.12216; Cobbe et al., "Training Verifiers to Solve Math Word
Problems" (GSM8K), 2021, arXiv:2110.14168.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from decimal import Decimal
from fractions import Fraction

import numpy as np

from remdm_jax.validation import ArgumentTypeError, check_int, check_items, check_string

PROMPT = ("Use the numbers {numbers}, each exactly once, and +, -, *, / to write an equation "
          "that equals {target}. Answer:")   # ends at "Answer:": the model's text is the answer

_MAX_EXPRESSION = 200       # characters; a longer "equation" is wrong, not parsed
_MAX_DRAWS = 10_000         # expression draws per problem before the generator gives up


@dataclasses.dataclass(frozen=True)
class CountdownProblem:
  """One Countdown problem: reach `target` from `numbers`, each used exactly once.

  Attributes:
    numbers: the given numbers, positive integers (a list is stored as a tuple).
    target: the integer to reach.
    solution: one expression that reaches it (how `countdown_problems` built it), or "".
  """

  numbers: tuple[int, ...]
  target: int
  solution: str = dataclasses.field(default="", compare=False)

  def __post_init__(self):
    numbers = check_items("numbers", self.numbers, "positive integers",
                          lambda x: isinstance(x, (int, np.integer)) and not isinstance(x, bool))
    if not numbers:
      raise ValueError("numbers must hold at least one number, got none")
    for i, x in enumerate(numbers):
      check_int(f"numbers[{i}]", x, 1)
    object.__setattr__(self, "numbers", tuple(int(x) for x in numbers))
    object.__setattr__(self, "target", check_int("target", self.target))
    object.__setattr__(self, "solution", check_string("solution", self.solution))

  def prompt(self) -> str:
    """The task as one line of text (`PROMPT`), ending at "Answer:".

    Examples:
      >>> print(CountdownProblem((3, 5, 7), 22).prompt())  # doctest: +NORMALIZE_WHITESPACE
      Use the numbers [3, 5, 7], each exactly once, and +, -, *, / to write an equation
      that equals 22. Answer:
    """
    return PROMPT.format(numbers=list(self.numbers), target=self.target)


def _combine(a: int, b: int, op: str):
  """`a op b` by the classic Countdown rules (every intermediate value a positive integer:
  subtraction larger minus smaller, division only when exact), ordered as needed; returns
  `(value, left_is_a)` or None when no order works."""
  if op == "+":
    return a + b, True
  if op == "*":
    return a * b, True
  if op == "-":
    return (abs(a - b), a > b) if a != b else None
  if a % b == 0:
    return a // b, True
  return (b // a, False) if b % a == 0 else None


def _draw_expression(rng: np.random.Generator, numbers: list[int]):
  """A random expression over all `numbers`: pairs of items merged by a random operator
  until one is left. Returns `(value, text)`, or None when an operator does not apply."""
  items = [(n, str(n), False) for n in numbers]       # (value, text, compound)
  while len(items) > 1:
    i, j = (int(k) for k in rng.choice(len(items), size=2, replace=False))
    op = "+-*/"[int(rng.integers(4))]
    merged = _combine(items[i][0], items[j][0], op)
    if merged is None:
      return None
    value, in_order = merged
    left, right = (items[i], items[j]) if in_order else (items[j], items[i])
    wrap = lambda item: f"({item[1]})" if item[2] else item[1]
    items = [x for k, x in enumerate(items) if k not in (i, j)]
    items.append((value, f"{wrap(left)} {op} {wrap(right)}", True))
  return items[0][0], items[0][1]


def countdown_problems(seed: int, n: int, *, num_numbers: int = 3, low: int = 1,
                       high: int = 99, max_target: int = 100) -> list[CountdownProblem]:
  """`n` Countdown problems, each solvable by construction; the same seed gives the same list.

  Each problem draws `num_numbers` integers uniformly from `[low, high]` and a random
  expression over all of them (operands and operators uniform; subtraction and exact division
  ordered so that every intermediate value is a positive integer); its value is the target
  when it lies in `[1, max_target]`, else the expression is drawn again (rejection sampling;
  new numbers after 100 rejections). The defaults give two-digit numbers and targets up to
  100, as in the usual 3-number Countdown sets.

  Args:
    seed: an integer >= 0 for `numpy.random.default_rng` (no JAX key: the problems are data).
    n: how many problems, >= 1.
    num_numbers: numbers per problem, in [2, 6].
    low, high: the range of the numbers, 1 <= low <= high.
    max_target: the largest target, >= 1.

  Returns:
    `n` `CountdownProblem`s, each with its building expression as `solution`.

  Raises:
    ValueError: an argument out of its range, or no target in `[1, max_target]` found for
      some problem within 10 000 draws (raise `max_target` or lower `low`).

  Examples:
    >>> [p.target for p in countdown_problems(0, 3)] == [p.target for p in
    ...                                                  countdown_problems(0, 3)]
    True
  """
  seed, n = check_int("seed", seed, 0), check_int("n", n, 1)
  num_numbers = check_int("num_numbers", num_numbers, 2, 6)
  low = check_int("low", low, 1)
  high = check_int("high", high, low)
  max_target = check_int("max_target", max_target, 1)
  rng, problems = np.random.default_rng(seed), []
  for _ in range(n):
    for draw in range(_MAX_DRAWS):
      if draw % 100 == 0:
        numbers = [int(x) for x in rng.integers(low, high + 1, size=num_numbers)]
      built = _draw_expression(rng, numbers)
      if built is not None and 1 <= built[0] <= max_target:
        problems.append(CountdownProblem(tuple(numbers), built[0], built[1]))
        break
    else:
      raise ValueError(f"no target in [1, max_target={max_target}] found in {_MAX_DRAWS} draws "
                       f"of {num_numbers} numbers from [{low}, {high}]; raise max_target or "
                       "lower low")
  return problems


_SYMBOLS = {"\\times": "*", "\\cdot": "*", "\\div": "/", "×": "*", "·": "*", "÷": "/",
            "−": "-", "\\left": "", "\\right": "", "\\(": "", "\\)": "", "\\[": "",
            "\\]": "", "$": "", "`": ""}
_EXPRESSION_RUN = re.compile(r"[-(\d][\d \t+\-*/()=]*[\d)]|\d")   # within a line


_UNCLOSED = ""     # the content of a marker left open: an answer cut off, so no answer


def _last_marked(text: str, opening: str, closing: str) -> str | None:
  """The content of the last `opening ... closing` (braces matched for `\\boxed{`), None
  without `opening`, `_UNCLOSED` when it is not closed."""
  start = text.rfind(opening)
  if start < 0:
    return None
  start += len(opening)
  if closing != "}":
    stop = text.find(closing, start)
    return _UNCLOSED if stop < 0 else text[start:stop]
  depth = 1
  for k in range(start, len(text)):
    depth += {"{": 1, "}": -1}.get(text[k], 0)
    if depth == 0:
      return text[start:k]
  return _UNCLOSED


def _balanced(run: str) -> str:
  """`run` without the unmatched "(" at its start or ")" at its end (a run cut out of a
  sentence, "(so 3 * 5 + 7)")."""
  run = run.strip()
  while run.startswith("(") and run.count("(") > run.count(")"):
    run = run[1:].strip()
  while run.endswith(")") and run.count(")") > run.count("("):
    run = run[:-1].strip()
  return run


def extract_equation(text: str) -> str | None:
  """The candidate equation in a model's answer text, cleaned, or None.

  Taken from, in order: the last `<answer>...</answer>`, the last `\\boxed{...}`, the first
  non-empty line after the last "Answer:" (any case); without any of these, the last run of
  digits, operators, parentheses and "=" on one line of the text (one holding an operator
  when there is one). A marker left open (an answer cut off) gives None. Cleaning drops
  backticks, "$", LaTeX math delimiters and a trailing ".", and writes LaTeX and Unicode
  operators (\\times, ×, \\div, ÷, −) as * / -. A trailing "= target" is kept here
  (`score_countdown` checks it).

  Raises:
    ArgumentTypeError: `text` is not a string.

  Examples:
    >>> extract_equation("We get 15 first.\\nAnswer: `3 * 5 + 7 = 22`.")
    '3 * 5 + 7 = 22'
    >>> extract_equation("so \\\\boxed{(7 \\\\div 2) \\\\times 4}")
    '(7 / 2) * 4'
  """
  text = check_string("text", text)
  for opening, closing in (("<answer>", "</answer>"), ("\\boxed{", "}")):
    marked = _last_marked(text, opening, closing)
    if marked is not None:
      break
  else:
    said = list(re.finditer(r"answer\s*:", text, re.IGNORECASE))
    if said:
      lines = [l for l in text[said[-1].end():].splitlines() if l.strip()]
      marked = lines[0] if lines else ""
  if marked is not None:
    for symbol, plain in _SYMBOLS.items():
      marked = marked.replace(symbol, plain)
    marked = marked.strip().rstrip(".").strip()
    return marked or None
  for symbol, plain in _SYMBOLS.items():
    text = text.replace(symbol, plain)
  runs = [_balanced(r) for r in _EXPRESSION_RUN.findall(text)]
  runs = [r for r in runs if r] or [None]
  with_operator = [r for r in runs if r and re.search(r"\d\s*[-+*/]", r)]
  return (with_operator or runs)[-1]


_ARITHMETIC = re.compile(r"[0-9+\-*/()\s]*")    # what an answer may hold, checked before ast
_OPERATORS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
              ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b}


def _evaluate(node, used: list[int]) -> Fraction:
  """The exact value of an allowed expression tree, appending the integers it reads to
  `used`; any other node raises ValueError, a zero divisor ZeroDivisionError."""
  if isinstance(node, ast.Constant) and type(node.value) is int:
    used.append(node.value)
    return Fraction(node.value)
  if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
    return -_evaluate(node.operand, used)
  if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
    left, right = _evaluate(node.left, used), _evaluate(node.right, used)
    return _OPERATORS[type(node.op)](left, right)
  raise ValueError(f"not allowed in an answer: {type(node).__name__}")


def _parse(expression: str) -> tuple[Fraction, list[int]] | None:
  """`(value, numbers used)` of an arithmetic expression, or None when it is not one (any
  name, call, power, attribute, float...) or divides by zero. Only ASCII decimal digits are
  numbers: Python's other literal forms (`0x7`, `0o7`, `1_4`) are not."""
  if len(expression) > _MAX_EXPRESSION or not _ARITHMETIC.fullmatch(expression):
    return None
  try:
    tree = ast.parse(expression.strip(), mode="eval")
    used = []
    return _evaluate(tree.body, used), used
  except (SyntaxError, ValueError, ZeroDivisionError, RecursionError, MemoryError):
    return None


def score_countdown(problem: CountdownProblem, text: str) -> bool:
  """Whether `text` answers `problem`: its equation (`extract_equation`) uses exactly the
  problem's numbers (as a multiset) and equals the target exactly.

  The equation may end with "= target" (or start with "target ="), which must then be the
  target itself; anything other than integers, + - * /, unary minus and parentheses, or a
  division by zero, is a wrong answer.

  Args:
    problem: a `CountdownProblem`.
    text: the model's answer (the text after the prompt).

  Raises:
    ArgumentTypeError: `problem` is not a `CountdownProblem` or `text` not a string.

  Examples:
    >>> score_countdown(CountdownProblem((7, 2, 4), 14), "Answer: 7 / 2 * 4 = 14")
    True
    >>> score_countdown(CountdownProblem((7, 2, 4), 14), "Answer: 7 * 2 = 14")
    False
  """
  if not isinstance(problem, CountdownProblem):
    raise ArgumentTypeError(f"problem must be a CountdownProblem, got "
                            f"{type(problem).__name__}")
  equation = extract_equation(text)
  if equation is None:
    return False
  sides = equation.split("=")
  if len(sides) == 2:              # "expr = target" or "target = expr"
    stated = [_parse(side) for side in sides]
    bare = [s is not None and len(s[1]) == 1 and s[0] == problem.target for s in stated]
    if not any(bare):
      return False
    sides = [sides[1] if bare[0] and not bare[1] else sides[0]]
  if len(sides) != 1:
    return False
  parsed = _parse(sides[0])
  return (parsed is not None and sorted(parsed[1]) == sorted(problem.numbers) and
          parsed[0] == problem.target)


_NUMBER = re.compile(r"(?:(?<![\w)])-)?\$?\d[\d,]*(?:\.\d+)?")


def _normalise_number(raw: str) -> str:
  """A number as text without "$", thousands commas, leading or trailing zeros ("3.0" ->
  "3"). Done on the digits as text, so a number of any length is exact (an `int` of 4,300
  digits or more cannot be turned back into a string, and a `Decimal` context rounds)."""
  raw = raw.replace("$", "").replace(",", "").rstrip(".")
  negative = raw.startswith("-")
  whole, _, fraction = raw.lstrip("-").partition(".")
  whole, fraction = whole.lstrip("0") or "0", fraction.rstrip("0")
  number = whole + (f".{fraction}" if fraction else "")
  return f"-{number}" if negative and number != "0" else number


def extract_number_answer(text: str) -> str | None:
  """The final numeric answer of a GSM8K-style solution, normalised, or None.

  Taken from the first number after the last "####", else in the last `\\boxed{...}`, else
  after the last "the answer is" (any case), else the last number in the text. Commas, "$"
  and a trailing "." are dropped and trailing zeros too ("1,000.50" -> "1000.5", "3.0" ->
  "3"); a minus sign is kept when it does not follow a word or a digit.

  Raises:
    ArgumentTypeError: `text` is not a string.

  Examples:
    >>> extract_number_answer("She pays 3 * $4 = $12.\\n#### 1,200.0")
    '1200'
    >>> extract_number_answer("The answer is -7.50.")
    '-7.5'
  """
  text = check_string("text", text)
  candidates = []
  if "####" in text:
    candidates = _NUMBER.findall(text[text.rfind("####") + 4:])[:1]
  if not candidates and (boxed := _last_marked(text, "\\boxed{", "}")) is not None:
    candidates = _NUMBER.findall(boxed)[-1:]
  if not candidates:
    said = list(re.finditer(r"the answer is", text, re.IGNORECASE))
    candidates = _NUMBER.findall(text[said[-1].end():])[:1] if said else []
  if not candidates:
    candidates = _NUMBER.findall(text)[-1:]
  return _normalise_number(candidates[0]) if candidates else None


def gsm8k_correct(text: str, reference: str) -> bool:
  """Whether the answer in `text` equals `reference` exactly (as decimals).

  Args:
    text: the model's answer.
    reference: the reference number ("72", "1,000") or a whole GSM8K answer ("... #### 72").

  Raises:
    ArgumentTypeError: `text` or `reference` is not a string.
    ValueError: `reference` holds no number.

  Examples:
    >>> gsm8k_correct("So the total is $1,000.", "1000")
    True
  """
  reference = check_string("reference", reference)
  want = extract_number_answer(reference)
  if want is None:
    raise ValueError(f"reference must hold a number, got {reference!r:.60}")
  got = extract_number_answer(text)
  return got is not None and Decimal(got) == Decimal(want)


def strip_prompt(text: str, prompt: str) -> str:
  """The part of a sample's decoded `text` after its `prompt` (its first occurrence).

  Raises:
    ArgumentTypeError: `text` or `prompt` is not a string.
    ValueError: `prompt` is empty or does not occur in `text` (a tokenizer whose decoding
      does not give the prompt back: decode the ids after the prompt instead).
  """
  text, prompt = check_string("text", text), check_string("prompt", prompt)
  if not prompt:
    raise ValueError("prompt must be a non-empty string, got ''")
  at = text.find(prompt)
  if at < 0:
    raise ValueError(f"the prompt {prompt!r:.50} does not occur in the text {text!r:.80}")
  return text[at + len(prompt):]
