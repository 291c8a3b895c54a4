"""Training: the loss falls, interrupt-and-resume is bitwise exact, 1 vs 8 devices agree."""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh

from remdm_jax import errors
from remdm_jax.weights import checkpoint
from remdm_jax.data import datasets as data
from remdm_jax.parallel import distributed
from remdm_jax.training import objectives
from remdm_jax.training import loop as training
from remdm_jax.weights.checkpoint import exported_step, load_model
from remdm_jax.models import DiT, DiTConfig, NoisyClassifier
from remdm_jax.training.objectives import (ArObjective, ClassifierObjective, MdlmDiscreteObjective,
                                           MdlmObjective, RemdmObjective)
from remdm_jax.text.tokenizers import ByteTokenizer

REPO = Path(__file__).resolve().parents[1]
TOK = ByteTokenizer()
MODEL = DiTConfig(vocab_size=TOK.vocab_size, hidden=32, heads=4, blocks=2, cond_dim=16,
                  max_length=32, dropout=0.1)
TRAIN = training.TrainConfig(batch_size=8, steps=12, warmup_steps=4, learning_rate=1e-3,
                             save_every=4, log_every=1, eval_every=6, eval_batches=1,
                             ema_decay=0.9)


def _rows(seed=0, n=64, length=32):
  return np.random.default_rng(seed).integers(0, 256, (n, length)).astype(np.int32)


def _train(workdir, cfg=TRAIN, model=MODEL, stop_at=None, rows=None):
  stream = data.BatchStream(_rows() if rows is None else rows, cfg.batch_size, cfg.seed)
  return training.train(model, cfg, stream, _rows(1, 16), TOK.mask_id, workdir,
                        stop_at=stop_at, progress=False)


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(state)]


@pytest.mark.slow
def test_loss_falls_on_shakespeare(shakespeare, tmp_path):
  """Byte-level MDLM, 2 blocks of width 64, batch 16, L = 64: the mean loss of steps 191-200
  is below 80% of that of steps 1-10 (measured: about 4.6 -> 3.2 nats/token)."""
  train_rows, valid_rows = shakespeare
  model = dataclasses.replace(MODEL, hidden=64, cond_dim=32, max_length=64, dropout=0.0)
  cfg = dataclasses.replace(TRAIN, batch_size=16, steps=200, warmup_steps=20, save_every=200,
                            eval_every=200, eval_batches=2)
  stream = data.BatchStream(train_rows, cfg.batch_size, cfg.seed)
  training.train(model, cfg, stream, valid_rows, TOK.mask_id, tmp_path, progress=False)
  logged = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  losses = [entry["loss"] for entry in logged]
  assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])
  assert "valid_ppl_bound" in logged[-1] and np.isfinite(logged[-1]["valid_nelbo"])


@pytest.mark.slow
def test_interrupt_and_resume_is_bitwise_identical(tmp_path):
  whole = _train(tmp_path / "whole")
  _train(tmp_path / "split", stop_at=6)                 # as SIGTERM would: saves step 6
  resumed = _train(tmp_path / "split")
  for a, b in zip(_leaves(whole), _leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  assert (tmp_path / "whole" / "metrics.jsonl").read_text() == \
      (tmp_path / "split" / "metrics.jsonl").read_text()
  exported = load_model(tmp_path / "split" / "model")
  ema = nnx.state(exported, nnx.Param)
  for a, b in zip(_leaves(ema), _leaves(whole["ema"])):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_ema_is_the_warmed_up_weighted_average_of_the_iterates():
  """The exported average equals its closed form, written independently of the recursion:
  weight (1 - d_k) prod_{j > k} d_j on the parameters after update k and prod_j d_j on the
  initial ones, with d_k = min(ema_decay, (1 + k) / (10 + k)); the weights sum to 1."""
  cfg = dataclasses.replace(TRAIN, ema_decay=0.99)   # the warm-up binds at all 12 updates
  run, state = training.build_run(MODEL, cfg, TOK.mask_id)
  stream = data.BatchStream(_rows(), cfg.batch_size, cfg.seed)
  iterates = [_leaves(state["params"])]
  for step in range(cfg.steps):
    state, _ = run.train_step(state, jax.device_put(stream.batch(step), run.data_sharding))
    iterates.append(_leaves(state["params"]))
  k = np.arange(1, cfg.steps + 1, dtype=np.float64)
  decays = np.minimum(0.99, (1 + k) / (10 + k))
  later = np.append(np.cumprod(decays[::-1])[::-1][1:], 1.0)   # prod_{j > k} d_j
  weights = np.concatenate([[np.prod(decays)], (1 - decays) * later])
  assert abs(weights.sum() - 1.0) < 1e-12 and weights[0] < 1e-3
  for leaf, *history in zip(_leaves(state["ema"]), *iterates):
    expected = sum(w * h.astype(np.float64) for w, h in zip(weights, history))
    np.testing.assert_allclose(leaf, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_run_resumes_with_new_length_and_periods_only(tmp_path):
  """The checkpoint's identity is the whole config but `TrainConfig.RESUMABLE`: more steps and
  other log, evaluation and save periods resume; a changed learning rate, objective option,
  objective, model or data is refused with an error naming each differing field."""
  remdm = dataclasses.replace(TRAIN, steps=4, eval_every=0,
                              objective=RemdmObjective(discrete_steps=8, eta=0.5))
  _train(tmp_path, remdm, stop_at=2)
  refused = {
      r"train\.learning_rate: 0\.001 in the checkpoint, 0\.002 now":
          dataclasses.replace(remdm, learning_rate=2e-3),
      r"train\.eta: 0\.5 in the checkpoint, 1\.0 now":
          dataclasses.replace(remdm, objective=RemdmObjective(discrete_steps=8, eta=1.0)),
      r"train\.discrete_steps: 8 in the checkpoint, absent now; .*train\.objective: "
      r"\"remdm\" in the checkpoint, \"mdlm\" now": dataclasses.replace(remdm,
                                                                  objective=MdlmObjective()),
      r"data\.order_seed: 0 in the checkpoint, 1 now; train\.seed: 0 in the checkpoint, 1 now":
          dataclasses.replace(remdm, seed=1),
  }
  for match, cfg in refused.items():
    with pytest.raises(ValueError, match="written for a different config: " + match):
      _train(tmp_path, cfg)
  with pytest.raises(ValueError, match=r"model\.hidden: 32 in the checkpoint, 64 now"):
    _train(tmp_path, remdm, model=dataclasses.replace(MODEL, hidden=64))
  with pytest.raises(ValueError, match=r"data\.rows_sha256: "):
    _train(tmp_path, remdm, rows=_rows(5))
  longer = dataclasses.replace(remdm, steps=6, log_every=2, save_every=3, eval_every=3,
                               eval_batches=2)
  assert int(_train(tmp_path, longer)["step"]) == 6
  record = json.loads((tmp_path / "config.json").read_text())
  assert record["train"]["steps"] == 6 and record["train"]["objective"] == "remdm"
  assert record["data"]["num_rows"] == 64 and record["model"]["hidden"] == 32


def test_the_resume_identity_leaves_out_only_the_resumable_fields():
  stream = data.BatchStream(_rows(), TRAIN.batch_size, 0)
  record = training.run_record(MODEL, TRAIN, stream, TOK.mask_id, "bytes")
  identity = training.resume_identity(record)
  assert set(record["train"]) - set(identity["train"]) == set(training.TrainConfig.RESUMABLE)
  assert identity["model"] == record["model"] and identity["data"] == record["data"]
  assert set(identity["train"]) >= {"objective", "eps", "label_dropout", "learning_rate",
                                    "batch_size", "seed", "model_axis"}
  labelled = data.BatchStream(_labelled(0, 64), TRAIN.batch_size, 0)
  assert training.run_record(MODEL, TRAIN, labelled, TOK.mask_id, "bytes")["data"] != \
      record["data"]
  with pytest.raises(ValueError, match="train_stream gives batches of 4 rows, but "
                     "batch_size=8"):
    training.run_record(MODEL, TRAIN, data.BatchStream(_rows(), 4, 0), TOK.mask_id, None)


def _cli(workdir, text_folder, steps):
  return [sys.executable, str(REPO / "train" / "main.py"), f"--workdir={workdir}",
          "--data.dataset=text_folder", f"--data.source_dir={text_folder}",
          f"--data.data_dir={workdir.parent / 'tfds'}", "--data.seq_len=32",
          "--model.hidden=32", "--model.blocks=2", "--model.cond_dim=16",
          "--train.batch_size=8", f"--train.steps={steps}", "--train.save_every=20",
          "--train.eval_every=0", "--train.log_every=5"]


def _saved_steps(workdir):
  """Completed checkpoint steps (orbax writes `N.orbax-checkpoint-tmp` first, then renames)."""
  folder = workdir / "checkpoints"
  return sorted(int(p.name) for p in folder.glob("*") if p.name.isdigit()) \
      if folder.exists() else []


def _start_and_signal(argv, workdir, sig):
  proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 120
  while time.time() < deadline and proc.poll() is None:
    if _saved_steps(workdir):
      proc.send_signal(sig)
      break
    time.sleep(0.05)
  return proc.wait(timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
def test_killed_cli_run_resumes_to_the_same_weights(sig, tmp_path, text_folder):
  steps = 80
  uninterrupted = subprocess.run(_cli(tmp_path / "a", text_folder, steps), cwd=REPO,
                                 capture_output=True, text=True, timeout=600)
  assert uninterrupted.returncode == 0, uninterrupted.stderr[-2000:]
  code = _start_and_signal(_cli(tmp_path / "b", text_folder, steps), tmp_path / "b", sig)
  assert code == (-9 if sig == signal.SIGKILL else 128 + signal.SIGTERM)   # not "finished"
  saved = _saved_steps(tmp_path / "b")
  assert saved and saved[-1] < steps                     # it really stopped early
  resumed = subprocess.run(_cli(tmp_path / "b", text_folder, steps), cwd=REPO,
                           capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  a = nnx.state(load_model(tmp_path / "a" / "model"), nnx.Param)
  b = nnx.state(load_model(tmp_path / "b" / "model"), nnx.Param)
  for x, y in zip(_leaves(a), _leaves(b)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_one_device_eight_devices_and_sharded_parameters_give_the_same_loss():
  """1 device; 8 data-parallel devices; (data 2, model 4) with tensor-parallel parameters and
  optimizer moments: the same losses and gradient norms over two steps (rtol 1e-5)."""
  batches = [_rows(3, 8), _rows(4, 8)]
  meshes = [Mesh(np.array(jax.devices()[:1]), ("data",)), Mesh(np.array(jax.devices()),
                                                                ("data",)),
            distributed.make_mesh(model_axis=4)]
  results = []
  for mesh in meshes:
    run, state = training.build_run(MODEL, TRAIN, TOK.mask_id, mesh)
    values = []
    for batch in batches:
      placed = jax.device_put(batch, run.data_sharding)
      values.append(float(run.eval_loss(state["ema"], placed, jax.random.key(7))))
      state, metrics = run.train_step(state, placed)
      values += [float(metrics["loss"]), float(metrics["grad_norm"])]
    results.append(values)
  np.testing.assert_allclose(results[0], results[1], rtol=1e-5)
  np.testing.assert_allclose(results[0], results[2], rtol=1e-5)
  mu = state["opt_state"][1][0].mu["blocks"][0]["mlp_0"]["kernel"]
  assert mu.addressable_shards[0].data.shape == (32, 32)     # 128 hidden units / 4


@pytest.mark.parametrize("objective", [pytest.param(RemdmObjective(discrete_steps=16, eta=0.5),
                                                    marks=pytest.mark.slow),
                                       pytest.param(MdlmDiscreteObjective(discrete_steps=16),
                                                    marks=pytest.mark.slow),
                                       pytest.param(ArObjective(), marks=pytest.mark.slow)],
                         ids=lambda o: o.name)
def test_every_objective_trains(objective, tmp_path):
  cfg = dataclasses.replace(TRAIN, objective=objective, steps=3, eval_every=0)
  model = dataclasses.replace(MODEL, causal=objective.causal)
  state = _train(tmp_path, cfg=cfg, model=model)
  assert int(state["step"]) == 3
  logged = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert all(np.isfinite(entry["loss"]) for entry in logged)


@pytest.mark.parametrize("build,match", [
    (lambda: objectives.make_objective("bert"), "unknown objective 'bert'"),
    (lambda: RemdmObjective(discrete_steps=0),
     r"discrete_steps must be in \[1, inf\) for objective 'remdm', got 0"),
    (lambda: MdlmDiscreteObjective(0),
     r"discrete_steps must be in \[1, inf\) for objective 'mdlm_discrete', got 0"),
    (lambda: RemdmObjective(8, "rescale", 2.0),
     r"eta must be in \[0, 1\] for sigma_rule 'rescale', got 2.0"),
    (lambda: RemdmObjective(8, "cap", -0.1), r"eta must be in \[0, inf\) for sigma_rule 'cap'"),
    (lambda: RemdmObjective(8, "max"), "unknown sigma_rule 'max'; choose from"),
    (lambda: MdlmObjective(eps=1.0), r"eps must be in \(0, 1\), got 1.0"),
    (lambda: ClassifierObjective(eps=0.0), r"eps must be in \(0, 1\), got 0.0"),
    (lambda: MdlmObjective(label_dropout=1.0), r"label_dropout must be in \[0, 1\), got 1.0"),
    (lambda: objectives.make_objective("mdlm", eta=0.5),
     r"eta does not apply to objective 'mdlm' \(its own options: \['eps', 'label_dropout'\]; "
     r"eta belongs to \['remdm'\]\)"),
    (lambda: objectives.make_objective("ar", eps=0.1),
     "eps does not apply to objective 'ar' .its own options: none"),
    (lambda: objectives.make_objective("mdlm", bogus=1), "unknown option 'bogus'; objective "
     r"'mdlm' takes \['eps', 'label_dropout'\]"),
    (lambda: training.TrainConfig(objective="remdm"),
     "objective must be an objective object such as remdm_jax.training.objectives.RemdmObjective"),
    (lambda: TRAIN.with_options(eta=0.1), "eta does not apply to objective 'mdlm'"),
    (lambda: TRAIN.with_options(objective="ar", bogus=1), "unknown option 'bogus'; objective "
     "'ar' takes none, every objective takes .'batch_size'"),
    (lambda: training.TrainConfig(steps=0), r"steps must be in \[1, inf\), got 0"),
])
def test_bad_objective_or_train_config(build, match):
  with pytest.raises(ValueError, match=match):
    build()


def test_objectives_are_frozen_data_with_a_flat_form():
  remdm = RemdmObjective(4096, "rescale", 0.5)
  assert remdm == objectives.make_objective("remdm", discrete_steps=4096, sigma_rule="rescale",
                                            eta=0.5)
  assert objectives.make_objective(**remdm.options()) == remdm and hash(remdm)
  assert remdm.options() == {"objective": "remdm", "eps": 1e-3, "label_dropout": 0.1,
                             "discrete_steps": 4096, "sigma_rule": "rescale", "eta": 0.5}
  with pytest.raises(dataclasses.FrozenInstanceError):
    remdm.eta = 0.1
  assert sorted(objectives.OBJECTIVES) == ["ar", "classifier", "llada_sft", "mdlm", "mdlm_discrete",
                                           "remdm"]
  cfg = TRAIN.with_options(objective="remdm", discrete_steps=16, eta=0.5, steps=3)
  assert cfg.objective == RemdmObjective(discrete_steps=16, eta=0.5) and cfg.steps == 3
  assert cfg.with_options(eta=0.25).objective.discrete_steps == 16       # same objective kept
  assert cfg.with_options(objective="mdlm").objective == MdlmObjective()  # a new one: defaults
  assert training.TrainConfig().with_options(**cfg.options()) == cfg


@pytest.mark.parametrize("argv,match", [
    (["--model.vocab_size=300"], r"--model\.vocab_size is set by this command \(from the "
     r"tokenizer, --data\.tokenizer\); remove the flag"),
    (["--model.max_length=64"], r"--model\.max_length is set by this command \(from "
     r"--data\.seq_len\)"),
    (["--model.causal=true"], r"--model\.causal is set by this command \(from the objective"),
    (["--model.num_classes=2"], r"--model\.num_classes is set by this command \(from "
     r"--data\.label"),
    (["--train.eta=0.5"], r"--train\.eta: eta does not apply to objective 'mdlm' \(its own "
     r"options: \['eps', 'label_dropout'\]; eta belongs to \['remdm'\]\)"),
    (["--train.objective=ar", "--train.eps=0.1"], "eps does not apply to objective 'ar'"),
    (["--train.objective=remdm", "--train.sigma_rule=rescale", "--train.eta=2"],
     r"eta must be in \[0, 1\] for sigma_rule 'rescale', got 2.0"),
])
def test_train_cli_refuses_flags_it_would_overwrite_or_ignore(argv, match, tmp_path, capsys):
  from remdm_jax import cli
  assert cli.train_main([f"--workdir={tmp_path}", *argv]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1
  assert re.search(match, err), err


def test_train_cli_parses_objective_options_and_lists_them(tmp_path, capsys):
  from remdm_jax import cli
  config = tmp_path / "c.json"
  config.write_text(json.dumps({"train": {"objective": "remdm", "eta": 0.25}}))
  parsed, _ = cli.parse_sections([f"--config={config}", "--train.discrete_steps=16",
                                  "--train.sigma_rule=rescale"], cli.train_sections(),
                                 fixed=cli.TRAIN_FIXED)
  assert parsed["train"].objective == RemdmObjective(16, "rescale", 0.25)
  config.write_text(json.dumps({"model": {"vocab_size": 5}}))
  with pytest.raises(cli.UsageError, match="remove model.vocab_size from the --config file"):
    cli.parse_sections([f"--config={config}"], cli.train_sections(), fixed=cli.TRAIN_FIXED)
  assert cli.train_main(["--help"]) == 0
  out = capsys.readouterr().out
  assert "--model.hidden=128" in out and "--model.vocab_size=" not in out
  assert "--model.causal=" not in out and "  model.causal " in out
  assert "objective remdm: ReMDM's NELBO (eq. 9)" in out and "--train.sigma_rule=\"cap\"" in out
  assert "--train.eps=0.001" in out and "t drawn from [eps, 1]" in out


def test_objective_and_model_must_agree():
  with pytest.raises(ValueError, match="objective 'ar' needs model causal=True"):
    training.build_run(MODEL, dataclasses.replace(TRAIN, objective=ArObjective()),
                       TOK.mask_id)
  with pytest.raises(ValueError, match="objective 'mdlm' needs model causal=False"):
    training.build_run(dataclasses.replace(MODEL, causal=True), TRAIN, TOK.mask_id)


def _perturbed(kind, model_cfg):
  """A model whose every parameter is its initial value plus N(0, 0.3^2) noise (fixed keys):
  the zero-initialised output layers would otherwise make every loss a constant."""
  model = kind(model_cfg, rngs=nnx.Rngs(0))
  leaves, tree = jax.tree.flatten(nnx.state(model, nnx.Param))
  nnx.update(model, jax.tree.unflatten(tree, [
      leaf + 0.3 * jax.random.normal(jax.random.key(i), leaf.shape, leaf.dtype)
      for i, leaf in enumerate(leaves)]))
  return model


# (objective, model options) -> loss with dropout (train=True) and without, for key(3) on 8
# fixed rows of 16 bytes; recorded with the string-configured objectives these classes
# replaced. A changed weight, schedule, noise draw or label dropout moves them by far more
# than the rtol of 1e-6 (float32 rounding across XLA versions).
PINNED_LOSSES = [
    (MdlmObjective(), {}, (8.053857803344727, 7.933504581451416)),
    (MdlmDiscreteObjective(16), {}, (10.169299125671387, 9.83269214630127)),
    (RemdmObjective(16, "cap", 0.5), {}, (33.0612907409668, 32.52545928955078)),
    (RemdmObjective(16, "rescale", 0.3), {}, (20.210315704345703, 19.72575569152832)),
    (MdlmObjective(eps=0.05), {}, (9.233019828796387, 8.852120399475098)),
    (ArObjective(), dict(causal=True), (6.303221225738525, 6.3880414962768555)),
    (MdlmObjective(label_dropout=0.3), dict(num_classes=2),
     (9.74107837677002, 9.646098136901855)),
    (ClassifierObjective(), dict(num_classes=2, time_conditioning=True),
     (0.7755692005157471, 0.7669259905815125)),
]


@pytest.mark.parametrize("objective,model_options,pinned", PINNED_LOSSES, ids=[
    "mdlm", "mdlm_discrete", "remdm_cap", "remdm_rescale", "mdlm_eps", "ar", "mdlm_labels",
    "classifier"])
def test_every_objective_gives_its_pinned_loss(objective, model_options, pinned):
  model_cfg = dataclasses.replace(MODEL, hidden=16, heads=2, blocks=1, cond_dim=8,
                                  max_length=16, **model_options)
  model = _perturbed(lambda cfg, rngs: objective.build_model(cfg, rngs), model_cfg)
  rows = _rows(0, 8, 16)
  batch = ({"tokens": rows, "labels": (rows[:, 0] % 2).astype(np.int32)}
           if model_cfg.num_classes else rows)
  got = [objective.loss(model, batch, jax.random.key(3), mask_id=TOK.mask_id, train=train)
         for train in (True, False)]
  assert all(value.dtype == np.float32 and value.shape == () for value in got)
  np.testing.assert_allclose([float(v) for v in got], pinned, rtol=1e-6)


@pytest.mark.parametrize("objective,rule,eta", [
    (MdlmObjective(eps=0.05), None, 0.0), (MdlmDiscreteObjective(16), "mdlm", 0.0),
    (RemdmObjective(16, "cap", 0.5), "cap", 0.5),
    (RemdmObjective(16, "rescale", 0.3), "rescale", 0.3)],
    ids=["mdlm", "mdlm_discrete", "remdm_cap", "remdm_rescale"])
def test_objectives_equal_their_nelbo_in_float64(objective, rule, eta):
  """Without dropout, each diffusion objective's loss of a DiT built from random released
  tensors equals the NELBO computed in float64 NumPy from the same tensors (the DiT forward of
  `references.dit`, time input -log alpha(t), the schedule, weights, SUBS and NLL of
  `references.nelbo`); only the uniform draws come from JAX. Seeds 0 (weights) and 5 (key);
  rtol 1e-4 (a float32 forward against a float64 one)."""
  from references.dit import SMALL, numpy_forward, released_tensors
  from references.nelbo import reference_nelbo
  from remdm_jax.weights.convert import convert_tensors
  tensors = released_tensors(SMALL)
  model = convert_tensors(tensors, SMALL)
  mask_id = SMALL.vocab_size - 1
  x = np.asarray(jax.random.randint(jax.random.key(1), (8, 12), 0, mask_id), np.int32)
  key = jax.random.key(5)
  got = objective.loss(model, x, key, mask_id=mask_id, train=False)
  assert got.dtype == np.float32 and got.shape == ()
  eps, steps = objective.eps, getattr(objective, "discrete_steps", None)
  logits = lambda z, t: numpy_forward(tensors, z, -np.log(1.0 - (1.0 - eps) * t), SMALL)
  want = reference_nelbo(x, key, logits, mask_id, rule=rule, eta=eta, eps=eps,
                         num_steps=steps)
  np.testing.assert_allclose(float(got), want, rtol=1e-4)


class _SignallingStream(data.BatchStream):
  """Sends `signum` to this process while batch `at` is being fetched (as Ctrl-C would)."""

  def __init__(self, signum, at):
    super().__init__(_rows(), TRAIN.batch_size, TRAIN.seed)
    self.signum, self.at = signum, at

  def batch(self, k):
    if k == self.at:
      os.kill(os.getpid(), self.signum)
    return super().batch(k)


@pytest.mark.parametrize("signum", [signal.SIGINT,
                                    pytest.param(signal.SIGTERM, marks=pytest.mark.slow)])
def test_signal_saves_the_step_and_stops_with_its_exit_code(signum, tmp_path):
  """SIGINT (Ctrl-C) is handled like SIGTERM: the step in flight finishes, it is saved, and
  the run stops with 128 + signal number and a message, without exporting a model."""
  before = signal.getsignal(signal.SIGINT)   # default_int_handler, or SIG_IGN in background
  with pytest.raises(errors.Stopped, match=f"stopped by {signal.Signals(signum).name} after "
                     "step 3 of 12.*rerun the same command") as stopped:
    training.train(MODEL, TRAIN, _SignallingStream(signum, at=2), None, TOK.mask_id,
                   tmp_path, progress=False)
  assert stopped.value.exit_code == 128 + signum
  assert _saved_steps(tmp_path) == [3] and not (tmp_path / "model").exists()
  assert signal.getsignal(signal.SIGINT) is before   # handler restored


@pytest.mark.slow
def test_diverging_run_stops_and_keeps_the_last_good_state(tmp_path):
  """A learning rate of 1e30 makes step 2's loss overflow: the run raises, that step is not
  applied, step 1 is checkpointed with finite parameters, and no model is exported."""
  cfg = dataclasses.replace(TRAIN, learning_rate=1e30, warmup_steps=0, save_every=6)
  with pytest.raises(training.TrainingDiverged, match="diverged at step 2.*last good state "
                     r"\(step 1\) is saved.*no model was exported"):
    _train(tmp_path, cfg)
  assert _saved_steps(tmp_path) == [1] and not (tmp_path / "model").exists()
  run, state = training.build_run(MODEL, cfg, TOK.mask_id)
  identity = training.resume_identity(training.run_record(
      MODEL, cfg, data.BatchStream(_rows(), cfg.batch_size, cfg.seed), TOK.mask_id, None))
  restored = checkpoint.Checkpoints(tmp_path / "checkpoints", identity).restore_latest(state)
  assert int(restored["step"]) == 1
  assert all(np.isfinite(leaf).all() for leaf in _leaves(restored["params"]))


@pytest.mark.parametrize("field,value,match", [
    ("learning_rate", float("nan"), "learning_rate must be a finite number, got nan"),
    ("learning_rate", 0.0, r"learning_rate must be in \(0, inf\), got 0.0"),
    ("grad_clip", float("inf"), "grad_clip must be a finite number"),
    ("steps", 2.5, "steps must be an integer, got 2.5"),
    ("steps", True, "steps must be an integer, got True"),
    ("warmup_steps", -1, r"warmup_steps must be in \[0, inf\)"),
    ("eval_batches", 0, r"eval_batches must be in \[1, inf\)"),
    ("weight_decay", "0.1", "weight_decay must be a number, got '0.1'"),
])
def test_numeric_train_options_are_validated_up_front(field, value, match):
  with pytest.raises(ValueError, match=match):
    dataclasses.replace(TRAIN, **{field: value})


@pytest.mark.slow
def test_extending_a_finished_run_replaces_its_export(tmp_path):
  """A 4-step run exports step 4; rerunning with steps=6 trains on and exports step 6 (the
  EMA of step 6, bit for bit); a stale temporary export left by a crash is cleared, and a
  half-written last metrics line (a kill mid-write) is dropped on resume."""
  short = dataclasses.replace(TRAIN, steps=4, eval_every=0)
  _train(tmp_path, short)
  assert exported_step(tmp_path / "model") == 4
  (tmp_path / ".model.tmp").mkdir()                          # as an interrupted export
  (tmp_path / ".model.tmp" / "junk").write_text("x")
  metrics = tmp_path / "metrics.jsonl"
  metrics.write_text(metrics.read_text() + '{"step": 5, "lo')
  final = _train(tmp_path, dataclasses.replace(short, steps=6))
  assert exported_step(tmp_path / "model") == 6 and not (tmp_path / ".model.tmp").exists()
  exported = nnx.state(load_model(tmp_path / "model"), nnx.Param)
  for a, b in zip(_leaves(exported), _leaves(final["ema"])):
    np.testing.assert_array_equal(a, b)
  assert [json.loads(l)["step"] for l in metrics.read_text().splitlines()] == list(range(1, 7))
  config = tmp_path / "model" / "config.json"
  config.write_text(config.read_text().replace('"step": 6', '"step": 5'))   # stale export
  _train(tmp_path, dataclasses.replace(short, steps=6))
  assert exported_step(tmp_path / "model") == 6


def test_too_small_validation_split_is_named(tmp_path):
  with pytest.raises(ValueError, match="validation split has 4 rows, fewer than batch_size=8"):
    training.train(MODEL, TRAIN, data.BatchStream(_rows(), 8, 0), _rows(1, 4), TOK.mask_id,
                   tmp_path, progress=False)



def _labelled(seed, n):
  rows = _rows(seed, n)
  return {"tokens": rows, "labels": (rows[:, 0] % 2).astype(np.int32)}


@pytest.mark.slow
def test_class_conditional_model_trains_on_labelled_rows(tmp_path):
  """Labelled rows through the whole loop (batches, sharding, held-out loss, export): the
  exported model has the class embedding and its labels change the output."""
  import jax.numpy as jnp
  model_cfg = dataclasses.replace(MODEL, num_classes=2, time_conditioning=True)
  cfg = dataclasses.replace(TRAIN, steps=4, eval_every=2, save_every=4)
  stream = data.BatchStream(_labelled(0, 64), cfg.batch_size, cfg.seed)
  training.train(model_cfg, cfg, stream, _labelled(1, 16), TOK.mask_id, tmp_path,
                 progress=False)
  logged = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert all(np.isfinite(entry["loss"]) for entry in logged)
  assert np.isfinite(logged[-1]["valid_nelbo"])
  model = load_model(tmp_path / "model")
  z, sigma = jnp.asarray(_rows(2, 2)), jnp.ones((2,))
  a, b = (model(z, sigma, labels=jnp.full((2,), y, jnp.int32)) for y in (0, 1))
  assert model.cfg.num_classes == 2 and float(jnp.abs(a - b).max()) > 0


def test_label_dropout_replaces_labels_by_the_null_class_at_its_rate():
  """10000 labels, label_dropout 0.1: the null-class fraction is within 5 sd (0.015) of 0.1;
  evaluation (train=False) keeps every label; unlabelled models refuse labelled batches."""
  import jax.numpy as jnp
  model = DiT(dataclasses.replace(MODEL, num_classes=2), rngs=nnx.Rngs(0))
  labels = jnp.asarray(np.arange(10_000) % 2, jnp.int32)
  seen = np.asarray(objectives._training_labels(model, labels, jax.random.key(0), 0.1, True))
  null = seen == 2
  assert abs(null.mean() - 0.1) < 5 * np.sqrt(0.1 * 0.9 / 10_000)
  np.testing.assert_array_equal(seen[~null], np.asarray(labels)[~null])
  np.testing.assert_array_equal(np.asarray(objectives._training_labels(
      model, labels, jax.random.key(0), 0.1, False)), np.asarray(labels))
  plain = DiT(MODEL, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="labelled batches need a class-conditional model"):
    objectives._training_labels(plain, labels, jax.random.key(0), 0.1, True)
  causal = DiT(dataclasses.replace(MODEL, causal=True), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="objective 'ar' trains an unconditional model"):
    ArObjective().loss(causal, {"tokens": _rows(0, 2), "labels": labels[:2]},
                       jax.random.key(0), mask_id=TOK.mask_id, train=True)


@pytest.mark.slow
def test_noisy_classifier_trains_exports_and_is_refused_for_sampling(tmp_path):
  """objective='classifier' trains a NoisyClassifier on noised labelled rows (the label is
  whether the first token is below 128, visible when that position is not masked): the mean
  cross-entropy of the last 10 of 60 steps is below that of the first 10 and below log 2;
  the export loads back as a classifier, and sampling refuses it."""
  import jax.numpy as jnp
  from remdm_jax.jobs import sample_job as jobs
  rows = _rows(0, 256)
  labelled = {"tokens": rows, "labels": (rows[:, 0] < 128).astype(np.int32)}
  model_cfg = dataclasses.replace(MODEL, num_classes=2, time_conditioning=True, dropout=0.0)
  cfg = dataclasses.replace(TRAIN, objective=ClassifierObjective(), steps=60, batch_size=32,
                            eval_every=0, save_every=60, learning_rate=3e-3)
  stream = data.BatchStream(labelled, cfg.batch_size, cfg.seed)
  training.train(model_cfg, cfg, stream, None, TOK.mask_id, tmp_path, progress=False,
                 tokenizer="bytes")
  losses = [json.loads(l)["loss"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert np.mean(losses[-10:]) < min(np.mean(losses[:10]), np.log(2)), losses
  model = load_model(tmp_path / "model")
  assert isinstance(model, NoisyClassifier)
  onehot = jax.nn.one_hot(jnp.asarray(rows[:3]), TOK.vocab_size)
  assert model(onehot, jnp.ones((3,))).shape == (3, 2)
  with pytest.raises(ValueError, match="is a classifier of noisy sequences"):
    jobs.load_sampling_model(tmp_path / "model")
  with pytest.raises(ValueError, match="objective 'classifier' needs labelled rows"):
    _train(tmp_path / "plain", cfg=dataclasses.replace(cfg, steps=1), model=model_cfg)


@pytest.mark.slow
def test_a_workdir_is_used_by_one_run_at_a_time(tmp_path, capsys):
  """A second run on a held workdir stops at once (exit 2, naming the holder) and writes
  nothing; once the holder is killed, its leftover lock file is no lock."""
  from remdm_jax import cli
  from remdm_jax.parallel import locks
  from references.folders import lock_holder
  with lock_holder(tmp_path) as holder:
    assert cli.train_main([f"--workdir={tmp_path}", "--data.dataset=nowhere"]) == 2
    line = capsys.readouterr().err
    assert line.count("\n") == 1 and f"the workdir folder is in use by another run (pid " \
        f"{holder.pid} on host " in line
    with pytest.raises(locks.FolderInUse, match=f"pid {holder.pid} "):
      _train(tmp_path)
  assert sorted(p.name for p in tmp_path.iterdir()) == [locks.LOCK_FILE]
  _train(tmp_path, cfg=dataclasses.replace(TRAIN, steps=2, save_every=2))
  assert (tmp_path / "model").is_dir() and not (tmp_path / locks.LOCK_FILE).exists()


def test_a_failed_checkpoint_save_is_one_line_without_thread_tracebacks(tmp_path, capsys,
                                                                        caplog):
  """A save whose writer thread fails on a full disk (a stand-in for orbax's): one `error:`
  line naming the step's folder, no traceback or ERROR record, no temporary left."""
  import errno
  import logging
  import threading
  checkpoints = checkpoint.Checkpoints(tmp_path / "checkpoints", {"run": 1})

  def save(step, args=None, force=False):
    temporary = tmp_path / "checkpoints" / f"{step}.orbax-checkpoint-tmp-7"
    temporary.mkdir(parents=True)
    (temporary / "part").write_bytes(b"")

    def writer():
      failure = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
      logging.getLogger("absl").error("write failed", exc_info=failure)
      raise failure
    thread = threading.Thread(target=writer)
    thread.start()
    thread.join()
  checkpoints.manager.save = save
  assert errors.run_cli(lambda argv: checkpoints.save({"step": 3}), []) == 2
  err = capsys.readouterr().err
  assert err == (f"error: {tmp_path / 'checkpoints' / '3'}: cannot write the checkpoint (No "
                 "space left on device)\n")
  assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
  assert list((tmp_path / "checkpoints").iterdir()) == []


def _hooks(loggers) -> dict:
  """The process-wide state a library call must leave as it found it."""
  import logging
  import threading
  return {"threading.excepthook": threading.excepthook,
          "sys.unraisablehook": sys.unraisablehook,
          **{f"signal {s.name}": signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)},
          **{f"filters of {name or 'root'}": list(logging.getLogger(name).filters)
             for name in loggers}}


@pytest.mark.slow
def test_saving_loading_and_training_leave_the_callers_hooks(tmp_path, monkeypatch):
  """A library user's `threading.excepthook`, `sys.unraisablehook`, logger filters (absl,
  orbax, asyncio, root) and SIGTERM / SIGINT handlers are theirs again after `save_model`, a
  checkpoint save, a failed one, a failed load and a `train`."""
  import errno
  import logging
  import threading
  loggers = ("absl", "orbax", "asyncio", "")
  monkeypatch.setattr(threading, "excepthook", lambda args: None)
  monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: None)
  for name in loggers:
    logger = logging.getLogger(name)
    monkeypatch.setattr(logger, "filters", [*logger.filters, lambda record: True])
  previous = {s: signal.signal(s, lambda signum, frame: None)
              for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    users = _hooks(loggers)
    folder = checkpoint.save_model(DiT(MODEL, rngs=nnx.Rngs(0)), tmp_path / "m")
    checkpoints = checkpoint.Checkpoints(tmp_path / "c", {"run": 1})
    checkpoints.save({"step": 3, "w": np.ones(2, np.float32)})

    def full_disk(*args, **kwargs):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(checkpoints.manager, "save", full_disk)
    with pytest.raises(OSError, match="cannot write the checkpoint"):
      checkpoints.save({"step": 4, "w": np.ones(2, np.float32)})
    largest = max((folder / "params").rglob("d/*"), key=lambda p: p.stat().st_size)
    largest.write_bytes(largest.read_bytes()[:10])
    with pytest.raises(ValueError, match="cannot read the parameters"):
      load_model(folder)
    _train(tmp_path / "run", cfg=dataclasses.replace(TRAIN, steps=2, save_every=2,
                                                     eval_every=0))
    assert _hooks(loggers) == users
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
