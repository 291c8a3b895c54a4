"""Training masked diffusion (MDLM / ReMDM NELBO) and autoregressive models.

`TrainConfig` holds the objective (a `remdm_jax.training.objectives.Objective`, which owns the loss)
and the optimiser and loop settings. One jitted train step (AdamW with warm-up, gradient
clipping, EMA of the weights) runs over a `("data", "model")` mesh: the batch is split on
"data"; parameters, optimizer moments and EMA are replicated, or split on "model" by the
tensor-parallel rules of `remdm_jax.parallel.sharding` (`model_axis > 1`); XLA inserts the
collectives. Randomness is `fold_in(key(seed), step)` and batch `k` is a pure function of
`(seed, k)`, so a run resumed from an orbax checkpoint continues exactly as if never
interrupted. A checkpoint records the run's identity (`resume_identity`): a run that differs
in anything but its length and its logging, evaluation and save periods is refused. SIGTERM
and SIGINT save and stop (`errors.Stopped`; the handlers are in place while the steps run,
and the previous ones are back when `train` returns or raises); SIGKILL loses at most
`save_every` steps. A step whose loss, gradient or update is not finite is not applied: the
run saves the last good state and raises `TrainingDiverged`. The exported model
(`WORKDIR/model`) always matches the final step and is replaced atomically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import signal
import types
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from remdm_jax import families, files
from remdm_jax.data import batches
from remdm_jax.parallel import distributed
from remdm_jax.parallel import locks
from remdm_jax.training import objectives
from remdm_jax.weights.checkpoint import Checkpoints
from remdm_jax.errors import Stopped
from remdm_jax.models.classifier import NoisyClassifier
from remdm_jax.models.dit import DiTConfig
from remdm_jax.training.objectives import MdlmObjective, Objective, held_out_loss
from remdm_jax.registry import flat_options, with_choice_options
from remdm_jax.parallel.sharding import param_shardings
from remdm_jax.validation import ArgumentTypeError, check_fields, check_range, option


class TrainingDiverged(FloatingPointError):
  """A step produced a non-finite loss, gradient or update; it was not applied."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """The objective, the optimiser and the loop; defaults suit a small model on CPU.

  A resumed run may change the `RESUMABLE` fields only: they decide how long it runs and what
  it logs and saves, never the parameters of a step.
  """

  objective: Objective = option(MdlmObjective(), "an objectives.Objective: mdlm, "
                                                 "mdlm_discrete, remdm (eq. 9), ar (a causal "
                                                 "model) or classifier (labelled rows)")
  learning_rate: float = option(3e-4, "AdamW peak rate, reached after warm-up")
  warmup_steps: int = option(100, "linear warm-up from 0")
  weight_decay: float = option(0.0, "AdamW decoupled weight decay")
  grad_clip: float = option(1.0, "global-norm clipping")
  ema_decay: float = option(0.999, "EMA of the weights (evaluation, export); its decay warms "
                                   "up: min(ema_decay, (1 + n) / (10 + n)) at update n")
  batch_size: int = option(32, 'global batch, split over the "data" devices')
  model_axis: int = option(1, 'devices sharing each parameter shard ("model" mesh axis)')
  steps: int = option(1_000, "total optimizer steps")
  eval_every: int = option(200, "validation NELBO period (steps); 0 disables it")
  eval_batches: int = option(4, "validation batches per evaluation")
  save_every: int = option(200, "checkpoint period (steps)")
  log_every: int = option(10, "metrics.jsonl period (steps)")
  seed: int = option(0, "parameters, data order and noise all derive from it")

  CHOICE: ClassVar = ("objective", objectives.REGISTRY)   # --train.objective picks it
  RESUMABLE: ClassVar[tuple[str, ...]] = ("steps", "eval_every", "eval_batches", "save_every",
                                          "log_every")

  def __post_init__(self):
    check_fields(self)
    if not isinstance(self.objective, Objective):
      raise ArgumentTypeError(
          "objective must be an objective object such as "
          "remdm_jax.training.objectives.RemdmObjective(discrete_steps=4096, eta=0.5) (or use "
          f"TrainConfig().with_options(objective='remdm', ...)), got {self.objective!r}")
    for name in ("batch_size", "steps", "save_every", "log_every", "model_axis",
                 "eval_batches"):
      check_range(name, getattr(self, name), 1)
    for name in ("warmup_steps", "eval_every", "seed"):
      check_range(name, getattr(self, name), 0)
    check_range("learning_rate", self.learning_rate, 0.0, low_open=True)
    check_range("weight_decay", self.weight_decay, 0.0)
    check_range("grad_clip", self.grad_clip, 0.0, low_open=True)
    check_range("ema_decay", self.ema_decay, 0.0, 1.0, high_open=True)

  def options(self) -> dict:
    """The flat form: `{"objective": name, **objective fields, **other fields}` (JSON-able;
    `TrainConfig().with_options(**cfg.options())` rebuilds the config)."""
    return flat_options(self)

  def with_options(self, **options) -> TrainConfig:
    """A copy with flat options changed. A new `objective` name starts from that objective's
    defaults (its options do not carry over); other names go to the objective when it has
    them, else to the loop's own fields.

    Raises:
      ValueError: an unknown option, or one the objective does not have (naming both).
    """
    return with_choice_options(self, options)


def _all_finite(tree) -> jax.Array:
  """`[] bool`: every element of every leaf is finite (no norm, which could overflow)."""
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def ema_decay_at(updates: jax.Array, ema_decay: float) -> jax.Array:
  """`[] float32` decay of the weights' EMA at update number `updates` (1 for the first):
  `min(ema_decay, (1 + n) / (10 + n))`, so the average forgets the initial weights early in
  a run instead of holding `ema_decay ** n` of them (22% after 1,500 updates at 0.999).
  The same warm-up as the MDLM reference trainer's EMA (`use_num_updates`)."""
  n = jnp.asarray(updates, jnp.float32)
  return jnp.minimum(jnp.float32(ema_decay), (1.0 + n) / (10.0 + n))


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
  warmup = optax.linear_schedule(0.0, cfg.learning_rate, max(cfg.warmup_steps, 1))
  rate = optax.join_schedules([warmup, optax.constant_schedule(cfg.learning_rate)],
                              [cfg.warmup_steps])
  return optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                     optax.adamw(rate, weight_decay=cfg.weight_decay))


@dataclasses.dataclass
class Run:
  """A model's static graph and the jitted functions of one training run."""

  graphdef: nnx.GraphDef
  rest: nnx.State
  train_step: callable
  eval_loss: callable
  data_sharding: NamedSharding


def _placement(model_cfg, state, mesh: Mesh):
  """Where the training state lives: a DiT's parameter-shaped leaves (moments and EMA too)
  follow the DiT's tensor-parallel rules; other families train with replicated parameters
  (data parallel), so a "model" axis of more than one device is refused for them."""
  if isinstance(model_cfg, DiTConfig):
    return param_shardings(state, mesh)
  if "model" in mesh.axis_names and mesh.shape["model"] > 1:
    raise ValueError(f"model_axis must be 1 for a {type(model_cfg).__name__} (its training "
                     "state is replicated; split the batch over the data axis)")
  return jax.tree.map(lambda _: NamedSharding(mesh, P()), state)


def build_run(model_cfg, cfg: TrainConfig, mask_id: int,
              mesh: Mesh | None = None) -> tuple[Run, dict]:
  """Initial training state `{params, opt_state, ema, step}` and the jitted step functions.

  `model_cfg` is the config of any registered family that builds models (`DiTConfig`,
  `LLaDAConfig`); the objective builds the model (`Objective.build_model`)."""
  cfg.objective.check_model(model_cfg)
  mesh = mesh or distributed.make_mesh(cfg.model_axis)
  replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  model = cfg.objective.build_model(model_cfg, nnx.Rngs(cfg.seed))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = make_optimizer(cfg)
  state = {"params": params, "opt_state": tx.init(params), "ema": jax.tree.map(jnp.copy, params),
           "step": jnp.zeros((), jnp.int32)}
  placement = _placement(model_cfg, state, mesh)
  state = jax.device_put(state, placement)
  base_key = jax.random.key(cfg.seed)

  def loss_of(params, batch, key, train):
    return cfg.objective.loss(nnx.merge(graphdef, params, rest), batch, key, mask_id=mask_id,
                              train=train)

  def train_step(state, batch):
    """One AdamW step; a step whose loss, gradient or update is not finite leaves the state
    unchanged and reports `finite = False`."""
    key = jax.random.fold_in(base_key, state["step"])
    loss, grads = jax.value_and_grad(loss_of)(state["params"], batch, key, True)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    decay = ema_decay_at(state["step"] + 1, cfg.ema_decay)
    ema = jax.tree.map(lambda e, p: (decay * e + (1.0 - decay) * p).astype(e.dtype),
                       state["ema"], params)
    new = {"params": params, "opt_state": opt_state, "ema": ema, "step": state["step"] + 1}
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & _all_finite(params)
    new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
    return new, {"loss": loss, "grad_norm": grad_norm, "finite": finite}

  def eval_loss(params, batch, key):
    return loss_of(params, batch, key, False)

  run = Run(graphdef=graphdef, rest=rest, data_sharding=data,
            train_step=jax.jit(train_step, in_shardings=(placement, data),
                               out_shardings=(placement, replicated), donate_argnums=0),
            eval_loss=jax.jit(eval_loss, in_shardings=(placement["ema"], data, None)))
  return run, state


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def _stop_on_signals():
  """Within the block, SIGTERM and SIGINT set the yielded flag's `signum`, checked between
  steps (the loop then saves and stops); a second signal of the same kind acts as it would
  without this handler. The previous handlers are back on exit."""
  stop, previous = types.SimpleNamespace(signum=None), {}

  def handle(signum, frame):
    stop.signum = signum
    signal.signal(signum, previous[signum])

  try:
    for signum in _STOP_SIGNALS:
      previous[signum] = signal.signal(signum, handle)
    yield stop
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)


def _metric_step(line: str) -> int | None:
  try:
    return json.loads(line)["step"]
  except (json.JSONDecodeError, KeyError, TypeError):
    return None


def _truncate_metrics(path: pathlib.Path, step: int) -> None:
  """Drops metric lines past `step` (written after the checkpoint we resume from) and any
  line a killed run left half-written."""
  if path.exists():
    lines = [l for l in files.read_text(path, "metrics file").splitlines()
             if (_metric_step(l) or step + 1) <= step]
    files.write_atomic(path, "".join(l + "\n" for l in lines))


def _diverged(metrics: dict, done: int, workdir: pathlib.Path) -> TrainingDiverged:
  return TrainingDiverged(
      f"training diverged at step {done}: loss {float(metrics['loss']):.4g}, gradient norm "
      f"{float(metrics['grad_norm']):.4g} (or non-finite updated parameters); that step was not "
      f"applied and the last good state (step {done - 1}) is saved in "
      f"{workdir / 'checkpoints'}; no model was exported. Lower --train.learning_rate or "
      "check the data, in a new workdir")


def _export(run: Run, state: dict, workdir: pathlib.Path, tokenizer) -> None:
  """Writes the EMA model to `WORKDIR/model` unless it already holds this step's export.

  The export is written to a temporary folder, then swapped in (`files.replace_folder`), so
  `WORKDIR/model` is always a complete export; a stale or interrupted one is replaced.
  """
  step, final = int(state["step"]), workdir / "model"
  model = nnx.merge(run.graphdef, state["ema"], run.rest)
  family = families.for_model(model)
  stale = family.exported_step(final) != step
  if not distributed.any_process(stale):   # a collective: all processes decide together
    return
  temporary = workdir / ".model.tmp"
  if distributed.is_primary():
    shutil.rmtree(temporary, ignore_errors=True)
  distributed.barrier("export-start")
  family.save(model, temporary, tokenizer=tokenizer, step=step)
  if distributed.is_primary():
    files.replace_folder(temporary, final)
  distributed.barrier("export-done")


def _rows_digest(rows) -> str:
  """The first 16 hex digits of the SHA-256 of the rows' names, dtypes, shapes and values."""
  digest = hashlib.sha256()
  named = sorted(rows.items()) if isinstance(rows, dict) else [("tokens", rows)]
  for name, array in named:
    array = np.ascontiguousarray(array)
    digest.update(f"{name} {array.dtype.str} {array.shape};".encode())
    digest.update(array)
  return digest.hexdigest()[:16]


def _tokenizer_record(tokenizer):
  """How a run records its tokenizer: a name as it is, a tokenizer object by its class and
  characters (the task models' character tokenizer)."""
  if tokenizer is None or isinstance(tokenizer, str):
    return tokenizer
  return {"class": type(tokenizer).__name__,
          "characters": getattr(tokenizer, "characters", None)}


def run_record(model_cfg, cfg: TrainConfig, train_stream, mask_id: int, tokenizer) -> dict:
  """The resolved config of a run (`WORKDIR/config.json`, JSON-able): the model, the flat
  train options (`TrainConfig.options`) and the data as the loop sees it: a digest of the
  training rows, their order seed, the mask id and the tokenizer recorded with the export.

  Raises:
    TypeError / ValueError: `train_stream` is not a `data.BatchStream` of `cfg.batch_size`.
  """
  if not all(hasattr(train_stream, a) for a in ("rows", "batch_size", "seed", "batch")):
    raise ArgumentTypeError("train_stream must be a remdm_jax.data.datasets.BatchStream (rows, "
                            f"batch_size, seed), got {type(train_stream).__name__}")
  if train_stream.batch_size != cfg.batch_size:
    raise ValueError(f"train_stream gives batches of {train_stream.batch_size} rows, but "
                     f"batch_size={cfg.batch_size}")
  rows = train_stream.rows
  data = {"rows_sha256": _rows_digest(rows), "num_rows": batches.num_rows(rows),
          "order_seed": train_stream.seed, "mask_id": mask_id,
          "tokenizer": _tokenizer_record(tokenizer)}
  record = {"model": dataclasses.asdict(model_cfg), "train": cfg.options(), "data": data}
  if not isinstance(model_cfg, DiTConfig):
    record["model_config"] = type(model_cfg).__name__
  return json.loads(json.dumps(record))     # as it reads back: tuples become lists


def resume_identity(record: dict) -> dict:
  """What a checkpoint must share with the run that resumes it: the whole `run_record` but
  the fields of `TrainConfig.RESUMABLE` (an extended run resumes)."""
  train = {k: v for k, v in record["train"].items() if k not in TrainConfig.RESUMABLE}
  return {**record, "train": train}


def train(model_cfg, cfg: TrainConfig, train_stream, valid_rows: np.ndarray | None,
          mask_id: int, workdir, *, stop_at: int | None = None, progress: bool = True,
          tokenizer=None, init_from=None) -> dict:
  """Trains (or resumes) in `workdir`; returns the final state.

  A checkpoint in `workdir` is resumed only by a run with the same `resume_identity` (model,
  objective, optimiser, seed, batch, data rows and order, ...); only `steps` and the
  logging, evaluation and save periods may change. Anything else is refused with an error
  naming the fields that differ.

  Args:
    train_stream: a `data.BatchStream` of `cfg.batch_size` rows (batch k is a pure function
      of k).
    valid_rows: `[N, L] int32` held-out rows for the validation NELBO (labelled rows for a
      class-conditional model, `remdm_jax.data.batches`), or None.
    stop_at: stop (and save) after this step, as if interrupted; for tests and time limits.
    model_cfg: a `DiTConfig`, a `LLaDAConfig` or the config of another registered family
      that builds and saves models (`remdm_jax.families`).
    tokenizer: recorded with the exported model (`WORKDIR/model`): a name for a DiT, a
      tokenizer with `save(folder)` (the character tokenizer) for a LLaDA.
    init_from: a model folder (of `model_cfg`'s family, with `model_cfg` its config) whose
      weights start the run: fine-tuning, e.g. a released LLaDA folder. Read only when no
      checkpoint is resumed; recorded in the run's identity.

  Raises:
    locks.FolderInUse: another run holds `workdir` (named: pid, host, start, command).
    ValueError: a checkpoint of another run, too few validation rows, or unlabelled rows for
      the classifier objective.
  """
  if (valid_rows is not None and cfg.eval_every
      and batches.num_rows(valid_rows) < cfg.batch_size):
    raise ValueError(f"the validation split has {batches.num_rows(valid_rows)} rows, fewer than "
                     f"batch_size={cfg.batch_size}; add validation text, lower the batch "
                     "size, or pass --train.eval_every=0")
  workdir = files.check_writable_folder(workdir, "workdir")
  record = run_record(model_cfg, cfg, train_stream, mask_id, tokenizer)
  if init_from is not None:
    record["init_from"] = str(pathlib.Path(init_from).absolute())
  if cfg.objective.model_class is NoisyClassifier and not isinstance(train_stream.rows, dict):
    raise ValueError(f"objective {cfg.objective.name!r} needs labelled rows ({{'tokens', "
                     "'labels'}}), got unlabelled ones (remdm-train: add --data.label=qed or "
                     "--data.label=rings)")
  with locks.hold(workdir, "workdir", primary=distributed.is_primary()):
    return _train_in(workdir, record, model_cfg, cfg, train_stream, valid_rows, mask_id,
                     stop_at=stop_at, progress=progress, tokenizer=tokenizer,
                     init_from=init_from)


def _write_metric(log, path: pathlib.Path, entry: dict) -> None:
  """Appends one line to `metrics.jsonl`; a failed write names the file."""
  try:
    log.write(json.dumps(entry) + "\n")
    log.flush()
  except OSError as err:
    raise OSError(err.errno, f"cannot write the metrics ({err.strerror or err})",
                  str(path)) from None


def _initial_weights(state: dict, model_cfg, folder) -> dict:
  """`state` with its parameters and EMA set to the weights of the model in `folder`.

  Raises:
    ValueError: the folder's model has another config or other parameter shapes.
  """
  loaded = families.for_folder(folder).load(pathlib.Path(folder))
  if loaded.cfg != model_cfg:
    raise ValueError(f"init_from: {folder} holds a model of another config than the run's; "
                     f"pass its config ({type(loaded.cfg).__name__} of the folder)")
  params = nnx.state(loaded, nnx.Param)
  shardings = jax.tree.map(lambda a: a.sharding, state["params"])
  params = jax.device_put(jax.tree.map(lambda p, s: p.astype(s.dtype), params,
                                       state["params"]), shardings)
  return {**state, "params": params, "ema": jax.tree.map(jnp.copy, params)}


def _train_in(workdir: pathlib.Path, record: dict, model_cfg, cfg: TrainConfig,
              train_stream, valid_rows, mask_id: int, *, stop_at, progress, tokenizer,
              init_from) -> dict:
  """The body of `train`, run while this run holds the workdir's lock."""
  from tqdm import tqdm
  run, state = build_run(model_cfg, cfg, mask_id)
  checkpoints = Checkpoints(workdir / "checkpoints", resume_identity(record))
  restored = checkpoints.restore_latest(state)
  if restored is not None:
    state = jax.device_put(restored, jax.tree.map(lambda a: a.sharding, state))
  elif init_from is not None:
    state = _initial_weights(state, model_cfg, init_from)
  start = int(state["step"])
  primary = distributed.is_primary()
  metrics_path = workdir / "metrics.jsonl"
  if primary:
    _truncate_metrics(metrics_path, start)
    files.write_atomic(workdir / "config.json", json.dumps(record, indent=2) + "\n")
  last = min(cfg.steps, stop_at or cfg.steps)
  bar = tqdm(total=cfg.steps, initial=start, disable=not (progress and primary), desc="train")
  try:
    with (_stop_on_signals() as stop,
          metrics_path.open("a") if primary else open(os.devnull, "w") as log):
      for step in range(start, last):
        batch = jax.device_put(train_stream.batch(step), run.data_sharding)
        state, metrics = run.train_step(state, batch)
        done = step + 1
        if not bool(metrics.pop("finite")):
          if checkpoints.manager.latest_step() != step:
            checkpoints.save(state)
          raise _diverged(metrics, done, workdir)
        if done % cfg.log_every == 0 or done == last:
          entry = {"step": done, **{k: float(v) for k, v in metrics.items()}}
          if valid_rows is not None and cfg.eval_every and done % cfg.eval_every == 0:
            entry["valid_nelbo"] = held_out_loss(
                lambda batch, key: run.eval_loss(
                    state["ema"], jax.device_put(batch, run.data_sharding), key),
                valid_rows, cfg.batch_size, seed=cfg.seed + 1, max_batches=cfg.eval_batches)
            entry["valid_ppl_bound"] = float(np.exp(entry["valid_nelbo"]))
          _write_metric(log, metrics_path, entry)
          bar.set_postfix(loss=f"{entry['loss']:.3f}")
        bar.update(1)
        # every process stops together
        stopping = distributed.any_process(stop.signum is not None)
        if done % cfg.save_every == 0 or done == last or stopping:
          checkpoints.save(state)
        if stopping:
          name = signal.Signals(stop.signum or signal.SIGTERM).name
          raise Stopped(f"stopped by {name} after step {done} of {cfg.steps}; the checkpoint "
                        f"is saved in {workdir / 'checkpoints'}; rerun the same command to "
                        "resume", stop.signum or signal.SIGTERM)
  finally:
    bar.close()
  if int(state["step"]) == cfg.steps:
    _export(run, state, workdir, tokenizer)
  return state
