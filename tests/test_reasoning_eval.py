"""The scoring command of the task models: its contract (predictions file, last line) on the
shipped models, and its refusals."""

import json
import pathlib
import subprocess
import sys

import pytest

from remdm_jax.jobs import task_models
from remdm_jax.tasks import Countdown, Sudoku, write_examples

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "sample" / "reasoning_eval.py"


def _run(*args):
  return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True,
                        text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("task, examples, floor", [
    ("sudoku", Sudoku().generate(7, 48, "test"), 0.95),
    ("countdown", Countdown().generate(7, 100, "test"), 0.35)])
def test_the_shipped_models_solve_held_out_examples(tmp_path, task, examples, floor):
  """Held-out examples: the shipped Sudoku model solves at least 95% of 48 standard 4x4
  puzzles; the Countdown model (57.4% of 1,000 standard CD3 items) at least 35% of 100 (4.5
  standard errors below)."""
  write_examples(tmp_path / "data.jsonl", examples)
  done = _run("--task", task, "--data", tmp_path / "data.jsonl", "--out", tmp_path / "out")
  assert done.returncode == 0, done.stderr
  last = done.stdout.strip().splitlines()[-1]
  assert last.startswith("accuracy ") and float(last.split()[1]) >= floor, last
  lines = (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
  predictions = [json.loads(line) for line in lines]
  assert [p["input"] for p in predictions] == [e["input"] for e in examples]
  assert all(set(p) == {"input", "prediction"} for p in predictions)
  solved = sum(task_models.task_base.REGISTRY.build(task).verify(p["input"], p["prediction"])
               for p in predictions)
  assert abs(solved / len(examples) - float(last.split()[1])) < 1e-9


def test_bad_arguments_are_refused_in_one_line(tmp_path, capsys, load_script):
  """Refused before anything is written, with one line naming the argument."""
  script = load_script("sample/reasoning_eval.py")
  (tmp_path / "bad.jsonl").write_text("not json\n")
  for args, message in [
      (["--task", "sudoku", "--data", tmp_path / "missing.jsonl", "--out", tmp_path / "o"],
       "missing.jsonl"),
      (["--task", "sudoku", "--data", tmp_path / "bad.jsonl", "--out", tmp_path / "o"],
       "bad.jsonl:1: not valid JSON"),
      (["--task", "sudoku", "--data", tmp_path / "bad.jsonl", "--out", tmp_path / "o",
        "--batch-size", "0"], "--batch-size must be in ["),
      (["--task", "countdown", "--data", tmp_path / "bad.jsonl", "--out", tmp_path / "o",
        "--model", tmp_path], "is not a remdm_jax model folder"),
  ]:
    assert script.run_cli(script._main, [str(a) for a in args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.strip().count("\n") == 0, err
  assert not (tmp_path / "o").exists()


def test_a_missing_shipped_model_is_named_with_how_to_train_it(tmp_path, monkeypatch):
  from remdm_jax.jobs import sample_job
  monkeypatch.setattr(sample_job, "shipped_models", lambda: tmp_path)
  with pytest.raises(ValueError, match="no countdown model is shipped yet.*--recipe=countdown"):
    task_models.shipped_model("countdown")
