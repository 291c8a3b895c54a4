"""Reasoning tasks with exact verifiers (Countdown, Sudoku), their splits and files, and the
training rows of a task model (`remdm_jax.tasks.rows`). Nothing here needs JAX."""

from remdm_jax.tasks.base import (REGISTRY, SPLITS, Task, make_task, read_examples, split_of,
                                  write_examples)
from remdm_jax.tasks.countdown import Countdown
from remdm_jax.tasks.sudoku import Sudoku

__all__ = ["Countdown", "REGISTRY", "SPLITS", "Sudoku", "Task", "make_task", "read_examples",
           "split_of", "write_examples"]
