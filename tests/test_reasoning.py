"""Reasoning scores against independent computations: a brute-force Countdown solver, exact
enumeration of every expression, hand-computed intervals and the t distribution."""

import builtins
import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from remdm_jax.eval import intervals as iv
from remdm_jax.eval import reasoning as rs
from remdm_jax.validation import ArgumentTypeError


def _expressions(numbers):
  """Every fully parenthesised expression using each of `numbers` once, as (text, value);
  value None where it divides by zero. Independent of the library: plain recursion."""
  if len(numbers) == 1:
    return [(str(numbers[0]), Fraction(numbers[0]))]
  out = []
  for size in range(1, len(numbers)):
    for left_idx in itertools.combinations(range(len(numbers)), size):
      left = [numbers[i] for i in left_idx]
      right = [numbers[i] for i in range(len(numbers)) if i not in left_idx]
      for (lt, lv), (rt, rv) in itertools.product(_expressions(left), _expressions(right)):
        for op in "+-*/":
          if lv is None or rv is None or (op == "/" and rv == 0):
            value = None
          else:
            value = {"+": lv + rv, "-": lv - rv, "*": lv * rv}[op] if op != "/" else lv / rv
          out.append((f"({lt} {op} {rt})", value))
  return out


def _solvable(numbers, target) -> bool:
  return any(value == target for _, value in _expressions(list(numbers)))


def test_problems_are_deterministic_per_seed():
  first = rs.countdown_problems(7, 20)
  assert first == rs.countdown_problems(7, 20)
  assert [p.numbers for p in first] != [p.numbers for p in rs.countdown_problems(8, 20)]


def test_every_generated_problem_is_solvable_by_brute_force():
  problems = rs.countdown_problems(3, 40)
  assert len(problems) == 40
  for p in problems:
    assert len(p.numbers) == 3 and all(1 <= x <= 99 for x in p.numbers)
    assert 1 <= p.target <= 100 and isinstance(p.target, int)
    assert _solvable(p.numbers, p.target), p
    assert rs.score_countdown(p, "Answer: " + p.solution), p


def test_generator_options_are_honoured():
  problems = rs.countdown_problems(0, 15, num_numbers=4, low=2, high=9, max_target=30)
  for p in problems:
    assert len(p.numbers) == 4 and all(2 <= x <= 9 for x in p.numbers)
    assert 1 <= p.target <= 30
    assert _solvable(p.numbers, p.target), p
  assert {len(p.numbers) for p in rs.countdown_problems(1, 5, num_numbers=2)} == {2}


def test_prompt_is_one_line_naming_the_numbers_and_target():
  prompt = rs.CountdownProblem([3, 5, 7], 22).prompt()
  assert prompt == ("Use the numbers [3, 5, 7], each exactly once, and +, -, *, / to write an "
                    "equation that equals 22. Answer:")
  assert "\n" not in prompt


@pytest.mark.parametrize("numbers,target", [((3, 5, 7), 22), ((7, 2, 4), 14), ((4, 4, 8), 1)])
def test_scorer_agrees_with_exact_enumeration_of_every_expression(numbers, target):
  problem = rs.CountdownProblem(numbers, target)
  expressions = _expressions(list(numbers))
  assert len(expressions) == 192          # 12 ordered trees of 3 leaves x 4^2 operators
  right = 0
  for text, value in expressions:
    want = value is not None and value == target
    right += want
    assert rs.score_countdown(problem, f"Answer: {text}") == want, text
  assert right >= 1


P22 = rs.CountdownProblem((3, 5, 7), 22)
P14 = rs.CountdownProblem((7, 2, 4), 14)


@pytest.mark.parametrize("problem,text", [
    (P22, "Answer: 3 * 5 + 7"),
    (P22, "Answer: 3*5+7 = 22"),
    (P22, "answer:   7 + (5 * 3)  "),
    (P22, "Answer: 22 = 5 * 3 + 7"),
    (P22, "Let me think.\nAnswer:\n`(3 * 5) + 7`.\nDone."),
    (P22, "The result is \\boxed{3 \\times 5 + 7}"),
    (P22, "<answer> 5 * 3 + 7 </answer>"),
    (P22, "$3 × 5 + 7 = 22$"),
    (P22, "First 3 * 5 = 15, so the equation is 3 * 5 + 7 = 22."),
    (P22, " 3*5+7"),
    (P22, "(so 3 * 5 + 7)"),
    (P14, "Answer: 7 / 2 * 4 = 14"),
    (P14, "Answer: (7 / 2) * 4"),
    (P14, "Answer: 4 / (2 / 7)"),
    (rs.CountdownProblem((5, 3, 2), -4), "Answer: -(5 + 3) / 2"),   # unary minus
])
def test_scorer_accepts_correct_equations(problem, text):
  assert rs.score_countdown(problem, text) is True


@pytest.mark.parametrize("problem,text", [
    (P22, "Answer: 3 * 5 + 6"),                 # wrong value
    (P22, "Answer: 3 * 5 + 7 = 23"),            # stated value is not the target
    (P22, "Answer: 3 * 5 + 7 = 22 = 22"),
    (P22, "Answer: 3 * 7 + 1"),                 # 1 is not given, 5 missing
    (P22, "Answer: 15 + 7"),                    # 15 is not given
    (P22, "Answer: 3 * 5 + 7 + 7 - 7"),         # 7 used three times
    (P22, "Answer: 22"),
    (P14, "Answer: 7 * 2"),                     # 4 missing
    (rs.CountdownProblem((5, 7, 7), 5), "Answer: 5 / (7 - 7)"),   # division by zero
    (P22, "Answer: __import__('os')"),
    (P22, "Answer: __import__('os').system('true') or 3 * 5 + 7"),
    (P22, "Answer: abs(-3) * 5 + 7"),
    (P22, "Answer: (3).real * 5 + 7"),
    (rs.CountdownProblem((3, 2, 1), 9), "Answer: 3 ** 2 * 1"),    # power: the right numbers
    (rs.CountdownProblem((7, 2, 4), 12), "Answer: 7 // 2 * 4"),   # floor division
    (rs.CountdownProblem((3, 2, 1), 1), "Answer: 3 % 2 * 1"),
    (rs.CountdownProblem((3, 2, 1), 3), "Answer: 3 | 2 & 1"),
    (P22, "Answer: x * 5 + 7"),
    (P22, "Answer: 3.0 * 5 + 7"),
    (P22, "Answer: 3 * 5 + 7 if True else 0"),
    (P22, "Answer: [3 * 5 + 7][0]"),
    (P22, "Answer: +3 * 5 + 7"),                # unary plus is not allowed
    (P22, "Answer:"),
    (P22, ""),
    (P22, "I do not know."),
    (P22, "\\boxed{3 * 5 + 7"),                 # unclosed box: cut off, no answer
    (P22, "<answer>3 * 5 + 7"),
    (P22, "Answer: " + "(" * 300 + "3" + ")" * 300 + " * 5 + 7"),
    (rs.CountdownProblem((7, 7), 14), "Answer: 0x7 + 7"),    # only decimal digits are numbers
    (rs.CountdownProblem((7, 7), 14), "Answer: 0o7 + 7"),
    (rs.CountdownProblem((7, 7), 14), "Answer: 0b111 + 7"),
    (rs.CountdownProblem((14, 1), 15), "Answer: 1_4 + 1"),
    (rs.CountdownProblem((14, 1), 15), "<answer>1_4 + 1</answer>"),
])
def test_scorer_rejects_wrong_or_unsafe_answers(problem, text):
  assert rs.score_countdown(problem, text) is False


def test_scorer_never_calls_eval_or_exec(monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError("eval/exec called")
  monkeypatch.setattr(builtins, "eval", refuse)
  monkeypatch.setattr(builtins, "exec", refuse)
  assert rs.score_countdown(P22, "Answer: __import__('os')") is False
  assert rs.score_countdown(P22, "Answer: 3 * 5 + 7") is True


@pytest.mark.parametrize("text,want", [
    ("Answer: 1 + 2\nAnswer: 3 + 4", "3 + 4"),
    ("<answer>1+2</answer> then \\boxed{5}", "1+2"),
    ("we have 1 + 2 and then 4 * 5.", "4 * 5"),
    ("only 12 and 13", "13"),
    ("no digits here", None),
    ("Answer: \\(8 \\div 2\\)", "8 / 2"),
])
def test_extract_equation(text, want):
  assert rs.extract_equation(text) == want


@pytest.mark.parametrize("text,want", [
    ("Janet sells 16 - 3 - 4 = 9 eggs.\n#### 18", "18"),
    ("#### 1,000", "1000"),
    ("costs $5 each\n#### $1,234.50", "1234.5"),
    ("The total is \\boxed{72}. Check: 70 + 2.", "72"),
    ("\\boxed{\\$1,200.00}", "1200"),
    ("So the answer is 42. Later 7.", "42"),
    ("THE ANSWER IS: -3.", "-3"),
    ("the answer is 3.0", "3"),
    ("we get 5 - 3 = 2", "2"),
    ("a loss of -12.75 dollars", "-12.75"),
    ("10 apples and 0.50 each gives 5.00.", "5"),
    ("#### -0", "0"),
    ("#### 007.10", "7.1"),
    ("#### " + "9" * 5_000, "9" * 5_000),        # past int's 4,300-digit string limit
    ("no number", None),
    ("", None),
])
def test_extract_number_answer(text, want):
  assert rs.extract_number_answer(text) == want


def test_gsm8k_correct_compares_exact_decimals():
  assert rs.gsm8k_correct("So it is $1,000.", "1000")
  assert rs.gsm8k_correct("#### 2.50", "2.5")
  assert rs.gsm8k_correct("The answer is 18.", "She makes 9 * 2 = 18.\n#### 18")
  assert not rs.gsm8k_correct("#### 2.5000001", "2.5")
  assert not rs.gsm8k_correct("#### 18", "-18")
  assert not rs.gsm8k_correct("no idea", "18")
  huge = "1" + "0" * 4_300                             # int(huge) cannot be printed back
  assert not rs.gsm8k_correct(f"#### {huge}", "72")     # wrong, not an exception
  assert rs.gsm8k_correct(f"The answer is {huge}.", huge)
  assert not rs.gsm8k_correct(f"#### {huge}1", f"{huge}2")


def test_strip_prompt_keeps_what_follows_the_prompt():
  prompt = P22.prompt()
  assert rs.strip_prompt(prompt + " 3 * 5 + 7 = 22", prompt) == " 3 * 5 + 7 = 22"
  assert rs.strip_prompt("user\n\n" + prompt + "assistant\n\nx", prompt) == "assistant\n\nx"
  with pytest.raises(ValueError, match="does not occur"):
    rs.strip_prompt("something else", prompt)


@pytest.mark.parametrize("df,want", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (19, 2.0930),
                                     (30, 2.0423), (120, 1.9799)])
def test_t_quantile_matches_the_standard_table(df, want):
  assert iv.t_quantile(0.975, df) == pytest.approx(want, abs=5e-5)


def test_t_quantile_closed_forms_and_symmetry():
  p = 0.975
  assert iv.t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-12)
  assert iv.t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)),
                                              rel=1e-12)
  assert iv.t_quantile(0.1, 5) == pytest.approx(-iv.t_quantile(0.9, 5), rel=1e-12)
  assert iv.t_quantile(0.5, 3) == pytest.approx(0.0, abs=1e-12)
  assert iv.t_quantile(0.975, 2_000) == pytest.approx(1.9612, abs=1e-4)   # near 1.959964


def test_t_quantile_matches_scipy():
  stats = pytest.importorskip("scipy.stats")
  for df in (1, 3, 6, 11, 50):
    for p in (0.6, 0.9, 0.975, 0.999):
      assert iv.t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-10)


def test_pass_at_1_by_hand():
  correct = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0]], bool)
  # accuracies 0.5, 0.25, 0.75: mean 0.5; sd = sqrt((0 + 0.0625 + 0.0625) / 2) = 0.25
  result = iv.pass_at_1(correct)
  assert result.mean == pytest.approx(0.5)
  assert result.per_seed == (0.5, 0.25, 0.75)
  assert result.half_width == pytest.approx(4.3027 * 0.25 / math.sqrt(3), rel=1e-4)
  assert (result.seeds, result.problems) == (3, 4)
  assert str(result) == "50.0 +- 62.1 (95% interval over 3 seeds, 4 problems)"
  assert iv.pass_at_1(correct.astype(int)) == result
  assert iv.pass_at_1(correct.tolist()) == result


def test_pass_at_1_five_seeds_equal_accuracy_has_zero_width():
  result = iv.pass_at_1(np.tile([True, False, False, True], (5, 1)))
  assert (result.mean, result.half_width) == (0.5, 0.0)
  assert str(result) == "50.0 +- 0.0 (95% interval over 5 seeds, 4 problems)"


def test_pass_at_1_one_seed_has_no_interval():
  result = iv.pass_at_1([[True, False, True, True]])
  assert result.mean == 0.75 and math.isnan(result.half_width)
  assert str(result) == "75.0 (1 seed, 4 problems: no interval; use 2 or more seeds)"
  assert result.as_dict() == {"mean": 0.75, "half_width": None, "seeds": 1, "problems": 4,
                              "per_seed": [0.75]}


@pytest.mark.parametrize("call,error,message", [
    (lambda: rs.countdown_problems(0, 0), ValueError, r"n must be in \[1, inf\), got 0"),
    (lambda: rs.countdown_problems(-1, 3), ValueError, r"seed must be in \[0, inf\)"),
    (lambda: rs.countdown_problems(0, 2.5), TypeError, "n must be an integer"),
    (lambda: rs.countdown_problems(0, 3, num_numbers=1), ValueError,
     r"num_numbers must be in \[2, 6\], got 1"),
    (lambda: rs.countdown_problems(0, 3, low=0), ValueError, r"low must be in \[1, inf\)"),
    (lambda: rs.countdown_problems(0, 3, low=5, high=4), ValueError,
     r"high must be in \[5, inf\), got 4"),
    (lambda: rs.countdown_problems(0, 1, low=90, high=99, max_target=1), ValueError,
     "no target in .*raise max_target"),
    (lambda: rs.CountdownProblem((3, 0, 7), 22), ValueError, r"numbers\[1\] must be in \[1"),
    (lambda: rs.CountdownProblem((3, 2.5), 22), TypeError, "numbers must be a list of positive"),
    (lambda: rs.CountdownProblem((), 22), ValueError, "at least one number"),
    (lambda: rs.CountdownProblem("357", 22), TypeError, "numbers must be a list"),
    (lambda: rs.CountdownProblem((3, 5), 2.0), TypeError, "target must be an integer"),
    (lambda: rs.score_countdown(P22, None), TypeError, "text must be a string"),
    (lambda: rs.score_countdown(P22, b"3*5+7"), TypeError, "text must be a string"),
    (lambda: rs.score_countdown((3, 5, 7), "3*5+7"), TypeError, "problem must be a"),
    (lambda: rs.extract_number_answer(42), TypeError, "text must be a string"),
    (lambda: rs.gsm8k_correct("#### 1", 1), TypeError, "reference must be a string"),
    (lambda: rs.gsm8k_correct("#### 1", "none"), ValueError, "reference must hold a number"),
    (lambda: rs.strip_prompt("abc", ""), ValueError, "prompt must be a non-empty"),
    (lambda: iv.t_quantile(1.0, 3), ValueError, r"p must be in \(0, 1\), got 1.0"),
    (lambda: iv.t_quantile(0.9, 0), ValueError, r"df must be in \[1, inf\), got 0"),
    (lambda: iv.t_quantile("0.9", 2), TypeError, "p must be a number"),
    (lambda: iv.pass_at_1([]), ValueError, r"correct must have 2 dimensions \[S, N\]"),
    (lambda: iv.pass_at_1([[]]), ValueError, r"correct is empty .*\[1, 0\]"),
    (lambda: iv.pass_at_1([[True, False], [True]]), TypeError, "correct must be an array"),
    (lambda: iv.pass_at_1([True, False]), ValueError, "correct must have 2 dimensions"),
    (lambda: iv.pass_at_1([[0.5, 1.0]]), TypeError, "correct must hold booleans"),
    (lambda: iv.pass_at_1([[0, 2]]), ValueError, "correct must hold only 0 and 1"),
    (lambda: iv.pass_at_1("11"), TypeError, "correct must be an array"),
])
def test_bad_arguments_name_the_argument_and_range(call, error, message):
  with pytest.raises(error, match=message):
    call()


def test_type_errors_are_also_value_errors_for_the_command_lines():
  with pytest.raises(ArgumentTypeError):
    rs.score_countdown(P22, None)
