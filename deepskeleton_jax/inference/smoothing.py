"""Temporal smoothing of per-frame joint tracks (2D pixels or 3D millimetres).

Two filters, both applied along the time axis of `[T, ...]` arrays, with the
frames where no person was found (`valid` False, values NaN) left NaN and
splitting the track into segments that are filtered on their own (nothing
is interpolated across a gap):

- One-Euro (Casiez, Roussel, Vogel, CHI 2012): a first-order low-pass whose
  cutoff rises with the signal's speed, `cutoff = min_cutoff + beta |dx/dt|`,
  so slow motion is smoothed hard (no jitter) and fast motion lags little.
  Causal. The speed is measured in units of `scale` per second, so one
  `beta` suits pixels and millimetres alike when `scale` is the person's size
  in those units (see `predict_video`).
- Savitzky-Golay (`scipy.signal.savgol_filter`): a least-squares polynomial of
  order `order` over a centred window of `window` frames. Not causal (uses
  future frames); keeps peaks better than a moving average.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import signal

from deepskeleton_jax import errors

METHODS = ('one_euro', 'savgol', 'none')


def _check(x: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
  x = np.asarray(x, np.float64)
  if x.ndim < 1:
    raise ValueError(f'x must have shape [T, ...], got {x.shape}')
  if valid is None:
    valid = np.all(np.isfinite(x.reshape(len(x), -1)), axis=1)
  valid = np.asarray(valid, bool)
  if valid.shape != x.shape[:1]:
    raise ValueError(f'valid must have shape [{len(x)}], got {valid.shape}')
  return x, valid


def segments(valid: np.ndarray) -> list[tuple[int, int]]:
  """[start, end) ranges of consecutive True entries of a [T] bool array."""
  edges = np.diff(np.concatenate([[0], np.asarray(valid, np.int8), [0]]))
  return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
  tau = 1.0 / (2.0 * math.pi * cutoff)
  return 1.0 / (1.0 + tau / dt)


def one_euro(x: np.ndarray, valid: np.ndarray | None, fps: float, min_cutoff: float,
             beta: float, d_cutoff: float = 1.0, scale: float = 1.0) -> np.ndarray:
  """One-Euro filter along time, every coordinate on its own.

  Args:
    x: [T, ...] track (NaN where there is no person).
    valid: [T] frames with a value (None: the frames whose values are finite).
    fps: frames per second (the filter's time step is 1 / fps).
    min_cutoff: cutoff frequency at zero speed, Hz.
    beta: how fast the cutoff rises with speed, Hz per (`scale` / s).
    d_cutoff: cutoff of the speed estimate's own low-pass, Hz.
    scale: unit of `x` in which speeds are measured.

  Returns:
    [T, ...] float64, NaN on invalid frames; the first frame of each segment
    passes unchanged.
  """
  x, valid = _check(x, valid)
  if fps <= 0 or min_cutoff <= 0 or beta < 0 or d_cutoff <= 0 or scale <= 0:
    raise ValueError(f'need fps, min_cutoff, d_cutoff, scale > 0 and beta >= 0, got '
                     f'{fps}, {min_cutoff}, {d_cutoff}, {scale}, {beta}')
  dt = 1.0 / fps
  out = np.full_like(x, np.nan)
  a_d = _alpha(d_cutoff, dt)
  for start, end in segments(valid):
    prev = x[start] / scale
    speed = np.zeros_like(prev)
    out[start] = x[start]
    for t in range(start + 1, end):
      cur = x[t] / scale
      speed = a_d * (cur - prev) / dt + (1.0 - a_d) * speed
      a = _alpha(min_cutoff + beta * np.abs(speed), dt)
      prev = a * cur + (1.0 - a) * prev
      out[t] = prev * scale
  return out


def savgol(x: np.ndarray, valid: np.ndarray | None, window: int, order: int) -> np.ndarray:
  """Savitzky-Golay filter along time on each segment of valid frames.

  Args:
    x: [T, ...] track (NaN where there is no person).
    valid: [T] frames with a value (None: the frames whose values are finite).
    window: odd window length in frames (> order).
    order: polynomial order.

  Returns:
    [T, ...] float64, NaN on invalid frames. A segment shorter than `window`
    uses the longest odd window it holds, and passes unchanged when that is
    not longer than `order`.
  """
  x, valid = _check(x, valid)
  if window % 2 != 1 or order < 0 or window <= order:
    raise ValueError(f'window must be odd and > order >= 0, got window={window}, '
                     f'order={order}')
  out = np.full_like(x, np.nan)
  for start, end in segments(valid):
    n = end - start
    w = min(window, n if n % 2 else n - 1)
    seg = x[start:end]
    out[start:end] = signal.savgol_filter(seg, w, order, axis=0) if w > order else seg
  return out


def check_config(predict_cfg) -> None:
  """Validates the smoothing fields of `config.predict`.

  Raises:
    errors.ConfigError: naming the field and what was expected.
  """
  method = predict_cfg.smoothing
  if method not in METHODS:
    raise errors.ConfigError(f'config.predict.smoothing={method!r} is invalid: expected '
                             f'one of {METHODS}')
  if method == 'one_euro' and not (predict_cfg.one_euro_min_cutoff > 0 and
                                   predict_cfg.one_euro_beta >= 0):
    raise errors.ConfigError(
        'config.predict.one_euro_min_cutoff / one_euro_beta = '
        f'{predict_cfg.one_euro_min_cutoff} / {predict_cfg.one_euro_beta} are invalid: '
        'expected min_cutoff > 0 (Hz) and beta >= 0')
  if method == 'savgol':
    w, o = predict_cfg.savgol_window, predict_cfg.savgol_order
    if not (w % 2 == 1 and 0 <= o < w):
      raise errors.ConfigError(
          f'config.predict.savgol_window / savgol_order = {w} / {o} are invalid: '
          'expected an odd window longer than the order (e.g. 9 / 2)')


def smooth(x: np.ndarray, valid: np.ndarray | None, predict_cfg, fps: float,
           scale: float) -> np.ndarray:
  """Smooths a track with the method `config.predict.smoothing` names.

  Args:
    x: [T, ...] track.
    valid: [T] frames with a person.
    predict_cfg: `config.predict` (smoothing, one_euro_*, savgol_*).
    fps: frame rate.
    scale: the person's size in the units of `x` (One-Euro speeds are
      measured in it).

  Returns:
    [T, ...] float64, NaN where not `valid`.
  """
  check_config(predict_cfg)
  method = predict_cfg.smoothing
  if method == 'one_euro':
    return one_euro(x, valid, fps, predict_cfg.one_euro_min_cutoff,
                    predict_cfg.one_euro_beta, scale=scale)
  if method == 'savgol':
    return savgol(x, valid, predict_cfg.savgol_window, predict_cfg.savgol_order)
  x, valid = _check(x, valid)
  return np.where(valid.reshape((-1,) + (1,) * (x.ndim - 1)), x, np.nan)


def mean_acceleration(x: np.ndarray) -> float:
  """Mean norm of the second difference over consecutive valid frames.

  Args:
    x: [T, K, D] joint tracks (NaN where missing).

  Returns:
    Mean over joints and over frames t with t-1, t, t+1 all valid of
    |x[t+1] - 2 x[t] + x[t-1]| (units per frame^2); NaN if there are none.
  """
  x = np.asarray(x, np.float64)
  acc = np.linalg.norm(x[2:] - 2 * x[1:-1] + x[:-2], axis=-1)
  acc = acc[np.all(np.isfinite(acc), axis=-1)]
  return float(acc.mean()) if acc.size else float('nan')
