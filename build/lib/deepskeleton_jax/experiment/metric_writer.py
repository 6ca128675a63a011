"""Training metrics to the log, `metrics.jsonl` and TensorBoard (no TensorFlow).

Only process 0 writes files; every process may call `write`.
"""

from __future__ import annotations

import json
import os
from typing import Any

from absl import logging
import jax
import numpy as np


def _to_float(v: Any) -> float:
  return float(np.asarray(v))


class MetricWriter:
  """Writes scalars to `<directory>/metrics.jsonl` and TensorBoard event files."""

  def __init__(self, directory: str, tensorboard: bool = True):
    self._enabled = jax.process_index() == 0
    self._jsonl = None
    self._tb = None
    if not self._enabled:
      return
    os.makedirs(directory, exist_ok=True)
    self._jsonl = open(os.path.join(directory, 'metrics.jsonl'), 'a')
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


def format_eta(seconds: float) -> str:
  """Seconds as H:MM:SS."""
  seconds = max(0, int(seconds))
  return f'{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'
