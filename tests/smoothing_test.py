"""Tests of the temporal filters (inference/smoothing.py) against direct computations."""

import math

import ml_collections
import numpy as np
import pytest

from deepskeleton_jax import errors
from deepskeleton_jax.inference import smoothing


def _one_euro_reference(xs, fps, min_cutoff, beta, d_cutoff=1.0):
  """Casiez et al.'s pseudo-code, one scalar at a time."""
  def alpha(cutoff):
    te, tau = 1.0 / fps, 1.0 / (2 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / te)
  out, x_prev, dx_prev = [], None, 0.0
  for x in xs:
    if x_prev is None:
      x_prev = x
    else:
      dx = (x - x_prev) * fps
      dx_prev = alpha(d_cutoff) * dx + (1 - alpha(d_cutoff)) * dx_prev
      a = alpha(min_cutoff + beta * abs(dx_prev))
      x_prev = a * x + (1 - a) * x_prev
    out.append(x_prev)
  return np.array(out)


def _noisy_track(t=60, seed=0):
  rng = np.random.default_rng(seed)
  clean = np.sin(np.linspace(0, 2 * np.pi, t))[:, None, None] * np.ones((1, 4, 2)) * 50
  return clean, clean + rng.normal(0, 3.0, clean.shape)


def test_one_euro_matches_the_papers_pseudo_code():
  _, noisy = _noisy_track()
  got = smoothing.one_euro(noisy, None, 25.0, 1.0, 0.3, scale=10.0)
  for j, d in ((0, 0), (3, 1)):
    want = _one_euro_reference(noisy[:, j, d] / 10.0, 25.0, 1.0, 0.3) * 10.0
    np.testing.assert_allclose(got[:, j, d], want, rtol=1e-10)


def test_savgol_is_a_local_polynomial_fit():
  _, noisy = _noisy_track()
  got = smoothing.savgol(noisy, None, 9, 2)
  for t in (10, 30):  # interior frames: the centre value of a quadratic fit over 9 frames
    window = noisy[t - 4:t + 5, 2, 1]
    coef = np.polyfit(np.arange(-4, 5), window, 2)
    assert got[t, 2, 1] == pytest.approx(np.polyval(coef, 0.0), abs=1e-8)


@pytest.mark.parametrize('method', ['one_euro', 'savgol'])
def test_filters_cut_acceleration(method):
  clean, noisy = _noisy_track()
  cfg = ml_collections.ConfigDict({'smoothing': method, 'one_euro_min_cutoff': 1.0,
                                   'one_euro_beta': 1.0, 'savgol_window': 9,
                                   'savgol_order': 2})
  out = smoothing.smooth(noisy, None, cfg, fps=25.0, scale=100.0)
  assert smoothing.mean_acceleration(out) < 0.5 * smoothing.mean_acceleration(noisy)
  if method == 'savgol':  # not causal: no lag, so it also lands nearer the signal
    assert np.abs(out - clean).mean() < 0.6 * np.abs(noisy - clean).mean()


def test_one_euro_beta_follows_fast_motion():
  """After a jump of one person size, a larger beta catches up in fewer frames."""
  step = np.where(np.arange(40) < 10, 0.0, 1.0)[:, None]
  frames = []
  for beta in (0.0, 1.0, 10.0):
    out = smoothing.one_euro(step, None, 25.0, 1.0, beta)[:, 0]
    frames.append(int(np.argmax(out > 0.9)) - 10)
  assert frames[0] > frames[1] > frames[2] >= 0, frames


def test_gaps_stay_nan_and_split_the_track():
  _, noisy = _noisy_track(30)
  noisy[10:13] = np.nan
  valid = np.all(np.isfinite(noisy), axis=(1, 2))
  assert smoothing.segments(valid) == [(0, 10), (13, 30)]
  for out in (smoothing.one_euro(noisy, valid, 25.0, 1.0, 0.05),
              smoothing.savgol(noisy, valid, 9, 2)):
    assert np.all(np.isnan(out[10:13])) and np.all(np.isfinite(out[valid]))
  # The segment after the gap starts afresh: its first frame passes unchanged.
  np.testing.assert_allclose(smoothing.one_euro(noisy, valid, 25.0, 1.0, 0.05)[13], noisy[13])
  # A segment shorter than the window uses a shorter one; 2 frames pass unchanged.
  short = np.where(np.arange(30)[:, None, None] < 2, noisy, np.nan)
  np.testing.assert_allclose(smoothing.savgol(short, None, 9, 2)[:2], noisy[:2])


def test_mean_acceleration_by_hand():
  x = np.zeros((5, 1, 2))
  x[:, 0, 0] = [0, 1, 4, 9, 16]  # second difference 2 everywhere
  assert smoothing.mean_acceleration(x) == pytest.approx(2.0)
  x[2] = np.nan  # only t = 3 has valid neighbours... none: t=1,2,3 all touch frame 2
  assert math.isnan(smoothing.mean_acceleration(x))


def test_bad_smoothing_config_names_the_field():
  cfg = ml_collections.ConfigDict({'smoothing': 'kalman', 'one_euro_min_cutoff': 1.0,
                                   'one_euro_beta': 0.05, 'savgol_window': 8,
                                   'savgol_order': 2})
  with pytest.raises(errors.ConfigError, match='config.predict.smoothing'):
    smoothing.check_config(cfg)
  cfg.smoothing = 'savgol'
  with pytest.raises(errors.ConfigError, match='savgol_window'):
    smoothing.check_config(cfg)
