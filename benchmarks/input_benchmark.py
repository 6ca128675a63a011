r"""Input pipeline throughput in images per CPU core (a benchmark, not a test).

  python -m benchmarks.input_benchmark --config=configs/demo.py

Measures, on a built dataset (`python run.py --mode=prepare --config=...`):
- `pipeline`: the grain iterator as configured (prefetch threads, no worker
  processes), in wall-clock images/s and in images per CPU-second;
- `per_core`: read + JPEG decode + crops + batch assembly in one thread, per
  CPU-second;
- `per_core_no_decode`: the same on images decoded beforehand (crop-and-resize
  and batching only);
- `decode_only`: JPEG decoding alone.
CPU-seconds come from `time.process_time` (all threads of this process), so
OpenCV's own threads are counted. Goal: `per_core` >= 500 images/s, i.e. the
stored crops are small enough that cropping, not decoding, dominates.
"""

from __future__ import annotations

import json
import time
from typing import Any

from absl import app
from absl import flags
import ml_collections
from ml_collections import config_flags
import numpy as np

from deepskeleton_jax.experiment import config_lib
from deepskeleton_jax.data import registry
from deepskeleton_jax.data import image_ops
from deepskeleton_jax.data import input_pipeline


def _rate(count: int, seconds: float) -> float:
  return float(count / seconds) if seconds > 0 else float('inf')


def run(data_config: Any, split: str | None = None, batch_size: int = 32,
        num_batches: int = 10) -> dict[str, Any]:
  """Measures the input pipeline on one split.

  Args:
    data_config: `config.data` of a built dataset.
    split: split to read (default `data_config.train_split`).
    batch_size: examples per batch.
    num_batches: batches per measurement (after one warm-up batch).

  Returns:
    Dict of images/s figures and the shapes they were measured at.

  Raises:
    registry.DatasetNotBuiltError: the dataset is not built.
  """
  split = split or data_config.train_split
  data_config = ml_collections.ConfigDict(dict(data_config))
  data_config.worker_count = 0
  builder = registry.get_builder(data_config)
  source = registry.split_source(builder, split, decode_image=False)
  n = len(source)
  if n == 0:
    raise ValueError(f'split {split!r} of {builder.name} is empty')
  count = batch_size * num_batches
  indices = [i % n for i in range(count)]
  transform = input_pipeline.ExampleTransform(
      tuple(data_config.crop_scales), data_config.input_size,
      getattr(builder.builder_config, 'crop_size', None))

  it = input_pipeline.make_iterator(
      data_config, split, batch_size, shuffle=True, num_epochs=None,
      process_index=0, process_count=1, augment=False)
  next(it)
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(num_batches):
    next(it)
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu

  raw = source.__getitems__(indices)

  def assemble(rows):
    for start in range(0, count, batch_size):
      out = transform.empty_batch(batch_size)
      for row, ex in enumerate(rows[start:start + batch_size]):
        transform.fill(out, row, ex, start + row)

  assemble(raw[:batch_size])  # Warm-up.
  t = time.process_time()
  read = source.__getitems__(indices)
  assemble(read)
  per_core = time.process_time() - t
  t = time.process_time()
  decoded = [dict(ex, image=image_ops.decode_image(ex['image'])) for ex in raw]
  decode = time.process_time() - t
  t = time.process_time()
  assemble(decoded)
  no_decode = time.process_time() - t
  crop = decoded[0]['image'].shape[0]
  return {
      'dataset': builder.name, 'config': builder.builder_config.name,
      'split': split, 'stored_crop_size': int(crop),
      'mean_jpeg_bytes': float(np.mean([len(ex['image']) for ex in raw])),
      'input_size': int(data_config.input_size),
      'num_crops': len(data_config.crop_scales), 'batch_size': batch_size,
      'pipeline_images_per_s': _rate(count, wall),
      'pipeline_images_per_cpu_s': _rate(count, cpu),
      'per_core_images_per_s': _rate(count, per_core),
      'per_core_no_decode_images_per_s': _rate(count, no_decode),
      'decode_only_images_per_s': _rate(count, decode),
  }


def table(result: dict[str, Any]) -> str:
  """A Markdown table of `run`'s result."""
  rows = [('grain pipeline (wall clock)', 'pipeline_images_per_s'),
          ('grain pipeline (per CPU-second)', 'pipeline_images_per_cpu_s'),
          ('one core: read + decode + crops', 'per_core_images_per_s'),
          ('one core: crops only (decoded)', 'per_core_no_decode_images_per_s'),
          ('one core: JPEG decode only', 'decode_only_images_per_s')]
  lines = [f"{result['dataset']} ({result['config']}), split {result['split']}: "
           f"stored crop {result['stored_crop_size']} px "
           f"(~{result['mean_jpeg_bytes'] / 1024:.1f} KiB JPEG) -> "
           f"{result['num_crops']} crop(s) of {result['input_size']} px",
           '', '| measurement | images/s |', '|---|---:|']
  lines += [f'| {name} | {result[key]:.0f} |' for name, key in rows]
  return '\n'.join(lines)


def main(argv: list[str]) -> None:
  del argv
  if _CONFIG.value is None:
    raise app.UsageError('--config is required, e.g. --config=configs/demo.py')
  result = run(config_lib.finalize(_CONFIG.value).data, batch_size=_BATCH.value,
               num_batches=_BATCHES.value)
  print(json.dumps(result))
  print(table(result))


if __name__ == '__main__':
  # Flags are defined only when run as a script, so importing this module
  # (e.g. from run.py's benchmark mode) does not clash with run.py's --config.
  _CONFIG = config_flags.DEFINE_config_file(
      'config', None, 'Experiment config file (uses its `data` group, after '
      'config_lib.finalize fills data.crop_scales).')
  _BATCH = flags.DEFINE_integer('batch_size', 32, 'Examples per batch.')
  _BATCHES = flags.DEFINE_integer('num_batches', 10, 'Batches per measurement.')
  app.run(main)
