r"""ONNX Runtime against the jax.export artifact: images/s of the exported pipeline.

  python -m benchmarks.onnx_benchmark --config=configs/demo.py [--workdir=workdir/demo] \
      [--batch_sizes=8,32] [--repeats=10]

Exports the pipeline both ways with `--mode=export`'s own `export.write`
(model.jax lowered for the CPU, and model.onnx) into a temporary folder, from
the trained stages of --workdir when given, else from randomly initialised
ones (the speed does not depend on the values); loads each with its
standalone loader (examples/serve_exported.py, examples/serve_onnx.py) and
times both on the same random crops in the same process, alternating, after
one warm-up call each (compilation, session set-up). Each runtime uses its
default threads (one per core). Prints one JSON line and a Markdown table:
per batch size the images/s (median over repeats) of each and their ratio,
also as the median ratio of neighbouring calls (robust to a shared machine's
changing load), the largest output difference; the export time of each format.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import pathlib
import tempfile
import time
from typing import Any

from absl import app
from absl import flags
import jax
import ml_collections
from ml_collections import config_flags
import numpy as np

from deepskeleton_jax.experiment import config_lib
from deepskeleton_jax.experiment import stages as stages_lib
from deepskeleton_jax.inference import export
from deepskeleton_jax.inference import pipeline
from deepskeleton_jax.training import train_step

REPO = pathlib.Path(__file__).resolve().parents[1]
_EXPORTED = ('skeleton_net', 'regressor', 'hourglass')


def random_stages(config: ml_collections.ConfigDict, seed: int = 0) -> dict[str, Any]:
  """`pipeline.load_stages`-like stages with random variables (no training).

  Args:
    config: finalised config.
    seed: PRNG seed.

  Returns:
    {name: {'stage', 'variables', 'norm'}} for skeleton_net, regressor and,
    when `config.stages` lists it, hourglass; pose statistics of a person
    (mean N(0, 100) mm, std 100 mm) where a stage normalises poses.
  """
  rng = np.random.default_rng(seed)
  names = [n for n in _EXPORTED if n != 'hourglass' or n in config_lib.stage_list(config)]
  loaded = {}
  for i, name in enumerate(names):
    stage = stages_lib.build(config, name)
    norm = ({'mean': rng.normal(0.0, 100.0, (16, 3)).astype(np.float32),
             'std': np.float32(100.0)} if stage.pose_norm else None)
    loaded[name] = {'stage': stage, 'norm': norm,
                    'variables': train_step.init_variables(stage, jax.random.PRNGKey(seed + i))}
  return loaded


def load_example(name: str):
  """The module examples/<name>.py (the standalone loaders)."""
  spec = importlib.util.spec_from_file_location(name, REPO / 'examples' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _export(config, loaded, fmt: str, out_dir: str) -> float:
  config = copy.deepcopy(config)
  config.export.format = fmt
  config.export.platforms = ('cpu',)
  t = time.perf_counter()
  export.write(config, loaded, out_dir)
  return time.perf_counter() - t


def _time(fns: dict[str, Any], crops: np.ndarray, repeats: int) -> dict[str, Any]:
  """Alternating timed calls of each runtime on the same crops (after a warm-up)."""
  outputs = {fmt: fn(crops) for fmt, fn in fns.items()}  # compiles for this batch size
  times = {fmt: [] for fmt in fns}
  for _ in range(repeats):
    for fmt, fn in fns.items():
      t = time.perf_counter()
      fn(crops)
      times[fmt].append(time.perf_counter() - t)
  rate = {fmt: len(crops) / float(np.median(t)) for fmt, t in times.items()}
  return {
      'batch_size': len(crops), 'jax_images_per_s': rate['jax'],
      'onnx_images_per_s': rate['onnx'], 'onnx_over_jax': rate['onnx'] / rate['jax'],
      # Neighbouring calls share the machine's load: the median of their ratios.
      'onnx_over_jax_paired': float(np.median(np.divide(times['jax'], times['onnx']))),
      'max_abs_difference': {k: float(np.max(np.abs(outputs['onnx'][k].astype(np.float64)
                                                    - outputs['jax'][k])))
                             for k in outputs['jax']},
  }


def run(config: ml_collections.ConfigDict, loaded: dict[str, Any], batch_sizes=(8,),
        repeats: int = 10) -> dict[str, Any]:
  """Exports both formats and times them (see the module docstring).

  Args:
    config: finalised config.
    loaded: the stages to export (`pipeline.load_stages` or `random_stages`).
    batch_sizes: crops per call (the same batch for both), one row each.
    repeats: timed calls of each runtime per batch size.

  Returns:
    The measurements: a row per batch size, the export times and model size.
  """
  size, scales = config.data.input_size, len(config.data.crop_scales)
  rng = np.random.default_rng(0)
  with tempfile.TemporaryDirectory() as tmp:
    seconds = {fmt: _export(config, loaded, fmt, f'{tmp}/{fmt}') for fmt in ('jax', 'onnx')}
    fns = {'jax': load_example('serve_exported').load(f'{tmp}/jax')[0],
           'onnx': load_example('serve_onnx').load(f'{tmp}/onnx')[0]}
    rows = [_time(fns, rng.integers(0, 256, (n, scales, size, size, 3), dtype=np.uint8),
                  repeats) for n in batch_sizes]
    model_mb = sum(p.stat().st_size for p in (pathlib.Path(tmp) / 'onnx').glob('model.onnx*'))
  return {
      'repeats': repeats, 'input_size': size,
      'num_crops': scales, 'num_hypotheses': len(stages_lib.layout(config).hypotheses),
      'stages': sorted(loaded), 'trained': all('step' in v for v in loaded.values()),
      'cpu_cores': os.cpu_count(),
      'rows': rows, 'export_s': seconds, 'onnx_mb': model_mb / 1e6,
  }


def table(result: dict[str, Any]) -> str:
  """A Markdown table of `run`'s result."""
  lines = [f"{result['num_crops']} crop(s) of {result['input_size']} px, "
           f"{result['num_hypotheses']} hypotheses, stages {', '.join(result['stages'])} "
           f"({'trained' if result['trained'] else 'random'} variables), "
           f"{result['cpu_cores']} cores; export {result['export_s']['jax']:.1f} s (model.jax), "
           f"{result['export_s']['onnx']:.1f} s (model.onnx, {result['onnx_mb']:.1f} MB)", '',
           '| batch | jax.export (XLA:CPU) images/s | ONNX Runtime images/s | ONNX / jax '
           '| paired ratio |', '|---:|---:|---:|---:|---:|']
  lines += [f"| {r['batch_size']} | {r['jax_images_per_s']:.1f} | "
            f"{r['onnx_images_per_s']:.1f} | {r['onnx_over_jax']:.2f}x | "
            f"{r['onnx_over_jax_paired']:.2f}x |" for r in result['rows']]
  return '\n'.join(lines)


def main(argv: list[str]) -> None:
  del argv
  if _CONFIG.value is None:
    raise app.UsageError('--config is required, e.g. --config=configs/demo.py')
  config = config_lib.finalize(_CONFIG.value)
  loaded = (pipeline.load_stages(config, _WORKDIR.value, _EXPORTED,
                                 required=('skeleton_net', 'regressor'))
            if _WORKDIR.value else random_stages(config))
  result = run(config, loaded, [int(n) for n in _BATCHES.value], _REPEATS.value)
  print(json.dumps(result))
  print(table(result))


if __name__ == '__main__':
  # Flags are defined only when run as a script (importing does not clash with run.py's).
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.')
  _WORKDIR = flags.DEFINE_string('workdir', '', 'Trained stages to export (default: random).')
  _BATCHES = flags.DEFINE_list('batch_sizes', ['8'], 'Crops per call, one row each.')
  _REPEATS = flags.DEFINE_integer('repeats', 10, 'Timed calls of each runtime.')
  app.run(main)
