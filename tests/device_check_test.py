"""Tests of benchmarks/device_check.py on CPU: the reduced grid's table and JSON.

Timings are never checked against thresholds: the tests check that every row
and column is there, that the numbers are positive and finite, and how the
command reports rows it could not run.
"""

import itertools
import json
import math
import time

import jax
import pytest

from deepskeleton_jax.benchmarks import device_check

VARIANTS = set(itertools.product(device_check.STAGES, device_check.DTYPES,
                                 device_check.HYP_MAPS))
# Measured on every backend; MFU and the device's peak memory are '-' on CPU.
MEASURED = ('train img/s', 'ms/step', 'compile s', 'TFLOP/step', 'step MiB (XLA)',
            'input cores to feed')


def _number(cell: str) -> float:
  return float(cell.replace(',', ''))


def _table(lines: list[str], header_start: str) -> list[dict[str, str]]:
  """The Markdown table whose header line starts with `header_start`, as dicts."""
  start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
  columns = [c.strip() for c in lines[start].strip('|').split('|')]
  rows = []
  for line in lines[start + 2:]:
    if not line.startswith('|'):
      break
    rows.append(dict(zip(columns, [c.strip() for c in line.strip('|').split('|')])))
  return rows


def _finite_numbers(tree) -> list[float]:
  if isinstance(tree, dict):
    return [x for v in tree.values() for x in _finite_numbers(v)]
  if isinstance(tree, list):
    return [x for v in tree for x in _finite_numbers(v)]
  if isinstance(tree, (int, float)) and not isinstance(tree, bool):
    assert math.isfinite(tree), tree
    return [tree]
  return []


@pytest.mark.slow
def test_reduced_grid_measures_every_row_and_column():
  results = device_check.run('reduced', budget_s=3600)
  lines = device_check.format_table(results).splitlines()
  assert lines[0] == f'## {jax.devices()[0].device_kind}'
  rows = _table(lines, '| stage |')
  assert list(rows[0]) == [c[0] for c in device_check.TRAIN_COLUMNS]
  assert {(r['stage'], r['dtype'], r['hyp_map']) for r in rows} == VARIANTS
  assert len(rows) == len(VARIANTS)
  for row in rows:
    assert row['status'] == 'ok', row
    assert (row['H'], row['batch'], row['px']) == ('2', '8', '32'), row
    assert all(_number(row[c]) > 0 for c in MEASURED), row
    assert row['MFU %'] == row['peak MiB (device)'] == '-', row  # CPU: no peak FLOPs, no stats
  for row in results['train']:  # batch / images/s is the step time
    assert row['batch_size'] / row['images_per_s'] == pytest.approx(row['ms_per_step'] / 1e3)
  raster = results['rasterizer']
  assert raster['ms_per_regressor_batch'] == pytest.approx(
      1e3 * 8 * 2 / raster['maps_per_s_per_hypothesis'])
  assert _number(_table(lines, '| rasterizer')[0]['value']) > 0
  pipeline = _table(lines, '| measurement |')
  assert len(pipeline) == 5 and all(_number(r['images/s']) > 0 for r in pipeline)
  numbers = _finite_numbers(json.loads(json.dumps(results)))
  assert len(numbers) > 100 and min(numbers) >= 0


@pytest.mark.slow
def test_an_isolated_row_runs_in_its_own_process():
  spec = device_check.row_spec('reduced', 'regressor', 'float32', 'loop')
  row = device_check.measure_isolated(spec, 'reduced', 1, timeout_s=900)
  assert row['status'] == 'ok', row
  assert {k: row[k] for k in spec} == spec
  assert row['images_per_s'] > 0 and row['step_memory_mib'] > 0


def test_rows_past_the_budget_are_reported_skipped():
  rows = device_check.run_train_rows('reduced', steps=1, deadline=time.monotonic(),
                                     isolate=False)
  assert [(r['hyp_map'], r['dtype'], r['stage']) for r in rows] == list(
      itertools.product(device_check.HYP_MAPS, device_check.DTYPES, device_check.STAGES))
  assert all(r['status'] == 'skipped (budget)' and r['num_hyps'] == 2 for r in rows)


def test_full_grid_is_the_papers_setting():
  """H36M: 11 hypotheses, 224 px, the paper's batches 12 (SkeletonMapNet) and 32 (regressor)."""
  rows = {s: device_check.row_spec('full', s, 'bfloat16', 'vmap') for s in device_check.STAGES}
  assert [(r['num_hyps'], r['input_size'], r['batch_size']) for r in rows.values()] == [
      (11, 224, 12), (11, 224, 32)]


def test_a_slow_isolated_row_times_out():
  spec = device_check.row_spec('reduced', 'skeleton_net', 'float32', 'vmap')
  row = device_check.measure_isolated(spec, 'reduced', 1, timeout_s=0.5)
  assert row == dict(spec, status='timeout after 0 s')


@pytest.mark.parametrize('message, status', [
    ('jax.errors.JaxRuntimeError: RESOURCE_EXHAUSTED: Out of memory allocating 4 GiB', 'out of memory'),
    ('Traceback ...\n  File "x.py"\nValueError: bad shape\n\n', 'error: ValueError: bad shape'),
])
def test_failed_rows_say_why(message, status):
  assert device_check.failure_status(message) == status
