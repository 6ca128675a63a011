r"""One command for an accelerator's table: train steps, rasterizer, input pipeline.

  python -m benchmarks.device_check [--out=device_check.json] [--budget_s=450]

On a GPU or TPU (the full grid; at most about 8 minutes on one chip) it
measures the paper's full-size train steps, SkeletonMapNet
(configs/h36m_skeleton_net.py) and the PoseRegressor on maps rendered from the
labels (configs/h36m_regressor.py:gt), each with its 11 stacked hypotheses, the
paper's batch (12 and 32) and 224-px input, in bfloat16 and float32, with the
hypotheses run by `vmap` and by `loop` (`config.parallel.hyp_map`): images/s,
compile time, XLA's FLOPs per step and the MFU, XLA's step memory and the
device's peak memory. Then the rasterizer per hypothesis
(`benchmarks/rasterize_benchmark.py`, at the map size) and the input pipeline
in images/s per CPU core (`benchmarks/input_benchmark.py`, on a small synthetic
set stored at the Human3.6M crop size, built in a temporary folder). On CPU
the same grid runs at tiny shapes (configs/tiny.py, 2 hypotheses) in under 2
minutes, which is what tests/device_check_test.py runs.

Every train row runs on one device with `training/benchmark.py`'s
`bench_train_step`. On an accelerator each row runs in a process of its own
(`--isolate`), so its peak memory is its own and an out-of-memory row or a slow
compile cannot take the others down. The rows run most important first (`vmap`
before `loop`, bfloat16 before float32); those that `--budget_s` leaves no time
for are reported as skipped. Compiled programs go to the persistent cache in
~/.cache/deepskeleton_jax/jax_cache, so a rerun compiles less.

Prints a Markdown table headed by the device's name and writes the results as
JSON (`--out`). Timings are measurements, never pass or fail.
"""

from __future__ import annotations

import copy
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Any

from absl import app
from absl import flags
import jax
import ml_collections

from deepskeleton_jax.benchmarks import input_benchmark
from deepskeleton_jax.benchmarks import rasterize_benchmark
from deepskeleton_jax import files
from deepskeleton_jax.configs import h36m_regressor
from deepskeleton_jax.configs import h36m_skeleton_net
from deepskeleton_jax.configs import tiny
from deepskeleton_jax.data import registry
from deepskeleton_jax.experiment import config_lib
from deepskeleton_jax.experiment import stages as stages_lib
from deepskeleton_jax.geometry import rasterize
from deepskeleton_jax.training import benchmark

REPO = pathlib.Path(__file__).resolve().parents[1]
STAGES = ('skeleton_net', 'regressor')
DTYPES = ('bfloat16', 'float32')
HYP_MAPS = ('vmap', 'loop')
# Per grid: timed steps per row, rasterizer batch and repeats, input pipeline
# set size (examples), batch and batches.
GRID_SIZES = {
    'full': {'steps': 20, 'raster_batch': 1024, 'raster_repeats': 10,
             'input_examples': 64, 'input_batch': 32, 'input_batches': 8},
    'reduced': {'steps': 2, 'raster_batch': 64, 'raster_repeats': 3,
                'input_examples': 16, 'input_batch': 8, 'input_batches': 2},
}
MIN_ROW_S = 10.0  # a row needs at least this much of the budget to start
# The table's columns: header, row key, format ('-': not measured).
TRAIN_COLUMNS = (
    ('stage', 'stage', ''), ('H', 'num_hyps', 'd'), ('batch', 'batch_size', 'd'),
    ('px', 'input_size', 'd'), ('dtype', 'dtype', ''), ('hyp_map', 'hyp_map', ''),
    ('train img/s', 'images_per_s', ',.1f'), ('ms/step', 'ms_per_step', ',.1f'),
    ('compile s', 'compile_s', '.1f'), ('TFLOP/step', 'tflop_per_step', '.3g'),
    ('MFU %', 'mfu_percent', '.1f'), ('step MiB (XLA)', 'step_memory_mib', ',.0f'),
    ('peak MiB (device)', 'device_peak_mib', ',.0f'),
    ('input cores to feed', 'input_cores_to_feed', '.2f'), ('status', 'status', ''))


def stage_config(grid: str, stage: str, hyp_map: str = 'auto') -> ml_collections.ConfigDict:
  """The finalised config whose `stage` a row trains.

  Args:
    grid: 'full' (the paper's Human3.6M configs) or 'reduced' (configs/tiny.py
      with one crop scale: 2 hypotheses, 32-px input, width-4 ResNets).
    stage: 'skeleton_net' or 'regressor' (on maps rendered from the labels).
    hyp_map: `config.parallel.hyp_map`.

  Returns:
    The config.
  """
  if grid == 'full':
    config = (h36m_skeleton_net.get_config() if stage == 'skeleton_net'
              else h36m_regressor.get_config('gt'))
  else:
    config = tiny.get_config()
    config.hypotheses.crop_scales = (1.0,)
    config.stages = stage
  config.parallel.hyp_map = hyp_map
  return config_lib.finalize(config)


def row_spec(grid: str, stage: str, dtype: str, hyp_map: str) -> dict[str, Any]:
  """A train row's settings and shapes, known before it runs."""
  config = stage_config(grid, stage, hyp_map)
  return {'stage': stage, 'dtype': dtype, 'hyp_map': hyp_map,
          'num_hyps': stages_lib.layout(config).num_hyps,
          'batch_size': int(config[stage].train.batch_size),
          'input_size': int(config.data.input_size)}


def _mib(num_bytes: int | None) -> float | None:
  return None if num_bytes is None else num_bytes / 2**20


def measure_row(grid: str, stage: str, dtype: str, hyp_map: str, steps: int) -> dict[str, Any]:
  """Times one stage's train step on one device at the config's batch.

  Args:
    grid: 'full' or 'reduced' (`stage_config`).
    stage: the stage to train.
    dtype: the model's compute dtype, 'bfloat16' or 'float32'.
    hyp_map: 'vmap' or 'loop'.
    steps: timed steps (after one warm-up step).

  Returns:
    The row: `row_spec`'s fields and the measurements, status 'ok'.
  """
  row = row_spec(grid, stage, dtype, hyp_map)
  config = benchmark.config_variant(stage_config(grid, stage, hyp_map), stage, dtype,
                                    remat=False, grad_accum=1)
  result = benchmark.bench_train_step(config, stage, row['batch_size'], steps,
                                      devices=jax.devices()[:1])
  seconds, flops = result['seconds_per_step'], result['flops_per_device_step']
  mfu = benchmark.mfu(flops, seconds, benchmark.peak_flops(dtype))
  row.update({
      'images_per_s': result['images_per_s'], 'ms_per_step': 1e3 * seconds,
      'compile_s': result['compile_s'], 'tflop_per_step': flops / 1e12 if flops else None,
      'mfu_percent': None if mfu is None else 100 * mfu,
      'step_memory_mib': _mib(result['step_memory_bytes']),
      'device_peak_mib': _mib(benchmark.device_peak_memory()), 'status': 'ok'})
  return row


def failure_status(message: str) -> str:
  """A failed row's status: out of memory, or the error's last line."""
  if 'RESOURCE_EXHAUSTED' in message or 'out of memory' in message.lower():
    return 'out of memory'
  lines = [line for line in message.strip().splitlines() if line.strip()]
  return 'error: ' + (lines[-1][:200] if lines else 'no message')


def _measure_in_process(spec: dict[str, Any], grid: str, steps: int) -> dict[str, Any]:
  try:
    return measure_row(grid, spec['stage'], spec['dtype'], spec['hyp_map'], steps)
  except jax.errors.JaxRuntimeError as e:  # out of memory and the like
    return dict(spec, status=failure_status(str(e)))


def measure_isolated(spec: dict[str, Any], grid: str, steps: int,
                     timeout_s: float) -> dict[str, Any]:
  """`measure_row` in a fresh process (`--row`); its failure or timeout becomes the status."""
  row = {k: spec[k] for k in ('stage', 'dtype', 'hyp_map')}
  command = [sys.executable, '-m', 'benchmarks.device_check', f'--grid={grid}',
             f'--steps={steps}', '--row=' + json.dumps(row)]
  env = dict(os.environ)
  env['XLA_PYTHON_CLIENT_PREALLOCATE'] = 'true'  # (the parent's is off)
  env.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', '0.9')  # the parent holds a little
  try:
    out = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=timeout_s, check=False)
  except subprocess.TimeoutExpired:
    return dict(spec, status=f'timeout after {timeout_s:.0f} s')
  if out.returncode:
    return dict(spec, status=failure_status(out.stderr))
  return json.loads(out.stdout.strip().splitlines()[-1])


def run_train_rows(grid: str, steps: int, deadline: float, isolate: bool,
                   stages: tuple[str, ...] = STAGES, dtypes: tuple[str, ...] = DTYPES,
                   hyp_maps: tuple[str, ...] = HYP_MAPS) -> list[dict[str, Any]]:
  """The train rows, most important first, until `deadline` (time.monotonic()).

  Args:
    grid: 'full' or 'reduced'.
    steps: timed steps per row.
    deadline: rows that would start later than MIN_ROW_S before it are skipped;
      an isolated row is stopped at it.
    isolate: run each row in a process of its own.
    stages: stages to train.
    dtypes: compute dtypes.
    hyp_maps: ways to run the stacked hypotheses.

  Returns:
    One row per (hyp_map, dtype, stage), in that nesting order.
  """
  rows = []
  for hyp_map in hyp_maps:
    for dtype in dtypes:
      for stage in stages:
        spec = row_spec(grid, stage, dtype, hyp_map)
        left = deadline - time.monotonic()
        if left < MIN_ROW_S:
          rows.append(dict(spec, status='skipped (budget)'))
        elif isolate:
          rows.append(measure_isolated(spec, grid, steps, left))
        else:
          rows.append(_measure_in_process(spec, grid, steps))
  return rows


def measure_rasterizer(grid: str) -> dict[str, Any]:
  """`rasterize_benchmark.run` at the full config's map size and base stick width.

  Returns:
    Its result plus `maps_per_s_per_hypothesis` (fg + bg maps of one pose at
    one hypothesis) and `ms_per_regressor_batch` (the regressor's batch at
    every hypothesis), and the shapes they were measured at.
  """
  config = stage_config(grid, 'regressor')
  lay = stages_lib.layout(config)
  sizes = GRID_SIZES[grid]
  width = rasterize.stick_width_in_map(float(lay.widths[lay.base]), lay.map_size)
  result = rasterize_benchmark.run(sizes['raster_batch'], lay.map_size, width,
                                   sizes['raster_repeats'])
  rate = result['jax_poses_per_s']
  batch = int(config.regressor.train.batch_size)
  result.update({'maps_per_s_per_hypothesis': rate, 'num_hyps': lay.num_hyps,
                 'regressor_batch': batch,
                 'ms_per_regressor_batch': 1e3 * batch * lay.num_hyps / rate})
  return result


def measure_input_pipeline(grid: str) -> dict[str, Any]:
  """`input_benchmark.run` on a synthetic set stored like the grid's dataset.

  The set (a few examples at the config's stored crop size) is built in a
  temporary folder and removed; the crops and input size are the config's.

  Returns:
    input_benchmark's result plus the build's seconds.
  """
  config = stage_config(grid, 'skeleton_net')
  sizes = GRID_SIZES[grid]
  data = copy.deepcopy(config.data)
  with data.unlocked(), tempfile.TemporaryDirectory() as data_dir:
    crop_size = int(registry.to_dict(data.builder_kwargs).get('crop_size', 256))
    data.name, data.data_dir = 'synthetic', data_dir
    data.builder_kwargs = {'num_train': sizes['input_examples'], 'num_test': 2,
                           'num_holdout': 2, 'crop_size': crop_size, 'seed': 0}
    start = time.perf_counter()
    registry.prepare(data)
    build_s = time.perf_counter() - start
    result = input_benchmark.run(data, batch_size=sizes['input_batch'],
                                 num_batches=sizes['input_batches'])
  return dict(result, build_s=build_s, host_cpus=os.cpu_count())


def run(grid: str, steps: int = 0, budget_s: float = 450.0, isolate: bool = False,
        stages: tuple[str, ...] = STAGES, dtypes: tuple[str, ...] = DTYPES,
        hyp_maps: tuple[str, ...] = HYP_MAPS) -> dict[str, Any]:
  """The device check: rasterizer, input pipeline, then the train rows.

  Args:
    grid: 'full' (the paper's sizes, for accelerators) or 'reduced' (tiny).
    steps: timed steps per train row (0: the grid's default).
    budget_s: seconds, from the start, after which no train row starts (an
      isolated row is stopped then).
    isolate: each train row in a process of its own.
    stages: stages to train.
    dtypes: compute dtypes.
    hyp_maps: ways to run the stacked hypotheses.

  Returns:
    JSON-able results: device, settings, `train` rows, `rasterizer`,
    `input_pipeline`.
  """
  start = time.monotonic()
  steps = steps or GRID_SIZES[grid]['steps']
  device = jax.devices()[0]
  results = {'device': device.device_kind, 'platform': device.platform, 'grid': grid,
             'jax_version': jax.__version__, 'steps': steps, 'budget_s': budget_s,
             'isolated_rows': isolate}
  results['rasterizer'] = measure_rasterizer(grid)
  results['input_pipeline'] = measure_input_pipeline(grid)
  per_core = results['input_pipeline']['per_core_images_per_s']
  rows = run_train_rows(grid, steps, start + budget_s, isolate, stages, dtypes, hyp_maps)
  for row in rows:
    if row.get('images_per_s'):
      row['input_cores_to_feed'] = row['images_per_s'] / per_core
  results['train'] = rows
  results['elapsed_s'] = time.monotonic() - start
  return results


def _cell(value: Any, fmt: str) -> str:
  if value is None:
    return '-'
  return format(value, fmt) if fmt else str(value)


def format_table(results: dict[str, Any]) -> str:
  """The results as Markdown: a heading with the device's name, then three tables."""
  grid = {'full': "the paper's sizes", 'reduced': 'tiny shapes'}[results['grid']]
  lines = [f"## {results['device']}", '',
           f"`python -m benchmarks.device_check`: {results['grid']} grid ({grid}), one "
           f"{results['platform']} device, jax {results['jax_version']}, "
           f"{results['steps']} timed steps per row, "
           f"{results['input_pipeline']['host_cpus']} host CPUs, "
           f"{results['elapsed_s']:.0f} s in all.", '',
           '| ' + ' | '.join(c[0] for c in TRAIN_COLUMNS) + ' |',
           '|' + '---|' * len(TRAIN_COLUMNS)]
  lines += ['| ' + ' | '.join(_cell(row.get(key), fmt) for _, key, fmt in TRAIN_COLUMNS) + ' |'
            for row in results['train']]
  r = results['rasterizer']
  lines += ['', f"| rasterizer (fg + bg maps, {r['size']} px, stick {r['stick_width']:.2f} px)"
            ' | value |', '|---|---:|',
            f"| maps/s per hypothesis (batch {r['batch']}) | "
            f"{r['maps_per_s_per_hypothesis']:,.0f} |",
            f"| ms per regressor batch ({r['regressor_batch']} poses x {r['num_hyps']} "
            f"hypotheses) | {r['ms_per_regressor_batch']:.2f} |",
            f"| OpenCV on the host (painter's order), maps/s | {r['opencv_poses_per_s']:,.0f} |",
            f"| pixels on which OpenCV agrees | {100 * r['opencv_agreement']:.1f}% |",
            '', input_benchmark.table(results['input_pipeline'])]
  return '\n'.join(lines)


def main(argv: list[str]) -> None:
  """Runs the check (or, with --row, one isolated train row) and prints it."""
  del argv
  jax.config.update('jax_compilation_cache_dir', os.path.join(
      os.path.expanduser('~'), '.cache', 'deepskeleton_jax', 'jax_cache'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  grid = FLAGS.grid
  if grid == 'auto':
    grid = 'reduced' if jax.default_backend() == 'cpu' else 'full'
  if FLAGS.row:  # the child of an isolated row
    spec = json.loads(FLAGS.row)
    print(json.dumps(measure_row(grid, spec['stage'], spec['dtype'], spec['hyp_map'],
                                 FLAGS.steps or GRID_SIZES[grid]['steps'])))
    return
  isolate = {'yes': True, 'no': False, 'auto': jax.default_backend() != 'cpu'}[FLAGS.isolate]
  results = run(grid, FLAGS.steps, FLAGS.budget_s, isolate, tuple(FLAGS.stages),
                tuple(FLAGS.dtypes), tuple(FLAGS.hyp_maps))
  print(format_table(results), flush=True)
  if FLAGS.out:
    files.write_text(FLAGS.out, json.dumps(results, indent=1) + '\n')
    print(f'\nwrote {FLAGS.out}')


def _define_flags() -> None:
  """The command's flags (defined only when run, so importing this module defines none)."""
  flags.DEFINE_enum('grid', 'auto', ['auto', 'full', 'reduced'],
                    "'full': the paper's sizes; 'reduced': tiny shapes; 'auto': full on "
                    'an accelerator, reduced on CPU.')
  flags.DEFINE_integer('steps', 0, 'Timed steps per train row (0: 20 full, 2 reduced).')
  flags.DEFINE_float('budget_s', 450.0, 'No train row starts after this many seconds '
                     '(an isolated row is stopped then); the rest are reported skipped.')
  flags.DEFINE_enum('isolate', 'auto', ['auto', 'yes', 'no'],
                    'Each train row in a process of its own (auto: on accelerators).')
  flags.DEFINE_list('stages', list(STAGES), 'Stages to train.')
  flags.DEFINE_list('dtypes', list(DTYPES), 'Compute dtypes.')
  flags.DEFINE_list('hyp_maps', list(HYP_MAPS), 'Ways to run the stacked hypotheses.')
  flags.DEFINE_string('out', 'device_check.json', 'JSON output file (empty: none).')
  flags.DEFINE_string('row', '', 'Internal: measure one train row (JSON) and print it.')


FLAGS = flags.FLAGS

if __name__ == '__main__':
  # Before JAX starts: the parent leaves the accelerator's memory to the isolated rows.
  os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  _define_flags()
  app.run(main)
