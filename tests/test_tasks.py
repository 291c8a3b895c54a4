"""The reasoning tasks: generators against independent enumerations, exact verifiers, splits
by solution, the files, the character tokenizer and the task rows."""

import fractions
import itertools
import json

import numpy as np
import pytest

from remdm_jax.tasks import (Countdown, Sudoku, make_task, read_examples, split_of,
                             write_examples)
from remdm_jax.tasks import countdown
from remdm_jax.tasks.rows import RowFormat
from remdm_jax.text.char_tokenizer import CharTokenizer


def _all_grids(size, box_rows, box_cols):
  """Every solution grid, by brute force over row permutations (independent of the solver)."""
  rows = list(itertools.permutations(range(1, size + 1)))
  grids = []

  def extend(prefix):
    if len(prefix) == size:
      grids.append(np.array(prefix))
      return
    r = len(prefix)
    for row in rows:
      if any(row[c] == p[c] for p in prefix for c in range(size)):
        continue
      top = r - r % box_rows
      if any(row[c] in {prefix[rr][cc] for rr in range(top, r)
                        for cc in range(c - c % box_cols, c - c % box_cols + box_cols)}
             for c in range(size)):
        continue
      extend(prefix + [row])

  extend([])
  return grids


GRIDS_4 = _all_grids(4, 2, 2)


def test_there_are_288_sudoku_grids_of_size_4():
  assert len(GRIDS_4) == 288


def test_sudoku_puzzles_have_one_solution_and_the_clue_count_asked():
  task = Sudoku(4, 4, 12)
  for example in task.generate(3, 40, "train"):
    puzzle = np.array([[int(c) for c in r] for r in example["input"].split("\n")])
    fits = [g for g in GRIDS_4 if np.all((puzzle == 0) | (puzzle == g))]
    assert len(fits) == 1
    assert "\n".join("".join(map(str, r)) for r in fits[0]) == example["output"]
    assert 4 <= np.count_nonzero(puzzle) <= 12


def test_sudoku_6_uses_boxes_of_2_rows_and_3_columns():
  task = Sudoku(6, 14, 14)
  example = task.generate(0, 1, "train")[0]
  grid = np.array([[int(c) for c in r] for r in example["output"].split("\n")])
  for r in range(0, 6, 2):
    for c in range(0, 6, 3):
      assert sorted(grid[r:r + 2, c:c + 3].ravel()) == list(range(1, 7))
  assert task.verify(example["input"], example["output"])
  # the transpose keeps rows and columns valid; its 2x3 boxes are the grid's 3x2 ones
  transposed = grid.T
  boxes_hold = all(sorted(transposed[r:r + 2, c:c + 3].ravel()) == list(range(1, 7))
                   for r in range(0, 6, 2) for c in range(0, 6, 3))
  text = "\n".join("".join(map(str, r)) for r in transposed)
  assert Sudoku(6).verify("\n".join(["000000"] * 6), text) is boxes_hold


def test_sudoku_verifier_checks_clues_and_rules():
  task = Sudoku()
  puzzle, solution = "1000\n0010\n0000\n0001", None
  fits = [g for g in GRIDS_4 if np.all((np.array([[int(c) for c in r] for r in
                                                  puzzle.split("\n")]) == 0) |
                                       (np.array([[int(c) for c in r] for r in
                                                  puzzle.split("\n")]) == g))]
  solution = "\n".join("".join(map(str, r)) for r in fits[0])
  assert task.verify(puzzle, solution)
  other = next(g for g in GRIDS_4 if g[0, 0] != 1)
  assert not task.verify(puzzle, "\n".join("".join(map(str, r)) for r in other))   # clue
  broken = solution[:-1] + ("1" if solution[-1] != "1" else "2")
  assert not task.verify(puzzle, broken)                                           # rules
  for bad in ("", "1234", solution + "\n1234", solution.replace("\n", ""), "x" * 19):
    assert not task.verify(puzzle, bad)
  assert task.verify(puzzle, f"  {solution}\n")                  # surrounding space is fine


def test_sudoku_splits_hold_out_whole_solution_grids():
  task = Sudoku()
  train = {e["output"] for e in task.generate(0, 600, "train")}
  test = {e["output"] for e in task.generate(0, 200, "test")}
  assert not train & test
  every = ["\n".join("".join(map(str, r)) for r in g) for g in GRIDS_4]
  held = [g for g in every if split_of(f"sudoku:{g}") == "test"]
  assert test <= set(held) and 15 <= len(held) <= 45       # about 10% of 288


def _chain_value(text):
  """An independent reading of a chain: Python integer arithmetic on each side."""
  values = []
  for equation in text.split(","):
    left, right = equation.split("=")
    op = next(o for o in "+-*/" if o in left[1:])
    a, b = left.split(op, 1)
    result = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b),
              "/": int(a) // int(b) if int(a) % int(b) == 0 else None}[op]
    assert result == int(right)
    values.append((int(a), int(b), result))
  return values


def test_countdown_examples_are_true_chains_over_each_number_once():
  task = Countdown()
  for example in task.generate(0, 300, "train"):
    numbers = [int(v) for v in example["input"].split(",")]
    numbers, target = numbers[:-1], numbers[-1]
    assert len(numbers) == 3 and all(1 <= n <= 99 for n in numbers) and 10 <= target <= 100
    steps = _chain_value(example["output"])
    pool = list(numbers)
    for a, b, result in steps:
      pool.remove(a)
      pool.remove(b)
      pool.append(result)
    assert pool == [target] and task.verify(example["input"], example["output"])


@pytest.mark.parametrize("prediction, right", [
    ("44-15=29,79-29=50", True),
    ("79-29=50,44-15=29", False),          # 29 used before it is written
    ("44-15=29,79-29=51", False),          # the last result is not the target
    ("44-15=28,79-28=51", False),          # a false equation
    ("44-15=29,29+21=50", False),          # 21 is not a given number
    ("44-15=29,79-29=50,50-0=50", False),  # too many equations
    ("79-44=35,35+15=50", True),           # another true chain
    ("44 - 15 = 29, 79 - 29 = 50", True),  # spaces are fine
    ("44-15=29", False), ("", False), ("44+15", False), ("4e1-15=25,79-29=50", False),
])
def test_countdown_verifier(prediction, right):
  assert Countdown().verify("15,44,79,50", prediction) is right


def test_countdown_number_used_twice_or_not_at_all_is_wrong():
  task = Countdown()
  assert not task.verify("5,5,7,17", "5+7=12,12+5=17,5-5=0")
  assert task.verify("5,5,7,17", "5+7=12,12+5=17")
  assert not task.verify("5,6,7,17", "5+5=10,10+7=17")
  assert task.verify("8,2,3,12", "8/2=4,4*3=12")
  assert not task.verify("7,2,3,10", "7/2=3,3+7=10")        # division must be exact
  for bad_input in ("", "15 44", "15,", "a,b,c"):
    assert not task.verify(bad_input, "44-15=29,79-29=50")


def _chains_by_brute_force(numbers, target):
  """Every chain over ordered operand pairs, each result computed with exact fractions, that
  the verifier accepts and that writes the larger operand first (any number of numbers)."""
  ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
         "/": lambda a, b: fractions.Fraction(a, b) if b else None}
  found = set()

  def extend(pool, chain):
    if len(pool) == 1:
      text = ",".join(chain)
      if Countdown().verify(",".join(map(str, numbers + [target])), text):
        found.add(text)
      return
    for i, j in itertools.permutations(range(len(pool)), 2):
      a, b = pool[i], pool[j]
      for op, apply in ops.items():
        value = apply(a, b)
        if a >= b and value is not None and value.denominator == 1 and value > 0:
          rest = [x for k, x in enumerate(pool) if k not in (i, j)]
          extend(rest + [int(value)], chain + [f"{a}{op}{b}={int(value)}"])

  extend([fractions.Fraction(n) for n in numbers], [])
  return found


@pytest.mark.parametrize("numbers, target", [
    ([15, 44, 79], 50), ([5, 5, 7], 17), ([8, 2, 3], 12), ([3, 3, 3], 3), ([2, 4, 8], 1),
    ([97, 98, 13], 15), ([4, 7, 9, 3], 24), ([2, 2, 6, 6], 12)])
def test_countdown_solutions_are_every_chain_simplest_first(numbers, target):
  chains = countdown.solutions(numbers, target)
  assert len(chains) == len(set(chains)) and chains
  assert set(chains) == _chains_by_brute_force(numbers, target)
  hard = [sum(ch in "*/" for ch in chain) for chain in chains]
  assert hard == sorted(hard)


def test_countdown_solutions_order_and_bad_arguments():
  assert countdown.solutions([5, 5, 7], 7)[:2] == ["7+5=12,12-5=7", "7-5=2,5+2=7"]
  assert countdown.solutions([2, 3], 7) == []
  for numbers, target, message in [([5], 5, "at least 2"), ([-3, 5], 2, "numbers\\[0\\]"),
                                   ([3, 4], 0, "target"), ([2.5, 3], 1, "integer")]:
    with pytest.raises(ValueError, match=message):
      countdown.solutions(numbers, target)


def test_countdown_simplest_answers_keep_the_inputs():
  drawn = Countdown().generate(3, 200, "train")
  simplest = Countdown(simplest=True).generate(3, 200, "train")
  assert [e["input"] for e in drawn] == [e["input"] for e in simplest]
  for example in simplest:
    numbers = [int(v) for v in example["input"].split(",")]
    assert example["output"] == countdown.solutions(numbers[:-1], numbers[-1])[0]
  assert sum(e["output"] != d["output"] for e, d in zip(simplest, drawn)) > 50
  with pytest.raises(ValueError, match="simplest"):
    Countdown(simplest=1)


def test_countdown_splits_by_numbers_and_target():
  task = Countdown(3, 1, 20, 1, 50)
  key = lambda e: task.split_key(e)
  train = {key(e) for e in task.generate(0, 2000, "train")}
  test = {key(e) for e in task.generate(0, 300, "test")}
  assert not train & test


def test_generation_is_seeded_and_refuses_bad_options():
  assert Countdown().generate(5, 20, "valid") == Countdown().generate(5, 20, "valid")
  assert Countdown().generate(5, 20, "valid") != Countdown().generate(6, 20, "valid")
  with pytest.raises(ValueError, match="num_numbers"):
    Countdown(num_numbers=1)
  with pytest.raises(ValueError, match="size"):
    Sudoku(size=5)
  with pytest.raises(ValueError, match="split"):
    Sudoku().generate(0, 1, "dev")
  with pytest.raises(ValueError, match="fewer than n="):
    Countdown(2, 1, 2, 1, 4).generate(0, 50, "train")
  assert make_task("sudoku", size=6) == Sudoku(size=6)


def test_example_files_round_trip_and_bad_lines_are_named(tmp_path):
  examples = Sudoku().generate(0, 5, "test")
  write_examples(tmp_path / "a.jsonl", examples)
  assert read_examples(tmp_path / "a.jsonl") == examples
  (tmp_path / "b.jsonl").write_text('{"input": "1,2,3"}\n\nnot json\n')
  with pytest.raises(ValueError, match=r"b.jsonl:3: not valid JSON"):
    read_examples(tmp_path / "b.jsonl")
  (tmp_path / "c.jsonl").write_text(json.dumps({"input": 3}) + "\n")
  with pytest.raises(ValueError, match=r"c.jsonl:1: expected an object"):
    read_examples(tmp_path / "c.jsonl")
  (tmp_path / "d.jsonl").write_text("\n")
  with pytest.raises(ValueError, match="no examples"):
    read_examples(tmp_path / "d.jsonl")


def test_char_tokenizer_round_trips_and_names_a_foreign_character(tmp_path):
  tokenizer = CharTokenizer()
  text = "44-15=29,79-29=50\n1234"
  assert tokenizer.decode(tokenizer.encode(text)) == text
  assert tokenizer.decode([tokenizer.bos_id, *tokenizer.encode("12"), tokenizer.eos_id,
                           tokenizer.mask_id, tokenizer.pad_id]) == "12"
  with pytest.raises(ValueError, match=r"'x' at position 2"):
    tokenizer.encode("12x")
  tokenizer.save(tmp_path)
  assert CharTokenizer.from_folder(tmp_path) == tokenizer
  with pytest.raises(ValueError, match="distinct"):
    CharTokenizer("aa")


def test_rows_put_the_answer_at_a_fixed_position_and_read_it_back():
  tokenizer, rows = CharTokenizer(), RowFormat(8, 10)
  examples = [{"input": "3,4,7", "output": "3+4=7"}, {"input": "1,1", "output": "1"}]
  built = rows.training_rows(tokenizer, examples)
  assert built["tokens"].shape == (2, 18) and built["prompt_lengths"].tolist() == [8, 8]
  assert built["tokens"][0, 0] == tokenizer.bos_id and built["tokens"][1, 4] == tokenizer.pad_id
  assert [rows.answer(tokenizer, r) for r in built["tokens"]] == ["3+4=7", "1"]
  prompts = rows.prompts(tokenizer, ["3,4,7"], tokenizer.mask_id)
  assert (prompts[0, 8:] == tokenizer.mask_id).all()
  with pytest.raises(ValueError, match="answer_length=10 holds at most 9"):
    rows.answer_ids(tokenizer, "1234567890")
  with pytest.raises(ValueError, match="prompt_length - 1 = 7"):
    rows.prompt_ids(tokenizer, "12345678")
