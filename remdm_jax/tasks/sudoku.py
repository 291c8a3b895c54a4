"""Sudoku, 4x4 (2x2 boxes), 6x6 (2x3 boxes: 2 rows by 3 columns) and 9x9, in the standard
format: rows joined by "\\n", "0" for a blank (`"1020\\n0401\\n..."`), the output the solved
grid in the same format.

Puzzles have a unique solution: a random solution grid (randomised backtracking), then cells
blanked in random order while the solution stays unique, down to a clue count drawn from
`[min_clues, max_clues]`. Examples are split by their solution grid, so a test puzzle's
solution is never a training puzzle's.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from remdm_jax.tasks.base import Task, register
from remdm_jax.validation import check_choice, check_range, option

BOXES = {4: (2, 2), 6: (2, 3), 9: (3, 3)}     # size -> (box rows, box columns)


def parse_grid(text: str, size: int | None = None) -> np.ndarray | None:
  """`[n, n] int` of a grid in the standard format (n in 4, 6, 9, or `size`), or None."""
  rows = text.strip().split("\n")
  n = len(rows)
  if n not in BOXES or (size is not None and n != size):
    return None
  if any(len(r) != n or not r.isdigit() or not r.isascii() for r in rows):
    return None
  grid = np.array([[int(c) for c in r] for r in rows], int)
  return grid if grid.max() <= n else None


def format_grid(grid: np.ndarray) -> str:
  return "\n".join("".join(str(int(v)) for v in row) for row in grid)


def _units(n: int) -> list[np.ndarray]:
  """Index arrays of the rows, columns and boxes of an n x n grid (flat indices)."""
  cells = np.arange(n * n).reshape(n, n)
  br, bc = BOXES[n]
  boxes = [cells[r:r + br, c:c + bc].ravel() for r in range(0, n, br) for c in range(0, n, bc)]
  return list(cells) + list(cells.T) + boxes


def is_solution(grid: np.ndarray) -> bool:
  """Whether every row, column and box of a full grid holds 1..n once."""
  n = len(grid)
  flat, want = grid.ravel(), set(range(1, n + 1))
  return all(set(flat[u].tolist()) == want for u in _units(n))


class _Solver:
  """Backtracking over candidate bitmasks (cell with fewest candidates first)."""

  def __init__(self, n: int):
    self.n = n
    self.peers = [set() for _ in range(n * n)]
    for unit in _units(n):
      for cell in unit:
        self.peers[cell].update(int(u) for u in unit if u != cell)

  def solutions(self, grid: np.ndarray, limit: int, rng=None) -> list[np.ndarray]:
    """Up to `limit` solutions of `grid` (values tried in random order with `rng`)."""
    cells, found = grid.ravel().copy(), []
    self._search(cells, limit, rng, found)
    return [c.reshape(self.n, self.n) for c in found]

  def _search(self, cells, limit, rng, found) -> None:
    best, options = None, None
    for cell in np.flatnonzero(cells == 0):
      used = {int(cells[p]) for p in self.peers[cell]}
      free = [v for v in range(1, self.n + 1) if v not in used]
      if best is None or len(free) < len(options):
        best, options = cell, free
        if len(free) <= 1:
          break
    if best is None:
      found.append(cells.copy())
      return
    if rng is not None:
      options = [options[k] for k in rng.permutation(len(options))]
    for value in options:
      cells[best] = value
      self._search(cells, limit, rng, found)
      if len(found) >= limit:
        break
    cells[best] = 0


@register
@dataclasses.dataclass(frozen=True)
class Sudoku(Task):
  """Sudoku puzzles of `size` with a unique solution and `min_clues..max_clues` clues; the
  defaults are the standard 4x4 set (4 to 12 clues)."""

  name: ClassVar[str] = "sudoku"
  size: int = option(4, "grid side: 4 (2x2 boxes), 6 (2x3) or 9 (3x3)")
  min_clues: int = option(4, "fewest given digits")
  max_clues: int = option(12, "most given digits")

  def __post_init__(self):
    super().__post_init__()
    check_choice("size", self.size, tuple(BOXES))
    check_range("min_clues", self.min_clues, 0, self.size ** 2)
    check_range("max_clues", self.max_clues, self.min_clues, self.size ** 2)

  @property
  def max_input_length(self) -> int:
    return self.size * (self.size + 1) - 1

  @property
  def max_output_length(self) -> int:
    return self.max_input_length

  def draw(self, rng: np.random.Generator) -> dict[str, str]:
    solver = _Solver(self.size)
    while True:
      solution = solver.solutions(np.zeros((self.size, self.size), int), 1, rng)[0]
      clues = int(rng.integers(self.min_clues, self.max_clues + 1))
      puzzle = solution.ravel().copy()
      for cell in rng.permutation(puzzle.size):
        if np.count_nonzero(puzzle) <= clues:
          break
        kept, puzzle[cell] = puzzle[cell], 0
        if len(solver.solutions(puzzle.reshape(self.size, -1), 2)) > 1:
          puzzle[cell] = kept
      if np.count_nonzero(puzzle) == clues:
        return {"input": format_grid(puzzle.reshape(self.size, -1)),
                "output": format_grid(solution)}

  def verify(self, input_text: str, prediction: str) -> bool:
    puzzle = parse_grid(input_text)
    if puzzle is None or not isinstance(prediction, str):
      return False
    grid = parse_grid(prediction, len(puzzle))
    given = puzzle != 0
    return (grid is not None and bool(np.all(grid[given] == puzzle[given]))
            and is_solution(grid))

  def split_key(self, example: dict[str, str]) -> str:
    grid = parse_grid(example["output"])
    if grid is None:
      puzzle = parse_grid(example["input"])
      grid = _Solver(len(puzzle)).solutions(puzzle, 1)[0]
    return format_grid(grid)
