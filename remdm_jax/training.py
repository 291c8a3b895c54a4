"""Training masked diffusion (MDLM / ReMDM NELBO) and autoregressive models.

One jitted train step (AdamW with warm-up, gradient clipping, EMA of the weights) over a
`("data", "model")` mesh: the batch is split on "data"; parameters, optimizer moments and EMA
are replicated, or split on "model" by the tensor-parallel rules of `remdm_jax.sharding`
(`model_axis > 1`); XLA inserts the collectives. Randomness is `fold_in(key(seed), step)` and batch `k` is a pure
function of `(seed, k)`, so a run resumed from an orbax checkpoint continues exactly as if
never interrupted. SIGTERM saves and exits; SIGKILL loses at most `save_every` steps.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from remdm_jax import distributed, losses
from remdm_jax.checkpoint import save_model
from remdm_jax.models.dit import DiT, DiTConfig
from remdm_jax.schedules import LogLinear
from remdm_jax.sharding import param_shardings

OBJECTIVES = ("mdlm", "remdm", "ar")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Optimisation and objective; defaults suit a small model on CPU."""

  objective: str = "mdlm"       # mdlm | remdm (eq. 9) | ar (needs a causal model)
  discrete_steps: int = 0       # T of the discrete NELBO; 0 = continuous time (mdlm only)
  sigma_rule: str = "cap"       # remdm: cap (the paper's ablation) or rescale
  eta: float = 0.0              # remdm: eta_cap or eta_rescale
  eps: float = 1e-3             # log-linear schedule: alpha(1) = eps, t drawn from [eps, 1]
  learning_rate: float = 3e-4   # AdamW peak rate, reached after warm-up
  warmup_steps: int = 100       # linear warm-up from 0
  weight_decay: float = 0.0     # AdamW decoupled weight decay
  grad_clip: float = 1.0        # global-norm clipping
  ema_decay: float = 0.999      # EMA of the weights, used for evaluation and export
  batch_size: int = 32          # global batch, split over the "data" devices
  model_axis: int = 1           # devices sharing each parameter shard ("model" mesh axis)
  steps: int = 1_000            # total optimizer steps
  eval_every: int = 200         # validation NELBO period (steps); 0 disables it
  eval_batches: int = 4         # validation batches per evaluation
  save_every: int = 200         # checkpoint period (steps)
  log_every: int = 10           # metrics.jsonl period (steps)
  seed: int = 0                 # parameters, data order and noise all derive from it

  def __post_init__(self):
    if self.objective not in OBJECTIVES:
      raise ValueError(f"unknown objective {self.objective!r}; choose from {list(OBJECTIVES)}")
    if self.objective == "remdm" and self.discrete_steps < 1:
      raise ValueError("objective 'remdm' needs discrete_steps >= 1 (eq. 9 is discrete), "
                       f"got {self.discrete_steps}")
    if self.sigma_rule not in ("cap", "rescale"):
      raise ValueError(f"unknown sigma_rule {self.sigma_rule!r}; choose from ['cap', 'rescale']")
    high = 1.0 if self.sigma_rule == "rescale" else float("inf")
    if not 0.0 <= self.eta <= high:
      raise ValueError(f"eta must be in [0, {high}] for sigma_rule {self.sigma_rule!r}, "
                       f"got {self.eta}")
    for name in ("batch_size", "steps", "save_every", "log_every", "model_axis"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    if not 0.0 < self.eps < 1.0:
      raise ValueError(f"eps must be in (0, 1), got {self.eps}")
    if not 0.0 <= self.ema_decay < 1.0:
      raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
  warmup = optax.linear_schedule(0.0, cfg.learning_rate, max(cfg.warmup_steps, 1))
  rate = optax.join_schedules([warmup, optax.constant_schedule(cfg.learning_rate)],
                              [cfg.warmup_steps])
  return optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                     optax.adamw(rate, weight_decay=cfg.weight_decay))


def objective_loss(model: DiT, batch: jax.Array, key: jax.Array, cfg: TrainConfig,
                   mask_id: int, train: bool) -> jax.Array:
  """The configured loss of one batch `[B, L] int32`, in nats per token; `[] float32`."""
  key_time, key_mask, key_drop = jax.random.split(key, 3)
  rngs = nnx.Rngs(dropout=key_drop) if train else None
  batch_size = batch.shape[0]
  if cfg.objective == "ar":
    logits = model(batch, jnp.zeros((batch_size,), jnp.float32), rngs=rngs)
    return losses.autoregressive_nll(logits, batch)
  schedule = LogLinear(eps=cfg.eps)
  if cfg.discrete_steps == 0:
    t = losses.continuous_times(key_time, batch_size, cfg.eps)
    weight = losses.mdlm_continuous_weight(schedule, t)
  else:
    rule = cfg.sigma_rule if cfg.objective == "remdm" else "mdlm"
    step = losses.discrete_steps(key_time, batch_size, cfg.discrete_steps)
    weight, t = losses.remdm_discrete_weight(schedule, step, cfg.discrete_steps, rule, cfg.eta)
  alpha_t = schedule.alpha(t)
  z_t = losses.corrupt(key_mask, batch, alpha_t, mask_id)
  logits = model(z_t, -jnp.log(alpha_t), rngs=rngs)
  return losses.nelbo(logits, batch, z_t, weight, mask_id)


@dataclasses.dataclass
class Run:
  """A model's static graph and the jitted functions of one training run."""

  graphdef: nnx.GraphDef
  rest: nnx.State
  train_step: callable
  eval_loss: callable
  data_sharding: NamedSharding


def build_run(model_cfg: DiTConfig, cfg: TrainConfig, mask_id: int,
              mesh: Mesh | None = None) -> tuple[Run, dict]:
  """Initial training state `{params, opt_state, ema, step}` and the jitted step functions."""
  if (cfg.objective == "ar") != model_cfg.causal:
    raise ValueError(f"objective {cfg.objective!r} needs model causal="
                     f"{cfg.objective == 'ar'}, got causal={model_cfg.causal}")
  mesh = mesh or distributed.make_mesh(cfg.model_axis)
  replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  model = DiT(model_cfg, rngs=nnx.Rngs(cfg.seed))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = make_optimizer(cfg)
  state = {"params": params, "opt_state": tx.init(params), "ema": jax.tree.map(jnp.copy, params),
           "step": jnp.zeros((), jnp.int32)}
  placement = param_shardings(state, mesh)   # parameter-shaped leaves follow the DiT rules
  state = jax.device_put(state, placement)
  base_key = jax.random.key(cfg.seed)

  def loss_of(params, batch, key, train):
    return objective_loss(nnx.merge(graphdef, params, rest), batch, key, cfg, mask_id, train)

  def train_step(state, batch):
    key = jax.random.fold_in(base_key, state["step"])
    loss, grads = jax.value_and_grad(loss_of)(state["params"], batch, key, True)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    ema = jax.tree.map(lambda e, p: cfg.ema_decay * e + (1.0 - cfg.ema_decay) * p,
                       state["ema"], params)
    new = {"params": params, "opt_state": opt_state, "ema": ema, "step": state["step"] + 1}
    return new, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

  def eval_loss(params, batch, index):
    return loss_of(params, batch, jax.random.fold_in(jax.random.key(cfg.seed + 1), index),
                   False)

  run = Run(graphdef=graphdef, rest=rest, data_sharding=data,
            train_step=jax.jit(train_step, in_shardings=(placement, data),
                               out_shardings=(placement, replicated), donate_argnums=0),
            eval_loss=jax.jit(eval_loss, in_shardings=(placement["ema"], data, None)))
  return run, state


class Checkpoints:
  """orbax `CheckpointManager` over the training state plus a JSON record of the config.

  orbax writes each step to a temporary folder and renames it when complete, so an
  interrupted save never damages the last good checkpoint.
  """

  def __init__(self, directory, config_record: dict, max_to_keep: int = 2):
    self.record = config_record
    self.manager = ocp.CheckpointManager(
        pathlib.Path(directory).absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             enable_async_checkpointing=False))

  def save(self, state: dict) -> None:
    step = int(state["step"])
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(
            {"config": self.record, "data_position": step})), force=True)
    self.manager.wait_until_finished()

  def restore_latest(self, state: dict) -> dict | None:
    step = self.manager.latest_step()
    if step is None:
      return None
    meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    if meta["meta"]["config"] != self.record:
      changed = sorted(k for k in set(self.record) | set(meta["meta"]["config"])
                       if self.record.get(k) != meta["meta"]["config"].get(k))
      raise ValueError(f"the checkpoint in {self.manager.directory} was written for a "
                       f"different config (differs in {changed}); use another workdir")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))
    return restored["state"]


class _StopOnSigterm:
  """Turns SIGTERM into a flag checked between steps (the loop then saves and exits)."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def _truncate_metrics(path: pathlib.Path, step: int) -> None:
  """Drops metric lines past `step` (written after the checkpoint we resume from)."""
  if path.exists():
    lines = [l for l in path.read_text().splitlines() if json.loads(l)["step"] <= step]
    path.write_text("".join(l + "\n" for l in lines))


def train(model_cfg: DiTConfig, cfg: TrainConfig, train_stream, valid_rows: np.ndarray | None,
          mask_id: int, workdir, *, record: dict, stop_at: int | None = None,
          progress: bool = True, tokenizer: str | None = None) -> dict:
  """Trains (or resumes) in `workdir`; returns the final state.

  Args:
    train_stream: a `data.BatchStream` (batch k is a pure function of k).
    valid_rows: `[N, L] int32` held-out rows for the validation NELBO, or None.
    record: the JSON-able resolved config stored with every checkpoint; resuming with a
      different one is an error.
    stop_at: stop (and save) after this step, as if interrupted; for tests and time limits.
    tokenizer: recorded with the exported model (`WORKDIR/model`).
  """
  from tqdm import tqdm
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  run, state = build_run(model_cfg, cfg, mask_id)
  checkpoints = Checkpoints(workdir / "checkpoints", record)
  restored = checkpoints.restore_latest(state)
  if restored is not None:
    state = jax.device_put(restored, jax.tree.map(lambda a: a.sharding, state))
  start = int(state["step"])
  primary = distributed.is_primary()
  metrics_path = workdir / "metrics.jsonl"
  if primary:
    _truncate_metrics(metrics_path, start)
    (workdir / "config.json").write_text(json.dumps(record, indent=2) + "\n")
  stop, last = _StopOnSigterm(), min(cfg.steps, stop_at or cfg.steps)
  bar = tqdm(total=cfg.steps, initial=start, disable=not (progress and primary), desc="train")
  try:
    with metrics_path.open("a") if primary else open(os.devnull, "w") as log:
      for step in range(start, last):
        batch = jax.device_put(train_stream.batch(step), run.data_sharding)
        state, metrics = run.train_step(state, batch)
        done = step + 1
        if done % cfg.log_every == 0 or done == last:
          entry = {"step": done, **{k: float(v) for k, v in metrics.items()}}
          if valid_rows is not None and cfg.eval_every and done % cfg.eval_every == 0:
            entry["valid_nelbo"] = evaluate(run, state["ema"], valid_rows, cfg)
            entry["valid_ppl_bound"] = float(np.exp(entry["valid_nelbo"]))
          log.write(json.dumps(entry) + "\n")
          log.flush()
          bar.set_postfix(loss=f"{entry['loss']:.3f}")
        bar.update(1)
        stopping = distributed.any_process(stop.requested)  # every process stops together
        if done % cfg.save_every == 0 or done == last or stopping:
          checkpoints.save(state)
        if stopping:
          break
  finally:
    bar.close()
    stop.restore()
  if int(state["step"]) == cfg.steps:
    export = workdir / "model"
    if not distributed.any_process(export.exists()):  # a collective: all decide together
      save_model(nnx.merge(run.graphdef, state["ema"], run.rest), export, tokenizer)
  return state


def evaluate(run: Run, params, rows: np.ndarray, cfg: TrainConfig) -> float:
  """Mean validation loss (nats per token) over `cfg.eval_batches` fixed batches."""
  count = min(cfg.eval_batches, max(len(rows) // cfg.batch_size, 1))
  values = []
  for j in range(count):
    batch = rows[j * cfg.batch_size:(j + 1) * cfg.batch_size]
    if len(batch) < cfg.batch_size:
      break
    values.append(float(run.eval_loss(params, jax.device_put(batch, run.data_sharding), j)))
  return float(np.mean(values))


def held_out_loss(model: DiT, rows: np.ndarray, cfg: TrainConfig, mask_id: int,
                  batch_size: int, draws: int = 1) -> float:
  """Mean `cfg` loss (nats per position) of a model over all full batches of `rows`, with
  `draws` independent noise draws per row (seeded, so every model sees the same noise)."""
  loss = jax.jit(lambda batch, key: objective_loss(model, batch, key, cfg, mask_id, False))
  values = []
  for draw in range(draws):
    for j in range(len(rows) // batch_size):
      key = jax.random.fold_in(jax.random.key(10_000 + draw), j)
      values.append(float(loss(rows[j * batch_size:(j + 1) * batch_size], key)))
  return float(np.mean(values))
