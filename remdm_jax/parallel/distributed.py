"""Multi-process runs on JAX's own multi-controller runtime (`jax.distributed`).

Every process runs the same program; the mesh spans all processes' devices and each process
transfers (and writes) only the shards its own devices hold. On one machine, two CPU
processes with four fake devices each stand in for a pod:

  XLA_FLAGS=--xla_force_host_platform_device_count=4 remdm-sample \\
      --dist.coordinator_address=localhost:12345 --dist.num_processes=2 --dist.process_id=0 ...

`initialize` must run before anything else touches JAX (the CLIs call it first).
"""

from __future__ import annotations

import dataclasses
import re
import socket
import sys
import time

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from remdm_jax.validation import check_choice, check_fields, check_range, option

CPU_COLLECTIVES = ("gloo", "mpi")


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
  """`jax.distributed.initialize` settings (`--dist.*`); the defaults mean one process."""

  coordinator_address: str = option("", 'host:port of process 0; "" with auto=false: one '
                                        "process")
  num_processes: int = option(0, "total processes (with coordinator_address)")
  process_id: int = option(-1, "this process, in [0, num_processes)")
  auto: bool = option(False, "let JAX detect the cluster (Cloud TPU, SLURM, Open MPI)")
  cpu_collectives: str = option("gloo", "cross-process collectives for CPU devices: gloo | mpi")
  timeout: int = option(300, "seconds to wait for every process to join, then give up")

  def __post_init__(self):
    check_fields(self)
    check_choice("cpu_collectives", self.cpu_collectives, CPU_COLLECTIVES)
    check_range("timeout", self.timeout, 1)
    if self.auto and self.coordinator_address:
      raise ValueError("pass either auto=true or coordinator_address, not both")
    if self.coordinator_address:
      if not re.fullmatch(r"[^\s:]+:\d+", self.coordinator_address):
        raise ValueError(f"coordinator_address must be HOST:PORT, got "
                         f"{self.coordinator_address!r}")
      check_range("num_processes", self.num_processes, 1,
                  context=" with a coordinator_address")
      check_range("process_id", self.process_id, 0, self.num_processes - 1)
    elif self.num_processes or self.process_id != -1:
      raise ValueError("num_processes and process_id need coordinator_address=HOST:PORT "
                       "(or auto=true without them)")

  @property
  def enabled(self) -> bool:
    return self.auto or bool(self.coordinator_address)


def _wait_for_coordinator(address: str, timeout: float) -> float:
  """Waits until `host:port` accepts a connection; returns the seconds left of `timeout`.

  A process other than the coordinator would otherwise be aborted from inside the runtime
  (no Python exception) when the coordinator never comes up.
  """
  host, port = address.rsplit(":", 1)
  deadline = time.monotonic() + timeout
  while True:
    try:
      socket.create_connection((host, int(port)), timeout=1.0).close()
      return max(deadline - time.monotonic(), 1.0)
    except OSError as err:
      if time.monotonic() >= deadline:
        raise ValueError(f"no coordinator answered at {address} within {timeout:g} s "
                         f"({err.strerror or err}); start process 0 there, or raise "
                         "--dist.timeout") from None
      time.sleep(0.5)


def initialize(cfg: DistributedConfig) -> None:
  """Joins the process group described by `cfg` (nothing to do for a single process).

  Says on stderr what it waits for; gives up after `cfg.timeout` seconds.
  """
  if not cfg.enabled:
    return
  jax.config.update("jax_cpu_collectives_implementation", cfg.cpu_collectives)
  where = "the cluster's coordinator" if cfg.auto else cfg.coordinator_address
  print(f"waiting up to {cfg.timeout} s for {where} and every process to join "
        "(--dist.timeout)", file=sys.stderr, flush=True)
  if cfg.auto:
    jax.distributed.initialize(initialization_timeout=cfg.timeout)
    return
  left = cfg.timeout
  if cfg.process_id != 0:
    left = _wait_for_coordinator(cfg.coordinator_address, cfg.timeout)
  jax.distributed.initialize(cfg.coordinator_address, num_processes=cfg.num_processes,
                             process_id=cfg.process_id, initialization_timeout=int(left))


def make_mesh(model_axis: int = 1) -> Mesh:
  """A `("data", "model")` mesh over every device of every process.

  `model_axis` devices share each parameter shard group (see
  `remdm_jax.parallel.sharding`); the rest split the batch.
  """
  count = jax.device_count()
  if model_axis < 1 or count % model_axis:
    raise ValueError(f"model_axis must be >= 1 and divide the device count {count}, got "
                     f"{model_axis}")
  return jax.make_mesh((count // model_axis, model_axis), ("data", "model"),
                       axis_types=(AxisType.Auto, AxisType.Auto))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over "data", replicated over "model"."""
  return NamedSharding(mesh, P("data"))


def put_global(host_array: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global array from a host array every process holds in full; each process transfers
  only the slices its own devices hold."""
  return jax.make_array_from_callback(host_array.shape, sharding,
                                      lambda index: host_array[index])


def _span(rows: slice, length: int) -> tuple[int, int]:
  return (rows.start or 0, length if rows.stop is None else rows.stop)


def local_row_ranges(sharding: jax.sharding.Sharding, shape: tuple[int, ...]
                     ) -> list[tuple[int, int]]:
  """The `[first, stop)` rows of a `shape` array under `sharding` that this process's devices
  hold, merged into contiguous ranges (replicas along other mesh axes counted once)."""
  spans = sorted({_span(index[0], shape[0]) if index else (0, shape[0])
                  for index in sharding.addressable_devices_indices_map(shape).values()})
  merged = []
  for first, stop in spans:
    if merged and merged[-1][1] == first:
      merged[-1] = (merged[-1][0], stop)
    else:
      merged.append((first, stop))
  return merged


def local_row_blocks(array: jax.Array) -> list[tuple[int, np.ndarray]]:
  """This process's rows of a batch-sharded `[B, ...]` array as `(first row, block)` pairs,
  one per range of `local_row_ranges`."""
  pieces = {}
  for shard in array.addressable_shards:
    first = _span(shard.index[0], array.shape[0])[0] if shard.index else 0
    pieces.setdefault(first, shard.data)
  return [(first, np.concatenate([np.asarray(pieces[s]) for s in sorted(pieces)
                                  if first <= s < stop]))
          for first, stop in local_row_ranges(array.sharding, array.shape)]


def all_processes(flag: bool) -> bool:
  """True when `flag` is true in every process (a collective: all must call it)."""
  if jax.process_count() == 1:
    return flag
  return bool(np.all(multihost_utils.process_allgather(np.array([flag]))))


def any_process(flag: bool) -> bool:
  """True when `flag` is true in some process (a collective: all must call it)."""
  return not all_processes(not flag)


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name` (nothing to do for one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def is_primary() -> bool:
  """Process 0 writes the files every process would otherwise write identically."""
  return jax.process_index() == 0
