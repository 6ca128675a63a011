"""Throughput benchmark: train and inference steps of each stage, plus references.

For each stage in `config.benchmark.stages`, batch size and dtype: images/s of
the jitted, donated train step under the global mesh and of the inference
forward pass, compile time, XLA's FLOP count and the model FLOPs utilisation
(MFU) where the device's peak is known, the train step's memory from XLA's
buffer assignment (every backend) and the device's running peak where the
backend reports it. The grid is stages x dtypes x remat x grad_accum x batch
sizes. References measured in the same run: the same train step
as a plain unsharded single-device jit (ratio = sharded / plain), the stacked
H-hypothesis step per hypothesis vs a one-hypothesis step, the rasterizer vs
OpenCV, and the input pipeline. Prints one JSON line and a table, and writes
`<workdir>/benchmark/benchmark.json`.
"""

from __future__ import annotations

import copy
import json
import os
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from deepskeleton_jax.training import train_step
from deepskeleton_jax import files
from deepskeleton_jax.experiment import config_lib
from deepskeleton_jax.experiment import parallel
from deepskeleton_jax.geometry import skeleton
from deepskeleton_jax.experiment import stages as stages_lib
from deepskeleton_jax.models import hypotheses

# Dense peak FLOP/s per device for MFU (bfloat16 / float32-via-TF32 tensor cores).
PEAK_FLOPS = {
    'H100': {'bfloat16': 989e12, 'float32': 495e12},
    'H200': {'bfloat16': 989e12, 'float32': 495e12},
    'A100': {'bfloat16': 312e12, 'float32': 156e12},
    'TPU v4': {'bfloat16': 275e12, 'float32': 275e12},
    'TPU v5 lite': {'bfloat16': 197e12, 'float32': 197e12},
    'TPU v5p': {'bfloat16': 459e12, 'float32': 459e12},
}


def synthetic_batch(config: ml_collections.ConfigDict, batch_size: int,
                    seed: int = 0) -> dict[str, np.ndarray]:
  """A random batch in the input pipeline's format (no I/O)."""
  rng = np.random.default_rng(seed)
  s, c, k = config.data.input_size, len(config.data.crop_scales), skeleton.NUM_JOINTS
  joints_3d = rng.normal(0, 300, (batch_size, k, 3)).astype(np.float32)
  joints_3d[..., 2] += 4000
  return {
      'image': rng.integers(0, 256, (batch_size, c, s, s, 3), dtype=np.uint8),
      'joints_2d': rng.uniform(0.1 * s, 0.9 * s, (batch_size, c, k, 2)).astype(np.float32),
      'visible': np.ones((batch_size, k), bool),
      'joints_3d': joints_3d,
      'has_3d': np.ones((batch_size,), bool),
      'intrinsics': np.tile(np.array([s, s, s / 2, s / 2], np.float32), (batch_size, c, 1)),
      'has_intrinsics': np.ones((batch_size,), bool),
      'head_size': np.full((batch_size, c), s / 8, np.float32),
  }


def _peak_flops(dtype: str) -> float | None:
  kind = jax.devices()[0].device_kind
  for name, peaks in PEAK_FLOPS.items():
    if name.lower() in kind.lower():
      return peaks[dtype]
  return None


def _device_peak_memory() -> int | None:
  """The backend's peak bytes in use so far on device 0 (None on CPU)."""
  try:
    stats = jax.local_devices()[0].memory_stats() or {}
  except Exception:  # pylint: disable=broad-except
    return None
  return stats.get('peak_bytes_in_use')


def step_memory_bytes(compiled) -> int | None:
  """XLA's buffer assignment for one device: arguments + outputs + temporaries.

  Donated (aliased) state is counted once. Unlike the backend's running peak
  this is per program, so rows can be compared, and it exists on CPU too.
  """
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes +
             m.temp_size_in_bytes)


def _flops(compiled) -> float | None:
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get('flops')) if cost and cost.get('flops') else None
  except Exception:  # pylint: disable=broad-except
    return None


def _time(fn, steps: int) -> float:
  """Seconds per call, after one warm-up call (results blocked on)."""
  jax.block_until_ready(fn())
  t0 = time.perf_counter()
  out = None
  for _ in range(steps):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / steps


def mfu(flops_per_device_step: float | None, seconds_per_step: float,
        peak_flops_per_device: float | None) -> float | None:
  """Model FLOPs utilisation of one device.

  XLA's cost analysis of an SPMD-partitioned program counts the FLOPs of one
  device's shard (measured: the same step on 8 fake CPU devices at 8x the
  batch reports the 1-device FLOPs), so the FLOPs are divided by one device's
  peak, not by the peak of all devices.

  Args:
    flops_per_device_step: one device's FLOPs per step (`_flops`).
    seconds_per_step: wall time of a step.
    peak_flops_per_device: the device's dense peak (None: unknown, e.g. CPU).

  Returns:
    The utilisation in [0, 1], or None.
  """
  if not flops_per_device_step or not peak_flops_per_device:
    return None
  return flops_per_device_step / seconds_per_step / peak_flops_per_device


def bench_train_step(config, stage_name: str, batch_size: int, steps: int,
                     sharded: bool = True, devices=None) -> dict[str, Any]:
  """Times one stage's train step on a random batch (over `devices`, default all)."""
  stage = stages_lib.build(config, stage_name)
  tcfg = copy.deepcopy(config[stage_name].train)
  with tcfg.unlocked():
    tcfg.batch_size = batch_size
  tx = train_step.make_optimizer(tcfg)
  rng = jax.random.PRNGKey(0)
  norm = {'mean': np.zeros((16, 3), np.float32), 'std': np.float32(300.0)}
  variables = train_step.init_variables(stage, rng)
  aux = None
  if stage.needs:
    aux = train_step.init_variables(stages_lib.build(config, stage.needs), rng)
  batch = synthetic_batch(config, batch_size)
  if sharded:
    mesh = parallel.make_mesh(config.parallel.hyp_axis, devices)
    abstract = jax.eval_shape(lambda v: train_step.create_state(v, tx, norm, rng), variables)
    state_sh = parallel.state_sharding(mesh, abstract)
    state = jax.jit(lambda v: train_step.create_state(v, tx, norm, rng),
                    out_shardings=state_sh)(variables)
    batch = parallel.global_batch(batch, mesh)
    jitted = train_step.jit_train_step(stage, tcfg, mesh, state_sh)
  else:
    device = jax.devices()[0]
    state = jax.device_put(train_step.create_state(variables, tx, norm, rng), device)
    batch = jax.device_put(parallel.numeric_fields(batch), device)
    jitted = jax.jit(train_step.make_train_step(stage, tcfg), donate_argnums=(0,))
  t0 = time.perf_counter()
  compiled = jitted.lower(state, batch, aux).compile()
  compile_s = time.perf_counter() - t0
  holder = {'state': state}

  def run_once():
    holder['state'], metrics = compiled(holder['state'], batch, aux)
    return metrics['loss']

  sec = _time(run_once, steps) if steps else None
  return {'seconds_per_step': sec, 'images_per_s': batch_size / sec if sec else None,
          'compile_s': compile_s, 'flops_per_device_step': _flops(compiled),
          'step_memory_bytes': step_memory_bytes(compiled), 'num_hyps': stage.num_hyps}


def bench_inference(config, stage_name: str, batch_size: int, steps: int) -> dict[str, Any]:
  """Times the eval-mode forward pass of a stage (all hypotheses)."""
  stage = stages_lib.build(config, stage_name)
  rng = jax.random.PRNGKey(0)
  variables = train_step.init_variables(stage, rng)
  aux = None
  if stage.needs:
    aux = train_step.init_variables(stages_lib.build(config, stage.needs), rng)
  norm = {'mean': jnp.zeros((16, 3)), 'std': jnp.float32(300.0)}
  batch = jax.device_put(parallel.numeric_fields(synthetic_batch(config, batch_size)))

  @jax.jit
  def forward(variables, batch):
    inputs, _ = stage.make_inputs(batch, aux, norm)
    return jax.tree_util.tree_leaves(
        hypotheses.apply_stacked(stage.model, variables, inputs, train=False,
                                 hyp_map=stage.hyp_map))[-1]

  t0 = time.perf_counter()
  compiled = forward.lower(variables, batch).compile()
  compile_s = time.perf_counter() - t0
  sec = _time(lambda: compiled(variables, batch), steps)
  return {'images_per_s': batch_size / sec, 'compile_s': compile_s,
          'flops_per_step': _flops(compiled)}


def config_variant(config, stage_name: str, dtype: str, remat: bool, grad_accum: int):
  """The config with the stage's compute dtype, remat and gradient accumulation."""
  cfg = copy.deepcopy(config)
  with cfg.unlocked():
    for group in (stage_name, 'skeleton_net'):  # and the maps a regressor trains on
      if 'dtype' in cfg[group].model:
        cfg[group].model.dtype = dtype
    if 'remat' in cfg[stage_name].model:
      cfg[stage_name].model.remat = remat
    elif remat:
      raise ValueError(f'config.benchmark.remat: stage {stage_name!r} has no remat option')
    cfg[stage_name].train.grad_accum = grad_accum
  return cfg


def _single_hypothesis(config):
  one = copy.deepcopy(config)
  with one.unlocked():
    base = config_lib.hypothesis_list(config)[config.hypotheses.base]
    one.hypotheses.crop_scales = (base[0],)
    one.hypotheses.stick_widths = (base[1],)
    one.hypotheses.base = 0
  return config_lib.finalize(one)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs the benchmark grid and the references; prints and writes results."""
  bcfg = config.benchmark
  device = jax.devices()[0]
  results: dict[str, Any] = {'device': device.device_kind, 'platform': device.platform,
                             'num_devices': jax.device_count(), 'rows': []}
  stage_names = [s.strip() for s in str(bcfg.stages).split(',') if s.strip()]
  grid = [(name, dtype, remat, accum, bs) for name in stage_names for dtype in bcfg.dtypes
          for remat in bcfg.remat for accum in bcfg.grad_accum for bs in bcfg.batch_sizes]
  for i, (name, dtype, remat, accum, bs) in enumerate(grid):
    bs = bs or int(config[name].train.batch_size)  # 0: the stage's own batch size
    logging.info('benchmark %d/%d: %s %s remat=%s grad_accum=%d batch %d', i + 1,
                 len(grid), name, dtype, remat, accum, bs)
    cfg = config_variant(config, name, dtype, bool(remat), int(accum))
    row = {'stage': name, 'dtype': dtype, 'remat': bool(remat), 'grad_accum': int(accum),
           'batch_size': bs}
    tr = bench_train_step(cfg, name, bs, 0 if bcfg.compile_only else bcfg.steps)
    row.update({f'train_{k}': v for k, v in tr.items()})
    if bcfg.compile_only:  # XLA's step memory at this size; nothing runs.
      results['rows'].append(row)
      continue
    row['train_mfu'] = mfu(tr['flops_per_device_step'], tr['seconds_per_step'],
                           _peak_flops(dtype))
    if not remat and accum == 1:  # The references, once per stage, dtype and batch.
      plain = bench_train_step(cfg, name, bs, bcfg.steps, sharded=False)
      row['plain_train_images_per_s'] = plain['images_per_s']
      row['sharded_over_plain'] = tr['images_per_s'] / plain['images_per_s']
      if tr['num_hyps'] > 1:
        one = bench_train_step(_single_hypothesis(cfg), name, bs, bcfg.steps)
        row['one_hyp_train_images_per_s'] = one['images_per_s']
        # >1 means the stacked step trains each hypothesis faster than alone.
        row['stacked_per_hyp_speedup'] = (tr['images_per_s'] * tr['num_hyps'] /
                                          one['images_per_s'])
      inf = bench_inference(cfg, name, bs, bcfg.steps)
      row.update({f'infer_{k}': v for k, v in inf.items()})
    row['device_peak_memory_bytes'] = _device_peak_memory()
    results['rows'].append(row)
  if not bcfg.compile_only:
    from deepskeleton_jax.benchmarks import input_benchmark  # pylint: disable=g-import-not-at-top
    from deepskeleton_jax.benchmarks import rasterize_benchmark  # pylint: disable=g-import-not-at-top
    results['rasterizer'] = rasterize_benchmark.run()
    try:
      results['input_pipeline'] = input_benchmark.run(config.data)
    except FileNotFoundError as e:  # the dataset is not built
      logging.warning('input pipeline benchmark skipped: %s', e)
  line = json.dumps(results, default=float)
  print(line)
  print(format_table(results))
  if jax.process_index() == 0:
    out_dir = os.path.join(workdir, 'benchmark')
    os.makedirs(out_dir, exist_ok=True)
    files.write_text(os.path.join(out_dir, 'benchmark.json'), line + '\n')
  return results


def format_table(results: dict[str, Any]) -> str:
  """A readable Markdown table of the benchmark rows ('-': not measured)."""
  def num(value, fmt='.1f', scale=1.0):
    return '-' if value is None else format(value * scale, fmt)
  head = ('| stage | dtype | remat | accum | batch | H | train img/s | plain img/s | '
          'sharded/plain | stacked/1-hyp per hyp | infer img/s | compile s | MFU % | '
          'step MiB | device peak MiB |')
  lines = [f"device: {results['device']} x{results['num_devices']}", head,
           '|' + '---|' * 15]
  for r in results['rows']:
    lines.append(
        f"| {r['stage']} | {r['dtype']} | {'yes' if r['remat'] else 'no'} | "
        f"{r['grad_accum']} | {r['batch_size']} | {r['train_num_hyps']} | "
        f"{num(r['train_images_per_s'])} | {num(r.get('plain_train_images_per_s'))} | "
        f"{num(r.get('sharded_over_plain'), '.2f')} | "
        f"{num(r.get('stacked_per_hyp_speedup'), '.2f')} | "
        f"{num(r.get('infer_images_per_s'))} | {num(r['train_compile_s'])} | "
        f"{num(r.get('train_mfu'), '.1f', 100)} | "
        f"{num(r['train_step_memory_bytes'], '.0f', 2**-20)} | "
        f"{num(r.get('device_peak_memory_bytes'), '.0f', 2**-20)} |")
  if 'rasterizer' in results:
    lines.append(f"rasterizer: {json.dumps(results['rasterizer'], default=float)}")
  if 'input_pipeline' in results:
    lines.append(f"input pipeline: {json.dumps(results['input_pipeline'], default=float)}")
  return '\n'.join(lines)
