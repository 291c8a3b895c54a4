"""pass@1 over seeds with a Student-t 95% interval, as the ReMDM paper reports its LLaDA
results (mean +- half-width over seeds), and the exact Student-t quantile it needs (no scipy).

pass@1 over S seeds: the mean over seeds of each seed's accuracy, with a 95% Student-t
interval over seeds, mean +- t_{0.975, S-1} * sd / sqrt(S) (sd with S - 1 in the
denominator). One seed gives no interval: its half-width is NaN, and the report says so.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from remdm_jax.validation import ArgumentTypeError, check_array, check_int


def _t_two_sided(t: float, df: int) -> float:
  """P(|T| <= t) for Student's t with integer `df` >= 1 (Abramowitz & Stegun 26.7.3-4, the
  finite series in theta = atan(t / sqrt(df)))."""
  theta = math.atan(t / math.sqrt(df))
  c2 = math.cos(theta) ** 2
  if df % 2 == 0:                    # sin(theta) (1 + 1/2 c^2 + 1*3/(2*4) c^4 + ...)
    term, terms = 1.0, [1.0]
    for k in range(1, df // 2):
      term *= c2 * (2 * k - 1) / (2 * k)
      terms.append(term)
    return math.sin(theta) * math.fsum(terms)
  term, terms = math.cos(theta), []  # 2/pi (theta + sin(theta) (c + 2/3 c^3 + ...))
  for k in range(1, (df + 1) // 2):
    terms.append(term)
    term *= c2 * (2 * k) / (2 * k + 1)
  return 2 / math.pi * (theta + math.sin(theta) * math.fsum(terms))


def t_quantile(p: float, df: int) -> float:
  """The `p` quantile of Student's t distribution with `df` degrees of freedom.

  Exact up to float64 rounding: bisection in theta = atan(t / sqrt(df)) on the closed-form
  distribution function for integer `df` (Abramowitz & Stegun 26.7.3-4; O(df) per step).

  Args:
    p: a probability in (0, 1).
    df: an integer >= 1.

  Raises:
    ValueError / ArgumentTypeError: `p` outside (0, 1) or not a number; `df` not an integer
      >= 1.

  Examples:
    >>> round(t_quantile(0.975, 4), 4)
    2.7764
  """
  if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)):
    raise ArgumentTypeError(f"p must be a number, got {p!r}")
  p, df = float(p), check_int("df", df, 1)
  if not 0 < p < 1:
    raise ValueError(f"p must be in (0, 1), got {p}")
  if p < 0.5:
    return -t_quantile(1 - p, df)
  lo, hi = 0.0, math.pi / 2
  for _ in range(200):
    mid = (lo + hi) / 2
    if mid in (lo, hi):
      break
    lo, hi = (mid, hi) if _t_two_sided(math.sqrt(df) * math.tan(mid), df) < 2 * p - 1 \
        else (lo, mid)
  return math.sqrt(df) * math.tan((lo + hi) / 2)


@dataclasses.dataclass(frozen=True)
class PassAt1:
  """pass@1 over seeds: accuracies as fractions in [0, 1] (printed in percent).

  Attributes:
    mean: the mean over seeds of each seed's accuracy.
    half_width: t_{0.975, S-1} * sd / sqrt(S), the 95% interval's half-width; NaN for S = 1.
    seeds: S, the number of seeds.
    problems: N, the number of problems per seed.
    per_seed: each seed's accuracy, `[S]`.
  """

  mean: float
  half_width: float
  seeds: int
  problems: int
  per_seed: tuple[float, ...]

  def __str__(self) -> str:
    if self.seeds == 1:
      return (f"{100 * self.mean:.1f} (1 seed, {self.problems} problems: no interval; "
              "use 2 or more seeds)")
    return (f"{100 * self.mean:.1f} +- {100 * self.half_width:.1f} (95% interval over "
            f"{self.seeds} seeds, {self.problems} problems)")

  def as_dict(self) -> dict:
    """The fields as JSON-able values (a NaN half-width as None)."""
    fields = dataclasses.asdict(self)
    fields["per_seed"] = list(self.per_seed)
    if math.isnan(self.half_width):
      fields["half_width"] = None
    return fields


def pass_at_1(correct) -> PassAt1:
  """pass@1 of S seeds on N problems, with its 95% Student-t interval over seeds.

  Args:
    correct: `[S, N]` bool (or 0/1 integer) array-like, `correct[s, i]` for seed s and
      problem i; S, N >= 1.

  Returns:
    A `PassAt1`; for S = 1 its half-width is NaN (no spread to estimate from one seed).

  Raises:
    ArgumentTypeError: `correct` is not a rectangular array of booleans or integers.
    ValueError: not 2-D, empty, or integers other than 0 and 1.

  Examples:
    >>> print(pass_at_1([[1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 1, 0]]))
    58.3 +- 35.9 (95% interval over 3 seeds, 4 problems)
  """
  array = np.asarray(check_array("correct", correct, ndim=2, dims="[S, N]"))
  seeds, problems = array.shape
  if seeds == 0 or problems == 0:
    raise ValueError(f"correct is empty (shape [S, N] = {list(array.shape)}); it needs S >= 1 "
                     "seeds and N >= 1 problems")
  if array.dtype != bool:
    if not np.issubdtype(array.dtype, np.integer):
      raise ArgumentTypeError(f"correct must hold booleans (or 0/1 integers), got dtype "
                              f"{array.dtype}")
    if not np.isin(array, (0, 1)).all():
      raise ValueError(f"correct must hold only 0 and 1, got {sorted(set(array.ravel()))[:5]}")
  per_seed = array.astype(np.float64).mean(axis=1)                        # [S] f64
  half = math.nan if seeds == 1 else (t_quantile(0.975, seeds - 1) *
                                      float(per_seed.std(ddof=1)) / math.sqrt(seeds))
  return PassAt1(float(per_seed.mean()), half, seeds, problems,
                 tuple(float(x) for x in per_seed))


def wilson(correct: int, total: int, z: float = 1.959964) -> tuple[float, float]:
  """The Wilson score interval of a proportion `correct / total` (95% by default).

  Raises:
    ValueError: `total < 1` or `correct` outside `[0, total]`.

  Examples:
    >>> [round(v, 4) for v in wilson(8, 10)]
    [0.4902, 0.9433]
  """
  total = check_int("total", total, 1)
  correct = check_int("correct", correct, 0, total)
  p = correct / total
  centre = (p + z * z / (2 * total)) / (1 + z * z / total)
  half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
  return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar(first, second) -> tuple[int, int, float]:
  """McNemar's exact test of two methods scored on the same items.

  Args:
    first, second: `[N]` bool, each method's correctness per item.

  Returns:
    `(b, c, p)`: items only the first got right, items only the second got right, and the
    exact two-sided p-value, `min(1, 2 P[Binomial(b + c, 1/2) <= min(b, c)])` (1 when
    `b + c = 0`).

  Raises:
    ValueError: the two are not 1-D of the same length.
  """
  first, second = np.asarray(first, bool), np.asarray(second, bool)
  if first.ndim != 1 or first.shape != second.shape:
    raise ValueError(f"first and second must be [N] of one length, got {list(first.shape)} "
                     f"and {list(second.shape)}")
  b, c = int(np.sum(first & ~second)), int(np.sum(~first & second))
  n = b + c
  if n == 0:
    return b, c, 1.0
  tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2 ** n
  return b, c, min(1.0, 2 * tail)
