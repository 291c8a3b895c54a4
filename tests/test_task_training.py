"""Training task models: the supervised (LLaDA SFT) loss and the answer-only NELBOs against
float64 NumPy, the loop training a LLaDA and exporting it in the released layout."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from remdm_jax import families
from remdm_jax.jobs import task_models
from remdm_jax.models.llada import LLaDA, LLaDAConfig
from remdm_jax.training import losses, objectives
from remdm_jax.weights import llada_io

from references.nelbo import reference_nelbo, reference_sft

V, MASK, B, L, P = 7, 6, 16, 10, 4
W = np.random.default_rng(0).standard_normal((V, V)).astype(np.float32)


def _toy(z, t):
  """Logits that read the (masked) tokens and the time: `W[z] * (1 + t)`."""
  return jnp.asarray(W)[z] * (1.0 + jnp.asarray(t, jnp.float32)[:, None, None])


def _rows(seed=0):
  x = np.random.default_rng(seed).integers(0, MASK, (B, L)).astype(np.int32)
  prompt = np.arange(L)[None, :] < np.random.default_rng(seed + 1).integers(1, L, B)[:, None]
  return x, prompt


@pytest.mark.parametrize("weighting", ["inverse", "linear"])
def test_sft_loss_matches_float64_numpy(weighting):
  x, prompt = _rows()
  loss = jax.jit(lambda x, p, k: losses.sft_loss(_toy, x, p, k, mask_id=MASK,
                                                 weighting=weighting))
  for seed in range(3):
    key = jax.random.key(seed)
    got = float(loss(x, prompt, key))
    want = reference_sft(x, prompt, key, lambda z, t: np.asarray(_toy(z, t)), MASK,
                         weighting=weighting)
    assert abs(got - want) < 1e-5 * max(1.0, abs(want))


def test_sft_loss_expectation_is_the_answer_cross_entropy():
  """With logits that ignore the input, E[loss] = mean answer-token cross-entropy exactly
  for LLaDA's 1/t weight; 400 keys, seed 0, tolerance 4 standard errors."""
  x, prompt = _rows()
  fixed = np.random.default_rng(3).standard_normal((B, L, V)).astype(np.float32)
  logits_fn = lambda z, t: jnp.asarray(fixed)
  log_probs = fixed - np.log(np.exp(fixed).sum(-1, keepdims=True))
  nll = -np.take_along_axis(log_probs, x[..., None], -1)[..., 0]
  want = np.mean(np.sum(np.where(prompt, 0, nll), 1) / np.sum(~prompt, 1))
  draws = jax.jit(jax.vmap(lambda k: losses.sft_loss(logits_fn, x, prompt, k, mask_id=MASK)))(
      jax.random.split(jax.random.key(0), 400))
  draws = np.asarray(draws, np.float64)
  assert abs(draws.mean() - want) < 4 * draws.std() / np.sqrt(len(draws))


def test_sft_loss_never_masks_the_prompt():
  x, prompt = _rows()
  seen = []
  losses.sft_loss(lambda z, t: seen.append(np.asarray(z)) or _toy(z, t), x, prompt,
                  jax.random.key(1), mask_id=MASK)
  assert (seen[0][prompt] == x[prompt]).all() and (seen[0][~prompt] == MASK).any()


@pytest.mark.parametrize("rule, steps", [(None, None), ("mdlm", 8), ("cap", 8)])
def test_answer_only_nelbo_matches_float64_numpy(rule, steps):
  x, prompt = _rows(5)
  key = jax.random.key(2)
  if rule is None:
    got = losses.mdlm_loss(_toy, x, key, mask_id=MASK, prompt=prompt)
  elif rule == "mdlm":
    got = losses.mdlm_discrete_loss(_toy, x, key, num_steps=steps, mask_id=MASK, prompt=prompt)
  else:
    got = losses.remdm_loss(_toy, x, key, num_steps=steps, sigma_rule="cap", eta=0.3,
                            mask_id=MASK, prompt=prompt)
  want = reference_nelbo(x, key, lambda z, t: np.asarray(_toy(z, t)), MASK, rule=rule,
                         eta=0.3, num_steps=steps, prompt=prompt)
  assert abs(float(got) - want) < 1e-5 * max(1.0, abs(want))
  unprompted = reference_nelbo(x, key, lambda z, t: np.asarray(_toy(z, t)), MASK, rule=rule,
                               eta=0.3, num_steps=steps)
  assert abs(unprompted - want) > 1e-3        # the prompt changes the value: the test can fail


def test_sft_loss_refuses_bad_arguments():
  x, prompt = _rows()
  with pytest.raises(ValueError, match="weighting"):
    losses.sft_loss(_toy, x, prompt, jax.random.key(0), mask_id=MASK, weighting="cosine")
  with pytest.raises(ValueError, match="prompt"):
    losses.sft_loss(_toy, x, prompt[:, :3], jax.random.key(0), mask_id=MASK)
  with pytest.raises(ValueError, match="prompt-answer rows"):
    objectives.SftObjective().loss(None, jnp.asarray(x), jax.random.key(0), mask_id=MASK,
                                   train=True)


CFG = LLaDAConfig(vocab_size=V, d_model=16, n_layers=1, n_heads=2, n_kv_heads=2,
                  mlp_hidden_size=32, max_sequence_length=L, mask_id=MASK, rope_theta=10_000.0,
                  param_dtype="float32", dtype="float32")


def test_llada_folder_round_trips_and_families_build_from_configs(tmp_path):
  model = families.for_config(CFG).build(CFG, nnx.Rngs(3))
  assert isinstance(model, LLaDA)
  llada_io.save_llada(model, tmp_path / "m", step=7)
  family = families.for_folder(tmp_path / "m")
  loaded = family.load(tmp_path / "m")
  x = np.arange(2 * L).reshape(2, L) % MASK
  np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(loaded(x)))
  assert loaded.cfg == CFG and family.exported_step(tmp_path / "m") == 7
  with pytest.raises(ValueError, match="already holds a model"):
    llada_io.save_llada(model, tmp_path / "m")
  with pytest.raises(TypeError, match="model config must be one of"):
    families.for_config(object())


@pytest.mark.slow
@pytest.mark.parametrize("objective", [
    objectives.SftObjective(), objectives.SftObjective(weighting="linear"),
    objectives.MdlmObjective(), objectives.RemdmObjective(discrete_steps=64, eta=0.1)],
    ids=["sft", "sft-linear", "mdlm", "remdm"])
def test_the_loop_trains_a_llada_on_answers_and_its_loss_goes_down(tmp_path, objective):
  """Answers that copy the prompt: every objective's held-out loss falls by a third."""
  from remdm_jax.data.datasets import BatchStream
  from remdm_jax.training.loop import TrainConfig, train
  from remdm_jax.training.objectives import held_out_loss, model_loss
  rng = np.random.default_rng(0)
  half = rng.integers(0, MASK, (512, L // 2)).astype(np.int32)
  rows = {"tokens": np.concatenate([half, half], 1),
          "prompt_lengths": np.full(512, L // 2, np.int32)}
  cfg = TrainConfig(objective=objective, learning_rate=3e-3, warmup_steps=10, batch_size=32,
                    steps=150, eval_every=0, save_every=150, log_every=150, ema_decay=0.9)
  model_cfg = dataclasses.replace(CFG, d_model=32, mlp_hidden_size=64)
  stream = BatchStream(rows, 32, 0)
  train(model_cfg, cfg, stream, None, MASK, tmp_path, progress=False)
  trained = families.for_folder(tmp_path / "model").load(tmp_path / "model")
  fresh = LLaDA(model_cfg, rngs=nnx.Rngs(0))
  held = lambda m: held_out_loss(model_loss(m, objective, MASK), rows, 32, seed=9,
                                 max_batches=4)
  assert held(trained) < 0.67 * held(fresh)


@pytest.mark.slow
def test_a_run_can_start_from_a_model_folder(tmp_path):
  """Fine-tuning: `init_from` starts the run from the folder's weights (a tiny learning rate
  leaves the export at them), and a folder of another config is refused."""
  from remdm_jax.data.datasets import BatchStream
  from remdm_jax.training.loop import TrainConfig, train
  start = LLaDA(CFG, rngs=nnx.Rngs(11))
  llada_io.save_llada(start, tmp_path / "start")
  x, prompt = _rows()
  rows = {"tokens": x, "prompt_lengths": prompt.sum(1).astype(np.int32)}
  cfg = TrainConfig(objective=objectives.SftObjective(), learning_rate=1e-9, batch_size=8,
                    steps=1, eval_every=0, save_every=1, log_every=1)
  train(CFG, cfg, BatchStream(rows, 8, 0), None, MASK, tmp_path / "run", progress=False,
        init_from=tmp_path / "start")
  done = families.for_folder(tmp_path / "run" / "model").load(tmp_path / "run" / "model")
  x = np.arange(2 * L).reshape(2, L) % MASK
  np.testing.assert_allclose(np.asarray(done(x)), np.asarray(start(x)), atol=1e-5)
  other = dataclasses.replace(CFG, d_model=32, mlp_hidden_size=64)
  with pytest.raises(ValueError, match="init_from: .* another config"):
    train(other, cfg, BatchStream(rows, 8, 0), None, MASK, tmp_path / "run2", progress=False,
          init_from=tmp_path / "start")


def test_the_ablation_table_pairs_each_objective_with_mdlm_on_the_same_items(load_script):
  script = load_script("train/task_ablation.py")
  mdlm = [[True, True, False, False, True], [True, False, False, True, True]]
  remdm = [[True, False, False, False, False], [False, False, False, False, False]]
  runs = [{"objective": name, "seed": s, "correct": [rows[s]], "nelbo": [nelbo + s],
           "own_bound": [10.0 * nelbo]}
          for name, rows, nelbo in (("mdlm", mdlm, 1.0), ("remdm_cap1", remdm, 2.0))
          for s in range(2)]
  text = script.table(runs, ["toy"])
  mdlm_line, remdm_line = text.splitlines()[2:4]
  assert mdlm_line.startswith("| mdlm | toy | 60.0 |") and "baseline" in mdlm_line
  # mdlm solves 6 of the 10 (seed, item) pairs, remdm 1 of them and nothing else: +0 / -5,
  # McNemar's exact p = 2 * 0.5 ** 5
  assert remdm_line.startswith("| remdm_cap1 | toy | 10.0 |")
  assert "+0 / -5 | 0.0625 |" in remdm_line
  assert "2.5000 +- 0.7071 | 20.0000 |" in remdm_line


def test_an_ablation_workdir_refuses_other_settings(load_script, tmp_path):
  import argparse
  script = load_script("train/task_ablation.py")
  args = argparse.Namespace(workdir=str(tmp_path), recipe="sudoku", steps=200, batch_size=64,
                            test=100)
  script._check_settings(args)
  script._check_settings(args)                      # a rerun with the same settings resumes
  with pytest.raises(ValueError, match="--steps=300 differs from the 200"):
    script._check_settings(argparse.Namespace(**{**vars(args), "steps": 300}))


@pytest.mark.parametrize("name", sorted(task_models.RECIPES))
def test_recipes_fit_their_examples_in_their_rows(name):
  """The model's length is the row's, and drawn examples all fit (none is dropped)."""
  recipe = task_models.RECIPES[name]
  assert recipe.model.max_sequence_length == recipe.rows.seq_len
  for k, task in enumerate(recipe.tasks):
    for example in task.generate(k, 60, "train"):
      assert len(example["input"]) < recipe.rows.prompt_length, example
      assert len(example["output"]) < recipe.rows.answer_length, example


def test_a_task_workdir_refuses_the_data_of_another_recipe(tmp_path):
  sudoku, countdown = task_models.RECIPES["sudoku"], task_models.RECIPES["countdown"]
  task_models._check_data_stamp(tmp_path, sudoku, 0)
  task_models._check_data_stamp(tmp_path, sudoku, 0)          # the same recipe resumes
  for recipe, seed in ((countdown, 0), (sudoku, 1)):
    with pytest.raises(ValueError, match="holds data of another recipe or data seed"):
      task_models._check_data_stamp(tmp_path, recipe, seed)
