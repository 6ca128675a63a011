r"""One JAX process of a multi-process CPU run, launched by multihost_test.py.

Each process joins a `jax.distributed` cluster over gloo on 127.0.0.1, sees
every process's fake CPU devices in one global mesh, and trains a tiny stage
for a few steps on fixed synthetic global batches (each process feeding its
share of the rows: its `parallel.data_shard`); process 0 writes the gathered final parameters and the
losses to <out>/params.npz. `run_steps` is also the single-process reference.

  XLA_FLAGS=--xla_force_host_platform_device_count=2 JAX_PLATFORMS=cpu \
  python tests/multihost_worker.py --port=12345 --num_processes=2 \
      --process_id=0 --out=/tmp/mh
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time
import traceback
from typing import Any, Callable

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]

# pylint: disable=g-import-not-at-top,wrong-import-position
from configs import tiny
from deepskeleton_jax.training import benchmark as train_benchmark
from deepskeleton_jax.training import train_step
from deepskeleton_jax.experiment import config_lib
from deepskeleton_jax.experiment import parallel
from deepskeleton_jax.experiment import stages as stages_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

GLOBAL_BATCH = 8
BATCH_SEED = 100  # synthetic batch of step i uses seed BATCH_SEED + i


def tiny_config(data_dir: str = '') -> ml_collections.ConfigDict:
  """configs/tiny.py, finalised, with an optional data_dir."""
  config = tiny.get_config()
  if data_dir:
    config.data.data_dir = data_dir
  return config_lib.finalize(config)


def sgd(config: ml_collections.ConfigDict, stage_name: str) -> ml_collections.ConfigDict:
  """Plain SGD with momentum for `stage_name` (tiny.py trains with Adam).

  Adam divides each gradient by its own magnitude, which turns float noise
  in near-zero gradients into update-sized differences; with SGD, runs that
  differ only in reduction order agree to float precision.
  """
  with config.unlocked():
    config[stage_name].train.update(optimizer='sgd', learning_rate=0.05, momentum=0.9)
  return config


def run_steps(config: ml_collections.ConfigDict, stage_name: str, mesh: jax.sharding.Mesh,
              num_steps: int, barrier: Callable[[], None] | None = None,
              ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[float]]:
  """Trains `stage_name` for `num_steps` on fixed synthetic global batches.

  The state is created and sharded as `train_loop.train_stage` does; each process
  passes rows [p b, (p + 1) b) of every global batch to `parallel.global_batch`.

  Args:
    config: finalised config.
    stage_name: the stage to train.
    mesh: the global mesh.
    num_steps: number of steps.
    barrier: called after compiling, before the first multi-device execution.

  Returns:
    {parameter path: value} of the initial and of the final parameters
    (gathered from all processes), and the losses per step.
  """
  stage = stages_lib.build(config, stage_name)
  tcfg = config[stage_name].train
  tx = train_step.make_optimizer(tcfg)
  init_rng, state_rng = train_step.stage_keys(stage_name, tcfg.seed)
  norm = {'mean': np.zeros((16, 3), np.float32), 'std': np.float32(300.0)}
  variables = train_step.init_variables(stage, init_rng)
  abstract = jax.eval_shape(lambda v, r: train_step.create_state(v, tx, norm, r),
                            variables, state_rng)
  sharding = parallel.state_sharding(mesh, abstract)
  local = parallel.local_batch_size(GLOBAL_BATCH, mesh)
  shard = parallel.data_shard(mesh)[0]  # processes sharing data rows feed the same rows
  rows = slice(shard * local, (shard + 1) * local)
  batches = [parallel.global_batch(
      {k: v[rows] for k, v in train_benchmark.synthetic_batch(
          config, GLOBAL_BATCH, seed=BATCH_SEED + i).items()}, mesh)
             for i in range(num_steps)]
  create = jax.jit(lambda v, r: train_step.create_state(v, tx, norm, r),
                   out_shardings=sharding).lower(variables, state_rng).compile()
  abstract = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, sharding)
  step = jax.jit(train_step.make_train_step(stage, tcfg),
                 in_shardings=(sharding, parallel.batch_sharding(mesh),
                               parallel.replicated(mesh)),
                 out_shardings=(sharding, parallel.replicated(mesh)),
                 donate_argnums=(0,)).lower(abstract, batches[0], None).compile()
  if barrier is not None:
    barrier()
  state = create(variables, state_rng)
  losses = []
  for batch in batches:
    state, metrics = step(state, batch, None)
    losses.append(float(metrics['loss']))
  final = multihost_utils.process_allgather(state.params, tiled=True)
  return flatten(variables['params']), flatten(final), losses


def flatten(tree: Any) -> dict[str, np.ndarray]:
  """{path string: numpy value} of a pytree of fully addressable arrays."""
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--port', type=int, required=True)
  parser.add_argument('--num_processes', type=int, default=2)
  parser.add_argument('--process_id', type=int, required=True)
  parser.add_argument('--out', required=True, help='output directory')
  parser.add_argument('--stage', default='regressor')
  parser.add_argument('--num_steps', type=int, default=3)
  parser.add_argument('--hyp_axis', type=int, default=1,
                      help='config.parallel.hyp_axis (devices along the hypothesis axis)')
  parser.add_argument('--compile_delay_s', type=float, default=0.0,
                      help='process 1 sleeps this long before compiling')
  args = parser.parse_args()
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=f'127.0.0.1:{args.port}',
                             num_processes=args.num_processes,
                             process_id=args.process_id, initialization_timeout=60)
  config = sgd(tiny_config(), args.stage)
  config.parallel.hyp_axis = args.hyp_axis
  mesh = parallel.make_mesh(config.parallel.hyp_axis)
  if jax.process_index() == 1:
    time.sleep(args.compile_delay_s)
  _, params, losses = run_steps(config, args.stage, mesh, args.num_steps,
                                barrier=lambda: parallel.barrier('compiled'))
  if jax.process_index() == 0:
    np.savez(os.path.join(args.out, 'params.npz'), losses=np.array(losses), **params)
  jax.distributed.shutdown()


if __name__ == '__main__':
  try:
    main()
  except BaseException:  # pylint: disable=broad-except
    traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)  # Not sys.exit: JAX's exit handler would wait for the peer.
