"""Devices, meshes and shardings: one global mesh over all processes' devices.

The mesh has two axes: `data` (the batch) and `hyp` (stacked hypotheses;
`config.parallel.hyp_axis` must divide their number). The data axis follows
host boundaries: each process holds whole rows of the mesh, and processes whose
devices share a row of the data axis (the hypothesis axis spans them) load the
same shard of every global batch (`data_shard`), as
`jax.make_array_from_process_local_data` requires of replicas; `global_batch`
assembles the global array. Layouts where a process holds part of another
process's rows are refused.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import time
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from deepskeleton_jax import errors

DATA = 'data'
HYP = 'hyp'

_CLUSTER_ENV = ('SLURM_JOB_ID', 'TPU_WORKER_HOSTNAMES', 'MEGASCALE_COORDINATOR_ADDRESS',
                'JAX_COORDINATOR_ADDRESS', 'OMPI_COMM_WORLD_SIZE')


def maybe_initialize_distributed(parallel: ml_collections.ConfigDict) -> None:
  """Calls `jax.distributed.initialize` when the flags or environment ask for it.

  Args:
    parallel: `config.parallel`. `distributed='yes'` always initialises (with
      the explicit coordinator address / process count / id when given,
      otherwise JAX's cluster auto-detection: SLURM, TPU pods, MPI); 'auto'
      initialises when a cluster environment variable or an explicit
      coordinator is present; 'no' never.
  """
  mode = parallel.distributed
  if mode not in ('auto', 'yes', 'no'):
    raise errors.ConfigError(f"config.parallel.distributed={mode!r}: expected 'auto', 'yes' or 'no'")
  explicit = bool(parallel.coordinator_address)
  if mode == 'no' or (mode == 'auto' and not explicit and
                      not any(k in os.environ for k in _CLUSTER_ENV)):
    return
  if jax.distributed.is_initialized():
    return
  kwargs = {}
  if explicit:
    kwargs = dict(coordinator_address=parallel.coordinator_address,
                  num_processes=int(parallel.num_processes),
                  process_id=int(parallel.process_id))
    # Cross-process CPU collectives (gloo is JAX's default; only affects the CPU
    # backend). Never query the backend here: that initialises it too early.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(heartbeat_timeout_seconds=int(parallel.heartbeat_timeout_s),
                             **kwargs)
  logging.info('jax.distributed: process %d of %d, %d local / %d global devices',
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())


class Preempted(Exception):
  """Raised by training after SIGTERM once the checkpoint is saved (the CLI exits with 0)."""


@contextlib.contextmanager
def fail_fast():
  """In a multi-process run, an exception ends this process at once (exit 1).

  Python's normal exit calls `jax.distributed.shutdown`, which waits up to
  5 minutes for the other processes, and they may be blocked at a barrier or
  collective waiting for this one: both would hang, then abort. Exiting
  instead stops this process's heartbeat, so the others fail within
  `config.parallel.heartbeat_timeout_s` with an error naming it. The
  traceback is logged first. Single-process runs raise as usual.

  Yields:
    Nothing.
  """
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    if not jax.distributed.is_initialized():
      raise
    if isinstance(e, errors.UserError):  # one line, as in a single process
      print(f'error: {e}', file=sys.stderr, flush=True)
      os._exit(2)  # pylint: disable=protected-access
    logging.exception('process %d failed; exiting without waiting for the other '
                      'processes (they stop once its heartbeat times out)',
                      jax.process_index())
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)  # pylint: disable=protected-access


_BARRIER_COUNT = itertools.count()


def barrier(name: str, timeout_s: float = 3600.0) -> None:
  """Blocks until every process reaches this barrier (no-op in one process).

  The wait goes through the `jax.distributed` coordination service, not a
  device collective, so it may be long: gloo's CPU collectives give up after
  30 s without a peer, which a process still compiling (another read the
  program from the persistent cache) easily exceeds.

  Args:
    name: what the processes wait for (in errors); every process must call
      the same barriers in the same order.
    timeout_s: how long to wait for the slowest process.
  """
  if jax.process_count() == 1:
    return
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  key = f'deepskeleton_jax/{next(_BARRIER_COUNT)}/{name}'
  client = distributed.global_state.client  # what Orbax uses for its barriers too
  if client is None:  # multi-process without jax.distributed: a device collective
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(key)
    return
  client.wait_at_barrier(key, timeout_in_ms=int(timeout_s * 1000))


def compile_together(jitted: Any, name: str, *args: Any) -> Any:
  """Compiles `jitted` for `args` ahead of time, then waits for all processes.

  A program with cross-process collectives must not start on one process
  while another is still compiling it (see `barrier`).

  Args:
    jitted: a `jax.jit` function.
    name: names the barrier.
    *args: example arguments (arrays or `jax.ShapeDtypeStruct`s).

  Returns:
    The compiled executable; call it with arguments like `args`.
  """
  t0 = time.monotonic()
  compiled = jitted.lower(*args).compile()
  logging.info('compiled %s in %.1f s', name, time.monotonic() - t0)
  barrier(f'compiled {name}')
  return compiled


def make_mesh(hyp_axis: int = 1, devices=None) -> Mesh:
  """A (data, hyp) mesh over all devices of all processes.

  Args:
    hyp_axis: devices along the hypothesis axis; must divide the device count.
    devices: optional device list (default: all global devices).

  Returns:
    The mesh.

  Raises:
    errors.ConfigError: `hyp_axis` does not divide the device count, or the
      mesh's rows do not follow host boundaries (see `data_shard`).
  """
  devices = list(jax.devices() if devices is None else devices)
  if hyp_axis < 1 or len(devices) % hyp_axis:
    raise errors.ConfigError(f'config.parallel.hyp_axis={hyp_axis} must divide the '
                     f'device count {len(devices)}')
  grid = np.array(devices).reshape(len(devices) // hyp_axis, hyp_axis)
  shard_of_processes(np.vectorize(lambda d: d.process_index)(grid), hyp_axis)
  return Mesh(grid, (DATA, HYP))


def stage_mesh(hyp_axis: int, num_hyps: int, stage_name: str, devices=None) -> Mesh:
  """The mesh a stage trains on.

  Args:
    hyp_axis: `config.parallel.hyp_axis`.
    num_hyps: the stage's stacked hypotheses.
    stage_name: for errors.
    devices: optional device list (default: all global devices).

  Returns:
    `make_mesh(hyp_axis)`; a single-hypothesis stage (nothing to split) puts
    every device on the data axis instead.

  Raises:
    errors.ConfigError: `hyp_axis` does not divide the stage's hypotheses.
  """
  if num_hyps == 1:
    return make_mesh(1, devices)
  if num_hyps % hyp_axis:
    raise errors.ConfigError(
        f'config.parallel.hyp_axis={hyp_axis} must divide the {num_hyps} hypotheses '
        f'of stage {stage_name} (a divisor of {num_hyps}, or 1)')
  return make_mesh(hyp_axis, devices)


def shard_of_processes(process_grid: np.ndarray, hyp_axis: int) -> np.ndarray:
  """Which input shard each process loads, from the process of every mesh device.

  Args:
    process_grid: [data, hyp] the process index of each device of the mesh.
    hyp_axis: for errors.

  Returns:
    [P] for each process p, (its shard, the number of shards): process p holds
    rows [shard k, (shard + 1) k) of the data axis, k rows per process group;
    processes holding the same rows (the hypothesis axis spans them) share a
    shard and must feed identical data.

  Raises:
    errors.ConfigError: some process holds part of another process's rows
      (their devices neither share nor split the data axis cleanly).
  """
  num = int(process_grid.max()) + 1
  rows = [np.flatnonzero((process_grid == p).any(axis=1)) for p in range(num)]
  k = len(rows[0])
  out = np.zeros((num, 2), np.int64)
  for p, r in enumerate(rows):
    clean = len(r) == k and r[0] % k == 0 and np.array_equal(r, np.arange(r[0], r[0] + k))
    owners = np.unique(process_grid[r])
    if not clean or any(not np.array_equal(rows[q], r) for q in owners):
      raise errors.ConfigError(
          f'config.parallel.hyp_axis={hyp_axis} does not follow host boundaries: process '
          f'{p} holds part of the mesh rows {r.tolist()} of processes {owners.tolist()}; '
          'use a hyp_axis that divides the devices per process, or a multiple of them')
    out[p] = (r[0] // k, process_grid.shape[0] // k)
  return out


def data_shard(mesh: Mesh) -> tuple[int, int]:
  """(shard, number of shards) of the input this process loads for `mesh`.

  Use them as the input pipeline's process index and count: with the
  hypothesis axis inside each process they are the process index and count;
  processes that share rows of the data axis share a shard.
  """
  grid = np.vectorize(lambda d: d.process_index)(mesh.devices)
  shard, count = shard_of_processes(grid, mesh.shape[HYP])[jax.process_index()]
  return int(shard), int(count)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over `data`."""
  return NamedSharding(mesh, P(DATA))


def _names(path) -> tuple[str, ...]:
  """A key path as plain names (dict keys, attributes, sequence indices)."""
  out = []
  for k in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(k, attr):
        out.append(str(getattr(k, attr)))
        break
  return tuple(out)


def state_sharding(mesh: Mesh, state: Any) -> Any:
  """Shardings of a `TrainState`, chosen by tree path, not by shape.

  The stacked variables (`params`, `batch_stats`) and the optimizer state's
  leaves that mirror a parameter (momentum, Adam moments: same path suffix and
  shape) carry the hypothesis axis and are split over `hyp` (whose size must
  divide the number of hypotheses); everything else (the step, the rng key,
  the pose normalisation, optimizer counters, plateau scalars) is replicated,
  whatever its shape.

  Args:
    mesh: the (data, hyp) mesh.
    state: a TrainState (arrays or `jax.ShapeDtypeStruct`s).

  Returns:
    A pytree of `NamedSharding`s with the structure of `state`.
  """
  leaves = jax.tree_util.tree_leaves(state.params)
  num_hyps = leaves[0].shape[0] if leaves else 1
  hyp_size = mesh.shape[HYP]
  if num_hyps % hyp_size:
    raise errors.ConfigError(f'config.parallel.hyp_axis={hyp_size} must divide the '
                             f'{num_hyps} stacked hypotheses')
  stacked = NamedSharding(mesh, P(HYP) if hyp_size > 1 else P())
  replicated_ = NamedSharding(mesh, P())
  params = {_names(p): x.shape for p, x in
            jax.tree_util.tree_flatten_with_path(state.params)[0]}

  def mirrors_param(names, shape):
    return any(params.get(names[i:]) == shape for i in range(len(names)))

  def leaf_sharding(path, x):
    names = _names(path)
    if names[0] in ('params', 'batch_stats'):
      return stacked
    if names[0] == 'opt_state' and mirrors_param(names[1:], tuple(x.shape)):
      return stacked
    return replicated_
  return jax.tree_util.tree_map_with_path(leaf_sharding, state)


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """This process's share of a global batch (`data_shard`); checks divisibility by `data`."""
  data_size = mesh.shape[DATA]
  if global_batch_size % data_size:
    raise errors.ConfigError(f'batch size {global_batch_size} must be divisible by the '
                     f'{data_size} devices of the mesh data axis')
  return global_batch_size // data_shard(mesh)[1]


def numeric_fields(batch: dict[str, Any]) -> dict[str, np.ndarray]:
  """Drops string/object fields (ids) that cannot go to a device."""
  return {k: v for k, v in batch.items()
          if isinstance(v, np.ndarray) and v.dtype.kind in 'biuf'}


def global_batch(batch: dict[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles process-local numpy batches (this process's `data_shard`) into global arrays.

  Args:
    batch: this process's shard of every field, [b, ...] each.
    mesh: the mesh.

  Returns:
    The numeric fields as global arrays [b x shards, ...] sharded on `data`.
  """
  sharding = batch_sharding(mesh)
  shards = data_shard(mesh)[1]
  return {k: jax.make_array_from_process_local_data(
              sharding, v, (v.shape[0] * shards,) + v.shape[1:])
          for k, v in numeric_fields(batch).items()}
