"""Training metrics to the log, `metrics.jsonl` and TensorBoard (no TensorFlow).

Only process 0 writes files; every process may call `write`. A run that
resumes from step k first cuts `metrics.jsonl` back to the records of steps
<= k (the later ones belong to steps it trains again), so the file never
repeats a step; a half-written last line of a killed run is dropped too.
"""

from __future__ import annotations

import json
import os
from typing import Any

from absl import logging
import jax
import numpy as np

from deepskeleton_jax import files


def _to_float(v: Any) -> float:
  return float(np.asarray(v))


class MetricWriter:
  """Writes scalars to `<directory>/metrics.jsonl` and TensorBoard event files."""

  def __init__(self, directory: str, tensorboard: bool = True, start_step: int | None = None):
    """Opens the files.

    Args:
      directory: where `metrics.jsonl` and `tensorboard/` go.
      tensorboard: also write TensorBoard events (needs tensorboardX).
      start_step: the step training starts from; records of later steps in an
        existing `metrics.jsonl` are removed. None keeps every record.
    """
    self._enabled = jax.process_index() == 0
    self._jsonl = None
    self._tb = None
    if not self._enabled:
      return
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, 'metrics.jsonl')
    if start_step is not None and os.path.exists(path):
      _cut_back(path, start_step)
    self._jsonl = open(path, 'a')
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        self._tb = SummaryWriter(os.path.join(directory, 'tensorboard'))
      except ImportError:
        logging.warning('tensorboardX is not installed: no TensorBoard events')

  def write(self, step: int, scalars: dict[str, Any]) -> None:
    """Records scalars at `step`."""
    if not self._enabled:
      return
    values = {k: _to_float(v) for k, v in scalars.items()}
    values = {k: v for k, v in values.items() if np.isfinite(v)}
    self._jsonl.write(json.dumps({'step': int(step), **values}) + '\n')
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in values.items():
        self._tb.add_scalar(k, v, int(step))
      self._tb.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def _cut_back(path: str, start_step: int) -> None:
  """Keeps the complete records of steps <= `start_step` (atomic rewrite)."""
  with open(path) as f:
    text = f.read()
  lines = text.splitlines()
  kept = []
  for line in lines:
    try:
      record = json.loads(line)
    except ValueError:  # a line cut short by a kill
      continue
    if isinstance(record, dict) and int(record.get('step', 0)) <= start_step:
      kept.append(line)
  new_text = ''.join(line + '\n' for line in kept)
  if new_text != text:
    logging.info('%s: removed %d records after step %d (resuming from it)', path,
                 len(lines) - len(kept), start_step)
    files.write_text(path, new_text)


def format_eta(seconds: float) -> str:
  """Seconds as H:MM:SS."""
  seconds = max(0, int(seconds))
  return f'{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'
