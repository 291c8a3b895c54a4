"""The flag parser and the remdm-train error path."""

import dataclasses
import inspect
import json
import re

import pytest

import remdm_jax
from remdm_jax import cli
from remdm_jax.jobs import shards
from remdm_jax.training import loop as training
from remdm_jax.registry import choice_spec


def test_flags_convert_by_field_type_and_config_file_applies_first(tmp_path):
  config = tmp_path / "c.json"
  config.write_text(json.dumps({"train": {"steps": 5, "objective": "remdm", "eta": 0.3}}))
  parsed, rest = cli.parse_sections(
      [f"--config={config}", "--train.steps=7", "--model.dropout=0.25", "--workdir=x",
       "--data.source_dir=none"], cli.train_sections())
  assert parsed["train"].steps == 7 and parsed["train"].objective.eta == 0.3
  assert parsed["model"].dropout == 0.25 and parsed["data"].source_dir is None
  assert isinstance(parsed["train"], training.TrainConfig) and rest == ["--workdir=x"]


@pytest.mark.parametrize("argv,match", [
    (["--train.bogus=1"], r"--train.bogus: unknown option 'bogus'; objective 'mdlm' takes \[.eps."),
    (["--nope.x=1"], "unknown section 'nope'"),
    (["--train.steps=many"], "--train.steps takes an integer, got .many."),
    (["--model.causal=maybe"], "takes true or false"),
    (["--train.steps"], "needs a value"),
])
def test_bad_flags(argv, match):
  with pytest.raises(cli.UsageError, match=match):
    cli.parse_sections(argv, cli.train_sections())


def test_train_main_reports_one_line_and_exit_2(capsys, tmp_path):
  assert cli.train_main(["--workdir=" + str(tmp_path), "--train.objective=remdm",
                         "--train.eta=-1"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: eta must be in") and err.count("\n") == 1
  assert cli.train_main(["--train.steps=3"]) == 2
  assert "exactly one --workdir" in capsys.readouterr().err


def test_sample_cli_writes_reproducible_records(tiny_model, tmp_path, capsys):
  argv = [f"--job.model={tiny_model}", "--job.num_samples=5", "--job.batch_size=8",
          "--sampler.num_steps=8", "--job.prompt=To be", "--job.seed=3"]
  for name in ("a", "b"):
    assert cli.sample_main(argv + [f"--job.out={tmp_path / name}"]) == 0
  first = shards.merge(tmp_path / "a")
  assert (tmp_path / "a" / "samples.jsonl").read_text() == \
      shards.shard_path(tmp_path / "a", 0, 5).read_text()
  assert shards.merge(tmp_path / "b") == first
  assert [r["index"] for r in first] == list(range(5))
  assert all(r["text"].startswith("To be") and r["ids"][0] == 256 for r in first)
  assert first[0]["settings"]["strategy"] == "loop" and "--- sample 4 ---" in \
      capsys.readouterr().out


@pytest.mark.parametrize("flag,match", [
    ("--sampler.strategy=magic", "unknown strategy 'magic'"),
    ("--sampler.eta=0.5", r"eta must be in \[0, \(1 - alpha_on\) / alpha_on\]"),
    ("--job.prompt=" + "x" * 40, "prompt 0 needs 41 positions"),
    ("--job.seq_len=99", r"seq_len must be in \[1, 24\] \(the model's max_length\), got 99"),
    ("--sampler.t_on=0.6 --sampler.strategy=cap",
     r"--sampler.t_on: t_on does not apply to strategy 'cap' \(its own options: \['eta'\]; "
     r"t_on belongs to \['loop', 'topk'\]\)"),
    ("--sampler.strategy=mdlm --sampler.eta=0.01", "eta does not apply to strategy 'mdlm'"),
    ("--sampler.top_p=1 --sampler.top_p_mode=standard",
     r"top_p_mode='standard' applies only with top_p < 1"),
    ("--job.trajectory=true --job.quiet=true",
     r"--job.trajectory=true keeps each step in the records of the job folder; set --job.out"),
])
def test_sample_cli_bad_input_exit_2(flag, match, tiny_model, capsys):
  assert cli.sample_main([f"--job.model={tiny_model}", *flag.split(" ")]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and __import__("re").search(match, err)


def test_a_strategy_flag_starts_from_that_strategys_defaults():
  sections = cli.SAMPLE_SECTIONS          # the default sampler is loop with eta = 0.02
  cap = cli.parse_sections(["--sampler.strategy=cap"], sections)[0]["sampler"]
  assert cap.strategy == remdm_jax.Cap() and cap.num_steps == 256 and cap.top_p == 0.9
  tuned = cli.parse_sections(["--sampler.eta=0.01", "--sampler.strategy=cap"], sections)[0]
  assert tuned["sampler"].strategy == remdm_jax.Cap(eta=0.01)
  loop = cli.parse_sections(["--sampler.t_on=0.6"], sections)[0]["sampler"]
  assert loop.strategy == remdm_jax.Loop(eta=0.02, t_on=0.6)


def test_sample_cli_not_a_checkpoint(tmp_path, capsys):
  assert cli.sample_main([f"--job.model={tmp_path}"]) == 2
  assert "is not a remdm_jax model folder" in capsys.readouterr().err


# --- Bad files, bad models, interrupted state: one line, the right exit code. ---------------
def _one_line(capsys) -> str:
  err = capsys.readouterr().err
  lines = [l for l in err.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
  return lines[0]


def _copy_model(source, target, edit_config=None):
  import shutil
  shutil.copytree(source, target)
  if edit_config:
    path = target / "config.json"
    payload = json.loads(path.read_text())
    edit_config(payload)
    path.write_text(json.dumps(payload))
  return target


def _file_cases(tmp_path, tiny_model):
  """(argv, expected text) pairs; each writes what its case needs under tmp_path."""
  a_file = tmp_path / "a-file"
  a_file.write_text("x")
  latin = tmp_path / "latin.txt"
  latin.write_bytes("caf\xe9\n".encode("latin-1"))
  configs = {"list.json": "[1, 2]", "bad.json": '{"job": {', "section.json": '{"job": 3}',
             "types.json": '{"job": {"num_samples": "5"}}'}
  for name, text in configs.items():
    (tmp_path / name).write_text(text)

  def bigger(payload):
    payload["config"]["hidden"] = 32

  return [
      ([f"--job.out={a_file}"], f"{a_file}: is a file, expected a folder for the job"),
      ([f"--job.out={a_file}/sub"], "cannot create the job folder"),
      ([f"--job.prompt_file={tmp_path}/none.txt"], "none.txt: no such prompt file"),
      ([f"--job.prompt_file={tmp_path}"], "is a folder, expected a prompt file"),
      ([f"--job.prompt_file={latin}"], "latin.txt: the prompt file is not UTF-8 text"),
      ([f"--config={tmp_path}/none.json"], "none.json: no such config file"),
      ([f"--config={tmp_path}/list.json"], "list.json: expected a JSON object"),
      ([f"--config={tmp_path}/bad.json"], "bad.json: not valid JSON"),
      ([f"--config={tmp_path}/section.json"], "section 'job' must be an object"),
      ([f"--config={tmp_path}/types.json"], "num_samples must be an integer, got '5'"),
      ([f"--job.model={_copy_model(tiny_model, tmp_path / 'm1', lambda p: p['config'].update(x=1))}"],
       "m1/config.json: unknown DiTConfig fields ['x']"),
      ([f"--job.model={_copy_model(tiny_model, tmp_path / 'm2', bigger)}"],
       "m2/params: parameter blocks.0.adaLN_modulation.bias is stored with shape (96,), but "
       "config.json needs (192,)"),
      ([f"--job.model={_copy_model(tiny_model, tmp_path / 'm3', lambda p: p.clear())}"],
       "m3/config.json: unknown model type None"),
  ]


def test_file_errors_are_one_line_naming_the_file(tiny_model, tmp_path, capsys):
  for argv, expected in _file_cases(tmp_path, tiny_model):
    code = cli.sample_main([f"--job.model={tiny_model}", "--sampler.num_steps=2"] + argv)
    line = _one_line(capsys)
    assert code == 2 and expected in line, (argv, line)


def test_truncated_parameter_files_are_one_line(tiny_model, tmp_path):
  """Run as a separate process: orbax leaves failed reads behind that Python reports later
  (outside any test's hooks). TensorStore's own threads can still print a traceback after
  the error line, which Python cannot intercept, so only the error line is checked."""
  import subprocess
  import sys
  from pathlib import Path
  model = _copy_model(tiny_model, tmp_path / "truncated")
  data_files = sorted((model / "params").rglob("d/*"), key=lambda p: -p.stat().st_size)
  for path in data_files[:1]:                                 # the largest array's file
    path.write_bytes(path.read_bytes()[:10])
  repo = Path(__file__).resolve().parents[1]
  done = subprocess.run([sys.executable, str(repo / "sample" / "main.py"),
                         f"--job.model={model}", "--sampler.num_steps=2"], cwd=repo,
                        capture_output=True, text=True, timeout=300)
  errors = [l for l in done.stderr.splitlines() if l.startswith("error:")]
  assert done.returncode == 2 and len(errors) == 1, done.stderr[-2000:]
  assert f"{model}/params: cannot read the parameters" in errors[0]


def test_rejected_command_writes_nothing_and_the_corrected_one_runs(tiny_model, tmp_path,
                                                                    capsys):
  out = tmp_path / "job"
  base = [f"--job.model={tiny_model}", f"--job.out={out}", "--sampler.num_steps=2",
          "--job.quiet=true"]
  for bad in ("--job.seq_len=-5", "--job.prompt=" + "x" * 40, "--sampler.top_p=1.5"):
    assert cli.sample_main(base + [bad]) == 2
    _one_line(capsys)
    assert not out.exists() or not any(out.iterdir())
  assert cli.sample_main(base + ["--job.seq_len=16"]) == 0
  assert len(shards.merge(out)) == 4


def test_sampler_refuses_a_causal_model(tmp_path, capsys):
  from flax import nnx
  from remdm_jax.weights.checkpoint import save_model
  from remdm_jax.models import DiT, DiTConfig
  cfg = DiTConfig(vocab_size=259, hidden=16, heads=2, blocks=1, cond_dim=8, max_length=24,
                  causal=True)
  folder = save_model(DiT(cfg, rngs=nnx.Rngs(0)), tmp_path / "ar", tokenizer="bytes")
  assert cli.sample_main([f"--job.model={folder}"]) == 2
  assert "is a causal (autoregressive) model; sampling needs a masked diffusion" in \
      _one_line(capsys)


def test_nan_model_exits_1_names_the_model_and_writes_no_shard(tiny_model, tmp_path, capsys):
  """A bit-flipped checkpoint (here: every parameter NaN) must not "sample" NUL bytes."""
  import jax
  from flax import nnx
  from remdm_jax.weights.checkpoint import load_model, save_model
  model = load_model(tiny_model)
  graphdef, state = nnx.split(model)
  broken = nnx.merge(graphdef, jax.tree.map(lambda x: x * float("nan"), state))
  folder = save_model(broken, tmp_path / "nan-model", tokenizer="bytes")
  out = tmp_path / "job"
  assert cli.sample_main([f"--job.model={folder}", f"--job.out={out}", "--job.quiet=true",
                          "--sampler.num_steps=4"]) == 1
  line = _one_line(capsys)
  assert f"model {folder}: the denoiser returned non-finite logits" in line
  assert "4 of 4 examples" in line and not list(out.glob("samples-*"))


@pytest.mark.parametrize("main,expected", [
    (cli.sample_main, "--sampler.num_steps=256"),
    (cli.train_main, "--train.learning_rate=0.0003"),
    (cli.merge_main, "--merge.evaluator"),
])
def test_help_prints_every_option_and_exits_0(main, expected, capsys):
  assert main(["--help"]) == 0
  out = capsys.readouterr().out
  assert expected in out and out.startswith("usage:")


def test_help_names_each_field_with_its_meaning(capsys):
  cli.sample_main(["-h"])
  out = capsys.readouterr().out
  assert "--job.prompt_file=\"\"" in out and "one prompt per line, used in turn" in out
  assert "--sampler.position_chunk=0" in out and "(less memory, same tokens)" in out  # continued
  assert "--sampler.draw_capacity=0" in out and "(same tokens for any value)" in out


def _exposed_configs():
  """Every config a command line exposes, with each registered choice of a choice section."""
  sections = {**cli.train_sections(), **cli.SAMPLE_SECTIONS, "merge": cli.MergeOptions(),
              "convert": cli.ConvertOptions()}
  configs = []
  for section, config in sections.items():
    configs.append((section, config))
    spec = choice_spec(config)
    if spec:
      configs.extend((section, cls()) for cls in spec[1].classes.values())
  return configs


def test_every_exposed_field_has_help_text():
  missing = [f"{section}.{field.name} ({type(config).__name__})"
             for section, config in _exposed_configs()
             for field in dataclasses.fields(config)
             if not field.metadata.get("help", "").strip()]
  assert not missing


@pytest.mark.parametrize("main", [cli.sample_main, cli.train_main, cli.merge_main,
                                  cli.convert_main])
def test_help_reads_no_source(main, monkeypatch, capsys):
  """As in an install that ships only .pyc files: no source can be read."""
  def no_source(obj):
    raise OSError("could not get source code")
  monkeypatch.setattr(inspect, "getsource", no_source)
  assert main(["--help"]) == 0
  flags = [l for l in capsys.readouterr().out.splitlines() if l.strip().startswith("--")]
  assert flags and all(len(l.split(None, 1)) == 2 for l in flags), flags   # flag and help


def _flag_sections(usage: str) -> set[str]:
  """The sections of the `--section.field=` flags that a usage text lists."""
  return set(re.findall(r"^\s+--(\w+)\.\w+=", usage, re.MULTILINE))


def test_help_of_one_section_prints_only_that_section(capsys):
  assert cli.sample_main(["--help=sampler"]) == 0
  out = capsys.readouterr().out
  assert out.startswith("usage:") and "sampler (SamplerConfig):" in out
  assert "--sampler.num_steps=256" in out and "strategy llada:" in out
  assert _flag_sections(out) == {"sampler"}
  assert cli.train_main(["--help=model"]) == 0
  out = capsys.readouterr().out
  assert "--model.hidden=128" in out and "model.vocab_size" in out   # a fixed model field
  assert _flag_sections(out) == {"model"}


def test_help_of_an_unknown_section_is_one_error_listing_the_sections(capsys):
  assert cli.sample_main(["--help=nope"]) == 2
  assert _one_line(capsys) == ("error: --help=nope: unknown section; choose from ['sampler', "
                               "'job', 'guidance', 'particles', 'dist']")


def test_merge_names_the_shards_that_hold_a_sample_twice(tiny_model, tmp_path, capsys):
  out = tmp_path / "job"
  assert cli.sample_main([f"--job.model={tiny_model}", f"--job.out={out}", "--job.quiet=true",
                          "--sampler.num_steps=2", "--job.num_samples=4",
                          "--job.batch_size=2"]) == 0
  first = shards.shard_path(out, 0, 2).read_text()
  shards.shard_path(out, 1, 3).write_text(first.splitlines()[1] + "\n")   # a stray shard
  assert cli.merge_main([str(out)]) == 2
  line = _one_line(capsys)
  assert "sample 1 is in two shards, samples-000000000-000000002.jsonl (line 2) and " \
      "samples-000000001-000000003.jsonl (line 1)" in line
  shards.shard_path(out, 1, 3).write_text("{not json\n")
  assert cli.merge_main([str(out)]) == 2
  assert "samples-000000001-000000003.jsonl: line 1 is not valid JSON" in _one_line(capsys)


@pytest.mark.parametrize("argv,expected", [
    (["--dist.num_processes=2"], "num_processes and process_id need coordinator_address"),
    (["--dist.coordinator_address=nohost"], "coordinator_address must be HOST:PORT"),
    (["--dist.coordinator_address=localhost:1", "--dist.num_processes=2",
      "--dist.process_id=1", "--dist.timeout=1"], "no coordinator answered at localhost:1 "
                                                   "within 1 s"),
])
def test_process_group_flags_are_checked_and_waiting_ends(argv, expected, capsys):
  assert cli.sample_main(argv) == 2
  assert expected in _one_line(capsys)


def test_train_cli_refuses_a_file_as_workdir(tmp_path, capsys):
  (tmp_path / "f").write_text("x")
  assert cli.train_main([f"--workdir={tmp_path / 'f'}"]) == 2
  assert "f: is a file, expected a folder for the workdir" in _one_line(capsys)


@pytest.mark.parametrize("argv,expected", [
    (["--workdir=w", "--steps=5"], "unexpected arguments ['--steps=5']; remdm-train takes "
     "--workdir=DIR, --config=FILE.json and --SECTION.FIELD=VALUE flags with SECTION one of "
     "['data', 'dist', 'model', 'train']"),
    (["--workdir"], "--workdir needs a value: --workdir=DIR"),
    (["--workdir=a", "--workdir=b"], "pass exactly one --workdir=DIR, got 2 ('a', 'b')"),
    (["--workdir=w", "--train.objective=classifier"], "--train.objective=classifier trains on "
     "labelled molecules: add --data.label=qed or --data.label=rings"),
])
def test_train_usage_errors_name_only_what_is_wrong(argv, expected, tmp_path, monkeypatch,
                                                    capsys):
  monkeypatch.chdir(tmp_path)
  assert cli.train_main(argv) == 2
  line = _one_line(capsys)
  assert expected in line and "'--workdir=w'" not in line
  assert not (tmp_path / "w").exists()


def test_a_failed_write_names_the_file_and_leaves_no_temporary(tmp_path, monkeypatch, capsys):
  import errno
  import os
  from remdm_jax import files
  from remdm_jax.errors import run_cli

  def full_disk(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  monkeypatch.setattr(os, "fsync", full_disk)
  (tmp_path / "m.json").write_text("old")
  assert run_cli(lambda argv: files.write_atomic(tmp_path / "m.json", "new") or 0, []) == 2
  assert _one_line(capsys) == (f"error: {tmp_path / 'm.json'}: cannot write the file (No "
                               "space left on device)")
  assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
  assert (tmp_path / "m.json").read_text() == "old"


@pytest.mark.parametrize("flag", ["--merge.add_bos=true", "--merge.batch_size=8"])
def test_merge_scoring_options_need_an_evaluator(flag, tmp_path, capsys):
  assert cli.merge_main([str(tmp_path), flag]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "only applies when scoring; set evaluator" in err


def test_a_missing_optional_extra_is_one_line(capsys):
  def main(argv):
    raise ImportError('Hugging Face tokenizer folders need the tokenizers package: pip install '
                      '-e ".[llada]"')
  assert cli.run_cli(main, []) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("error: Hugging Face tokenizer folders need")


@pytest.mark.parametrize("args, command", [
    (["remdm_jax.convert", "SRC", "DST"], "remdm-convert"),
    (["remdm_jax.weights.convert", "SRC", "DST"], "remdm-convert"),
    (["remdm_jax.cli"], "remdm-sample"),
    (["remdm_jax.cli", "sample", "--help"], "remdm-sample"),
])
def test_retired_module_entry_points_name_the_command(args, command):
  """`python -m` of a module that is not an entry point exits 2 with one line naming the
  console script (it used to exit 0 having done nothing)."""
  import subprocess
  import sys
  from pathlib import Path
  done = subprocess.run([sys.executable, "-m", *args], cwd=Path(__file__).resolve().parents[1],
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 2 and done.stdout == "", done
  assert done.stderr.count("\n") == 1 and command in done.stderr
  assert done.stderr.startswith(f"error: python -m {args[0]} is not a command")


@pytest.mark.parametrize("flag, value", [("--problems", "0"), ("--seeds", "0"),
                                         ("--problem-seed", "-1"), ("--batch-size", "0"),
                                         ("--seq-len", "-2")])
def test_llm_countdown_eval_names_its_own_flags(flag, value, tmp_path, capsys, load_script):
  """sample/llm_countdown_eval.py refuses a bad count naming its flag (not the library's `n`),
  before it writes anything."""
  script = load_script("sample/llm_countdown_eval.py")
  out = tmp_path / "out"
  assert script.run_cli(script._main, ["--out", str(out), flag, value]) == 2
  assert f"{flag} must be in [" in _one_line(capsys) and not out.exists()
