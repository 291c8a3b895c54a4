"""The shared validation layer: field types, finiteness, ranges and their messages."""

import dataclasses

import numpy as np
import pytest

from remdm_jax import files
from remdm_jax.validation import (ArgumentTypeError, check_array, check_fields, check_ids,
                                  check_int, check_range, is_concrete)


@dataclasses.dataclass(frozen=True)
class _Config:
  count: int = 1
  rate: float = 0.5
  flag: bool = False
  name: str = "x"
  folder: str | None = None

  def __post_init__(self):
    check_fields(self)


@pytest.mark.parametrize("kwargs,match", [
    (dict(count=True), "count must be an integer, got True"),
    (dict(count=1.0), "count must be an integer, got 1.0"),
    (dict(count="3"), "count must be an integer, got '3'"),
    (dict(rate=False), "rate must be a number, got False"),
    (dict(rate=None), "rate must be a number, got None"),
    (dict(rate=float("inf")), "rate must be a finite number, got inf"),
    (dict(flag=1), "flag must be true or false, got 1"),
    (dict(name=3), "name must be a string, got 3"),
    (dict(folder=3), "folder must be a string, got 3"),
])
def test_wrong_types_and_non_finite_values_are_named(kwargs, match):
  with pytest.raises(ValueError, match=match):          # ArgumentTypeError is a ValueError
    _Config(**kwargs)


def test_numpy_scalars_are_stored_as_python_scalars():
  cfg = _Config(count=np.int32(4), rate=np.float64(0.25), flag=np.bool_(True), folder=None)
  assert (type(cfg.count), type(cfg.rate), type(cfg.flag)) == (int, float, bool)
  assert cfg == _Config(count=4, rate=0.25, flag=True)
  with pytest.raises(TypeError):                        # and a TypeError for callers
    _Config(count="x")
  assert issubclass(ArgumentTypeError, TypeError)


@pytest.mark.parametrize("args,kwargs,message", [
    (("n", 0, 1), {}, r"n must be in [1, inf), got 0"),
    (("p", 0.0, 0.0, 1.0), dict(low_open=True), r"p must be in (0, 1], got 0.0"),
    (("p", 1.0, 0.0, 1.0), dict(high_open=True), r"p must be in [0, 1), got 1.0"),
    (("e", 2.0, 0.0, 1.0), dict(context=" for rule 'r'"), r"e must be in [0, 1] for rule 'r', got 2.0"),
])
def test_range_messages_name_the_interval(args, kwargs, message):
  with pytest.raises(ValueError) as err:
    check_range(*args, **kwargs)
  assert str(err.value) == message


def test_values_inside_the_range_pass_through():
  assert check_range("p", 1.0, 0.0, 1.0) == 1.0 and check_int("n", np.int64(3), 1) == 3


def test_file_readers_name_the_file(tmp_path):
  (tmp_path / "bad.json").write_text("[1,")
  (tmp_path / "list.json").write_text("[1]")
  for path, match in [(tmp_path / "none.json", "none.json: no such JSON file"),
                      (tmp_path, "is a folder, expected a JSON file"),
                      (tmp_path / "bad.json", r"bad.json: not valid JSON \(.* line 1, column 4\)")]:
    with pytest.raises(ValueError, match=match):
      files.read_json(path)
  with pytest.raises(ValueError, match="list.json: expected a JSON object"):
    files.read_json_object(tmp_path / "list.json")


def test_replace_folder_swaps_in_a_complete_folder(tmp_path):
  final, new = tmp_path / "model", tmp_path / ".model.tmp"
  final.mkdir()
  (final / "old").write_text("1")
  new.mkdir()
  (new / "new").write_text("2")
  (tmp_path / ".model.old").mkdir()                    # left by an earlier crash
  files.replace_folder(new, final)
  assert [p.name for p in final.iterdir()] == ["new"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_nan_is_outside_every_range():
  with pytest.raises(ValueError, match=r"t_min must be in \[0, 1\), got nan"):
    check_range("t_min", float("nan"), 0.0, 1.0, high_open=True)


def test_a_dict_is_not_a_sampler_config():
  import remdm_jax
  with pytest.raises(TypeError, match="config must be a SamplerConfig or a BlockConfig .*, got dict"):
    remdm_jax.build_plan({"strategy": "cap"})


@pytest.mark.parametrize("value,kwargs,error,message", [
    (None, {}, ArgumentTypeError, "x must be an array, got None"),
    ("abc", {}, ArgumentTypeError, "x must be an array, got 'abc'"),
    ([[1, 2], [3]], {}, ArgumentTypeError, r"x must be an array \(a rectangular"),
    (["a"], {}, ArgumentTypeError, "x must be an array of numbers, got list of <U1"),
    (np.zeros(3), dict(ndim=2, dims="[B, L]"), ValueError,
     r"x must have 2 dimensions \[B, L\], got shape \[3\]"),
    (np.zeros((2, 3)), dict(shape=(2, 4), dims="[B, L]"), ValueError,
     r"x must have shape \[B, L\] = \[2, 4\], got \[2, 3\]"),
    (np.zeros((2, 3)), dict(shape=(None, 3, 1)), ValueError,
     r"x must have shape \[\*, 3, 1\], got \[2, 3\]"),
    (np.zeros(3), dict(dtype="int"), ArgumentTypeError,
     "x must hold integer values, got dtype float64"),
    (np.zeros(3, bool), dict(dtype="int"), ArgumentTypeError,
     "x must hold integer values, got dtype bool"),
    (np.zeros(3, np.int32), dict(dtype="float"), ArgumentTypeError,
     "x must hold floating-point values, got dtype int32"),
    (np.full(3, 0.5), dict(dtype="bool"), ArgumentTypeError,
     "x must hold boolean values, got dtype float64"),
])
def test_check_array_names_the_argument_and_what_it_got(value, kwargs, error, message):
  with pytest.raises(error, match=message):
    check_array("x", value, **kwargs)


def test_check_array_accepts_matching_arrays_and_tracers():
  import jax
  import jax.numpy as jnp
  assert check_array("x", [[1, 2]], shape=(None, 2), dtype="int").shape == (1, 2)
  assert check_array("x", jnp.zeros((2,), jnp.bfloat16), ndim=1, dtype="float").ndim == 1
  assert check_array("x", np.zeros(2, np.uint8), dtype="int").dtype == np.uint8

  def f(x):
    check_array("x", x, shape=(2, 3), dtype="int")
    assert not is_concrete(x)
    return x
  jax.jit(f)(jnp.zeros((2, 3), jnp.int32))
  with pytest.raises(ValueError, match=r"x must have shape \[2, 3\], got \[3\]"):
    jax.jit(f)(jnp.zeros((3,), jnp.int32))


@pytest.mark.parametrize("value,kwargs,message", [
    ([[0, 1, 2], [3, 4, 7]], {}, r"x must hold ids in \[0, 5\), got 7 at index \(1, 2\)"),
    ([2, -1, 9], {}, r"x must hold ids in \[0, 5\), got -1 at index 1"),
    ([0, 4], dict(exclude=4), r"x must hold ids in \[0, 5\) other than 4, got 4 at index 1"),
    (np.int32(5), {}, r"x must hold ids in \[0, 5\), got 5$"),
])
def test_check_ids_names_the_first_bad_id_and_its_index(value, kwargs, message):
  import jax.numpy as jnp
  for array in (value, jnp.asarray(value)):
    with pytest.raises(ValueError, match=message):
      check_ids("x", array, 0, 5, **kwargs)


def test_check_ids_reads_values_only_when_concrete():
  import jax
  import jax.numpy as jnp
  assert check_ids("x", [0, 4], 0, 5).tolist() == [0, 4]
  with pytest.raises(ArgumentTypeError, match="x must hold integer values, got dtype float"):
    check_ids("x", [0.0, 1.0], 0, 5)
  traced = jax.jit(lambda x: check_ids("x", x, 0, 5) + 1)    # values unreadable: skipped
  assert traced(jnp.asarray([7])).tolist() == [8]
  with pytest.raises(ArgumentTypeError, match="x must hold integer values"):
    traced(jnp.asarray([7.0]))
