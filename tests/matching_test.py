"""Tests for deepskeleton_jax.matching against exact sources and a NumPy loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepskeleton_jax.geometry import camera
from deepskeleton_jax.inference import matching
from deepskeleton_jax.evaluation import metrics
from deepskeleton_jax.geometry import skeleton

K = skeleton.NUM_JOINTS
INTR = np.array([1145.0, 1143.8, 512.5, 515.5], np.float32)


def _hypotheses(seed, batch, h, noise=80.0):
  """Root-relative poses [*batch, h, K, 3] and the index of the clean one."""
  rng = np.random.default_rng(seed)
  base = rng.normal(0, 300, batch + (1, K, 3))
  hyps = base + rng.normal(0, noise, batch + (h, K, 3))
  source = rng.integers(0, h, batch)
  idx = np.indices(batch)
  hyps[(*idx, source)] = base[..., 0, :, :]
  hyps -= hyps[..., skeleton.ROOT:skeleton.ROOT + 1, :]
  return hyps.astype(np.float32), source


def test_orthographic_exact_source_is_selected():
  hyps, source = _hypotheses(0, (2, 3), 6)
  pick = np.take_along_axis(hyps, source[..., None, None, None], axis=-3)[..., 0, :, :]
  rng = np.random.default_rng(1)
  scale = rng.uniform(0.05, 0.3, (2, 3, 1, 1))
  joints_2d = scale * pick[..., :2] + rng.uniform(50, 200, (2, 3, 1, 2))
  visible = rng.uniform(size=(2, 3, K)) > 0.2
  err = np.asarray(matching.reprojection_error(hyps, joints_2d, visible))
  assert err.shape == (2, 3, 6)
  np.testing.assert_allclose(np.take_along_axis(err, source[..., None], -1),
                             0.0, atol=1e-3)
  index, pose = jax.jit(matching.select)(hyps, joints_2d, visible)
  np.testing.assert_array_equal(index, source)
  np.testing.assert_allclose(pose, pick)


def test_perspective_exact_source_is_selected():
  hyps, source = _hypotheses(2, (4,), 5)
  pick = hyps[np.arange(4), source]
  rng = np.random.default_rng(3)
  t = rng.uniform([-300, -200, 3500], [300, 200, 6000], (4, 1, 3))
  joints_2d = camera.project_intrinsics(pick + t, INTR)
  visible = np.ones((4, K), bool)
  visible[:, :3] = False
  joints_2d[:, :3] = np.nan                       # undetected joints
  err = np.asarray(matching.reprojection_error(hyps, joints_2d, visible, INTR))
  np.testing.assert_allclose(err[np.arange(4), source], 0.0, atol=1e-2)
  assert np.all(np.isfinite(err))
  index, pose = jax.jit(matching.select)(hyps, joints_2d, visible,
                                         jnp.asarray(INTR))
  np.testing.assert_array_equal(index, source)
  np.testing.assert_allclose(pose, pick)
  fitted = matching.fit_root_translation(hyps, joints_2d, visible, INTR)
  np.testing.assert_allclose(fitted[np.arange(4), source], t[:, 0], rtol=1e-3,
                             atol=0.5)


def _numpy_orthographic(hyp, x, w):
  """Weighted least squares over (s, o_x, o_y), then the mean squared error."""
  a = np.zeros((2 * K, 3))
  a[:K, 0], a[K:, 0] = hyp[:, 0], hyp[:, 1]
  a[:K, 1], a[K:, 2] = 1.0, 1.0
  b = np.concatenate([x[:, 0], x[:, 1]])
  sw = np.sqrt(np.concatenate([w, w]))
  s, ox, oy = np.linalg.lstsq(a * sw[:, None], b * sw, rcond=None)[0]
  if s < 0:  # The constraint s >= 0 is active: s = 0, offsets the weighted means.
    s = 0.0
    ox, oy = np.sum(w[:, None] * x, axis=0) / np.sum(w)
  proj = s * hyp[:, :2] + [ox, oy]
  return np.sum(w * np.sum((proj - x)**2, axis=-1)) / np.sum(w)


def _numpy_perspective(hyp, x, w, intr):
  """Pixel-level equations f t + (c - u) t_z = (u - c) Z - f X, lstsq, project."""
  fx, fy, cx, cy = intr
  rows, rhs, ws = [], [], []
  for k in range(K):
    u, v = x[k]
    rows += [[fx, 0.0, cx - u], [0.0, fy, cy - v]]
    rhs += [(u - cx) * hyp[k, 2] - fx * hyp[k, 0],
            (v - cy) * hyp[k, 2] - fy * hyp[k, 1]]
    ws += [w[k], w[k]]
  sw = np.sqrt(np.array(ws))
  t = np.linalg.lstsq(np.array(rows) * sw[:, None], np.array(rhs) * sw,
                      rcond=None)[0]
  p = hyp + t
  proj = p[:, :2] / p[:, 2:] * [fx, fy] + [cx, cy]
  return np.sum(w * np.sum((proj - x)**2, axis=-1)) / np.sum(w)


@pytest.mark.parametrize('perspective', [False, True])
def test_matches_numpy_loop(perspective):
  rng = np.random.default_rng(4 + perspective)
  b, h = 3, 4
  hyps = rng.normal(0, 300, (b, h, K, 3)).astype(np.float32)
  hyps -= hyps[:, :, skeleton.ROOT:skeleton.ROOT + 1]
  target = rng.normal(0, 300, (b, K, 3)) + [[[0.0, 0.0, 4500.0]]]
  joints_2d = (camera.project_intrinsics(target, INTR.astype(np.float64))
               + rng.normal(0, 5, (b, K, 2)))
  weights = rng.uniform(size=(b, K)) * (rng.uniform(size=(b, K)) > 0.25)
  intr = np.stack([INTR] * b) if perspective else None
  err = np.asarray(matching.reprojection_error(
      hyps, joints_2d.astype(np.float32), weights.astype(np.float32), intr))
  expected = np.zeros((b, h))
  for i in range(b):
    for j in range(h):
      args = (hyps[i, j].astype(np.float64), joints_2d[i], weights[i])
      expected[i, j] = (_numpy_perspective(*args, INTR.astype(np.float64))
                        if perspective else _numpy_orthographic(*args))
  np.testing.assert_allclose(err, expected, rtol=2e-3)
  index, _ = matching.select(hyps, joints_2d, weights, intr)
  np.testing.assert_array_equal(index, np.argmin(expected, axis=-1))


def test_orthographic_scale_is_never_negative():
  # The image of a pose turned 180 degrees in the image plane: x = -s X + o.
  # A negative scale would fit the turned hypothesis exactly; a camera cannot.
  rng = np.random.default_rng(11)
  pose = rng.normal(0, 300, (K, 3))
  joints_2d = (-0.05 * pose[:, :2] + 100.0).astype(np.float32)
  turned = pose * [-1.0, -1.0, 1.0]
  hyps = np.stack([pose, turned]).astype(np.float32)
  err = np.asarray(matching.reprojection_error(hyps, joints_2d, None))
  assert err[1] < 1e-3 * err[0]       # the turned pose is the true one...
  scale, _ = camera.fit_scaled_orthographic(pose, joints_2d)
  assert float(scale) == 0.0          # ...and the other cannot be mirrored onto it
  spread = np.mean(np.sum((joints_2d - joints_2d.mean(0))**2, axis=-1))
  np.testing.assert_allclose(err[0], spread, rtol=1e-4)
  index, _ = matching.select(hyps, joints_2d, None)
  assert int(index) == 1


def test_vmap_and_broadcast_intrinsics():
  hyps, _ = _hypotheses(6, (5,), 3)
  rng = np.random.default_rng(7)
  joints_2d = rng.uniform(300, 700, (5, K, 2)).astype(np.float32)
  visible = np.ones((5, K), bool)
  batched = matching.reprojection_error(hyps, joints_2d, visible,
                                        np.stack([INTR] * 5))
  shared = matching.reprojection_error(hyps, joints_2d, visible, INTR)
  mapped = jax.vmap(matching.reprojection_error, in_axes=(0, 0, 0, None))(
      hyps, joints_2d, visible, INTR)
  np.testing.assert_allclose(shared, batched, rtol=1e-6)
  np.testing.assert_allclose(mapped, batched, rtol=1e-5)
  # No visible joint: every hypothesis scores 0 and the first is taken.
  none = np.zeros((5, K), bool)
  assert np.all(np.asarray(matching.reprojection_error(hyps, joints_2d, none)) == 0)
  assert np.all(np.asarray(matching.select(hyps, joints_2d, none, INTR)[0]) == 0)


def test_oracle_and_ensemble():
  hyps, _ = _hypotheses(8, (4,), 6, noise=60.0)
  gt = np.random.default_rng(9).normal(0, 300, (4, K, 3))
  index, pose = jax.jit(matching.oracle)(hyps, gt)
  errors = np.array([[float(metrics.mpjpe(hyps[i, j], gt[i])) for j in range(6)]
                     for i in range(4)])
  np.testing.assert_array_equal(index, np.argmin(errors, axis=1))
  np.testing.assert_allclose(pose, hyps[np.arange(4), np.argmin(errors, axis=1)])
  np.testing.assert_allclose(matching.ensemble_mean(hyps), hyps.mean(axis=1),
                             rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize('call, name', [
    (lambda: matching.reprojection_error(np.zeros((K, 3)), np.zeros((K, 2)),
                                         np.ones(K)), 'hyps'),
    (lambda: matching.reprojection_error(np.zeros((1, 2, K, 3)),
                                         np.zeros((1, 15, 2)), np.ones((1, K))),
     'joints_2d'),
    (lambda: matching.reprojection_error(np.zeros((1, 2, K, 3)),
                                         np.zeros((1, K, 2)), np.ones((1, 15))),
     'visible'),
    (lambda: matching.select(np.zeros((1, 2, K, 3)), np.zeros((1, K, 2)),
                             np.ones((1, K)), np.ones((1, 3))), 'intrinsics'),
    (lambda: matching.reprojection_error(np.zeros((3, 2, K, 3)),
                                         np.zeros((4, K, 2)), np.ones((4, K))),
     'broadcast'),
    (lambda: matching.oracle(np.zeros((1, 2, K, 3)), np.zeros((1, 15, 3))), 'gt'),
    (lambda: matching.ensemble_mean(np.zeros((K, 3))), 'hyps'),
])
def test_bad_input(call, name):
  with pytest.raises(ValueError, match=name):
    call()
