"""Tests of deepskeleton_jax/training/benchmark.py: memory accounting and MFU (no timings).

The end-to-end benchmark run is in pipeline_test.py.
"""


import jax
import numpy as np

from deepskeleton_jax.training import benchmark as train_benchmark
from deepskeleton_jax.training import train_step
from deepskeleton_jax.experiment import config_lib
from deepskeleton_jax.experiment import parallel
from deepskeleton_jax.experiment import stages as stages_lib

from configs import tiny


def _step_memory(grad_accum: int, batch_size: int = 32) -> int:
  """XLA's memory for the tiny Direct RGB train step at 64 px (compiled only)."""
  config = tiny.get_config()
  config.data.input_size = 64
  config = train_benchmark.config_variant(config_lib.finalize(config), 'direct_rgb', 'float32',
                                    False, grad_accum)
  stage = stages_lib.build(config, 'direct_rgb')
  tcfg = config.direct_rgb.train
  tx = train_step.make_optimizer(tcfg)
  rng = jax.random.PRNGKey(0)
  norm = {'mean': np.zeros((16, 3), np.float32), 'std': np.float32(300.0)}
  variables = jax.eval_shape(lambda r: train_step.init_variables(stage, r), rng)
  state = jax.eval_shape(lambda v: train_step.create_state(v, tx, norm, rng), variables)
  batch = parallel.numeric_fields(train_benchmark.synthetic_batch(config, batch_size))
  compiled = jax.jit(train_step.make_train_step(stage, tcfg), donate_argnums=(0,)).lower(
      state, batch, None).compile()
  return train_benchmark.step_memory_bytes(compiled)


def test_gradient_accumulation_cuts_step_memory():
  """4 micro-batches keep a quarter of the activations alive at a time."""
  whole, micro = _step_memory(1), _step_memory(4)
  assert 0 < micro < 0.6 * whole, (micro, whole)


def test_mfu_does_not_change_with_the_number_of_devices():
  """The same per-device batch on 1 and on 8 devices: same FLOPs per device, same MFU."""
  config = config_lib.finalize(tiny.get_config())
  flops = {}
  for n in (1, 8):
    row = train_benchmark.bench_train_step(config, 'direct_rgb', 4 * n, steps=1,
                                           devices=jax.devices()[:n])
    flops[n] = row['flops_per_device_step']
  assert abs(flops[8] - flops[1]) < 0.02 * flops[1], flops
  seconds, peak = 0.5, 1e12
  one = train_benchmark.mfu(flops[1], seconds, peak)
  assert abs(train_benchmark.mfu(flops[8], seconds, peak) - one) < 0.02 * one
  assert train_benchmark.mfu(flops[1], seconds, None) is None
