"""Tests for deepskeleton_jax.camera against hand computations and invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from deepskeleton_jax.geometry import camera


def _random_rotation(seed):
  return Rotation.random(random_state=seed).as_matrix()


@pytest.mark.parametrize('xp', [np, jnp])
def test_project_matches_hand_computation(xp):
  points = xp.asarray([[100.0, -50.0, 2000.0], [0.0, 0.0, 1000.0]])
  focal = xp.asarray([1000.0, 1100.0])
  center = xp.asarray([500.0, 400.0])
  out = camera.project(points, focal, center)
  # u = 1000 * 100 / 2000 + 500, v = 1100 * -50 / 2000 + 400.
  np.testing.assert_allclose(np.asarray(out), [[550.0, 372.5], [500.0, 400.0]],
                             rtol=1e-6)
  assert isinstance(out, np.ndarray) == (xp is np)
  packed = camera.project_intrinsics(
      points, xp.asarray([1000.0, 1100.0, 500.0, 400.0]))
  np.testing.assert_allclose(np.asarray(packed), np.asarray(out), rtol=1e-6)


def test_project_batched_intrinsics():
  rng = np.random.default_rng(0)
  points = rng.uniform([-500, -500, 2000], [500, 500, 6000], (4, 7, 3))
  intr = rng.uniform([900, 900, 400, 400], [1200, 1200, 600, 600], (4, 4))
  out = camera.project_intrinsics(points, intr)
  for b in range(4):
    for n in range(7):
      x, y, z = points[b, n]
      fx, fy, cx, cy = intr[b]
      np.testing.assert_allclose(out[b, n], [fx * x / z + cx, fy * y / z + cy])


def _martinez_distortion(point, f, c, k, p_h36m):
  """Human3.6M release / 3d-pose-baseline formula, one point, plain floats."""
  x, y = point[0] / point[2], point[1] / point[2]
  r2 = x * x + y * y
  radial = 1 + k[0] * r2 + k[1] * r2**2 + k[2] * r2**3
  tan = p_h36m[0] * y + p_h36m[1] * x
  xd = x * (radial + tan) + p_h36m[1] * r2
  yd = y * (radial + tan) + p_h36m[0] * r2
  return [f[0] * xd + c[0], f[1] * yd + c[1]]


@pytest.mark.parametrize('xp', [np, jnp])
def test_distortion(xp):
  rng = np.random.default_rng(1)
  points = rng.uniform([-800, -800, 2500], [800, 800, 5000], (9, 3))
  f, c = np.array([1145.0, 1143.8]), np.array([512.5, 515.5])
  zero = camera.project_distorted(xp.asarray(points), xp.asarray(f),
                                  xp.asarray(c), xp.zeros(3), xp.zeros(2))
  np.testing.assert_allclose(np.asarray(zero), camera.project(points, f, c),
                             rtol=1e-5)
  k = np.array([-0.207, 0.248, -0.0031])
  p_h36m = np.array([-0.0014, -0.00098])
  out = camera.project_distorted(xp.asarray(points), xp.asarray(f),
                                 xp.asarray(c), xp.asarray(k),
                                 xp.asarray(p_h36m[::-1].copy()))
  expected = [_martinez_distortion(q, f, c, k, p_h36m) for q in points]
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5)
  assert np.abs(np.asarray(out) - np.asarray(zero)).max() > 1.0


@pytest.mark.parametrize('xp', [np, jnp])
def test_world_camera_round_trip(xp):
  rng = np.random.default_rng(2)
  rot = _random_rotation(3)
  cam_center = rng.normal(0, 3000, 3)
  t = camera.translation_from_center(xp.asarray(rot), xp.asarray(cam_center))
  world = rng.normal(0, 1000, (2, 5, 3))
  cam = camera.world_to_camera(xp.asarray(world), xp.asarray(rot), t)
  # Independent: X_cam = R (X_world - C).
  np.testing.assert_allclose(np.asarray(cam), (world - cam_center) @ rot.T,
                             rtol=1e-4, atol=1e-2)
  back = camera.camera_to_world(cam, xp.asarray(rot), t)
  np.testing.assert_allclose(np.asarray(back), world, rtol=1e-4, atol=1e-2)
  origin = camera.world_to_camera(xp.asarray(cam_center[None]), xp.asarray(rot), t)
  np.testing.assert_allclose(np.asarray(origin), np.zeros((1, 3)), atol=1e-2)


@pytest.mark.parametrize('xp', [np, jnp])
@pytest.mark.parametrize('angle', [0.0, 30.0, -90.0])
def test_crop_affine_maps_box_corners(xp, angle):
  center = np.array([320.0, 240.0])
  box, size = 150.0, 64
  a = camera.crop_affine(xp.asarray(center), xp.asarray(box), size,
                         xp.asarray(angle))
  h = box / 2
  # The box turned counter-clockwise as seen on screen (y down).
  th = np.deg2rad(angle)
  screen_ccw = np.array([[np.cos(th), np.sin(th)], [-np.sin(th), np.cos(th)]])
  corners = center + np.array([[-h, -h], [h, -h], [h, h], [-h, h]]) @ screen_ccw.T
  out = camera.apply_affine(xp.asarray(corners), a)
  np.testing.assert_allclose(np.asarray(out),
                             [[0, 0], [size, 0], [size, size], [0, size]],
                             atol=1e-3)
  np.testing.assert_allclose(
      np.asarray(camera.apply_affine(xp.asarray(center[None]), a)),
      [[size / 2, size / 2]], atol=1e-3)


@pytest.mark.parametrize('xp', [np, jnp])
def test_crop_affine_inverse_and_batch(xp):
  rng = np.random.default_rng(4)
  centers = rng.uniform(100, 900, (5, 2))
  angles = rng.uniform(-45, 45, 5)
  # A scalar box size with batched centres broadcasts.
  a = camera.crop_affine(xp.asarray(centers), 200.0, 56, xp.asarray(angles))
  assert a.shape == (5, 2, 3)
  inv = camera.invert_affine(a)
  eye = np.broadcast_to(np.eye(2, 3), (5, 2, 3))
  np.testing.assert_allclose(np.asarray(camera.compose_affine(inv, a)), eye,
                             atol=1e-4)
  np.testing.assert_allclose(np.asarray(camera.compose_affine(a, inv)), eye,
                             atol=1e-4)
  pts = rng.uniform(0, 1000, (5, 9, 2))
  back = camera.apply_affine(camera.apply_affine(xp.asarray(pts), a), inv)
  np.testing.assert_allclose(np.asarray(back), pts, atol=1e-2)
  # compose(outer, inner) applies inner first.
  b = camera.crop_affine(xp.asarray([10.0, 20.0]), 30.0, 56)
  both = camera.apply_affine(xp.asarray(pts), camera.compose_affine(b, a))
  seq = camera.apply_affine(camera.apply_affine(xp.asarray(pts), a), b)
  np.testing.assert_allclose(np.asarray(both), np.asarray(seq), rtol=1e-4,
                             atol=1e-2)


def test_affine_intrinsics_commutes_with_projection():
  rng = np.random.default_rng(5)
  intr = np.array([1145.0, 1143.0, 512.0, 515.0])
  points = rng.uniform([-500, -500, 3000], [500, 500, 5000], (16, 3))
  a = camera.crop_affine(np.array([530.0, 480.0]), 400.0, 224)
  direct = camera.apply_affine(camera.project_intrinsics(points, intr), a)
  via = camera.project_intrinsics(points, camera.affine_intrinsics(intr, a))
  np.testing.assert_allclose(via, direct, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize('xp', [np, jnp])
def test_scaled_orthographic_fit(xp):
  rng = np.random.default_rng(6)
  x3 = rng.normal(0, 300, (3, 16, 3))
  scale = np.array([0.05, 0.2, 1.5])
  offset = rng.uniform(0, 200, (3, 2))
  x2 = scale[:, None, None] * x3[..., :2] + offset[:, None]
  s, o = camera.fit_scaled_orthographic(xp.asarray(x3), xp.asarray(x2))
  np.testing.assert_allclose(np.asarray(s), scale, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(o), offset, rtol=1e-4, atol=1e-3)
  # Zero-weight joints are ignored, however wrong.
  corrupted = x2.copy()
  corrupted[:, :4] += 500.0
  w = np.ones((3, 16))
  w[:, :4] = 0
  s, o = camera.fit_scaled_orthographic(xp.asarray(x3), xp.asarray(corrupted),
                                        xp.asarray(w))
  np.testing.assert_allclose(np.asarray(s), scale, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(o), offset, rtol=1e-4, atol=1e-3)


def test_scaled_orthographic_fit_is_least_squares():
  rng = np.random.default_rng(7)
  x3 = rng.normal(0, 300, (16, 3))
  x2 = rng.normal(100, 50, (16, 2))
  w = rng.uniform(0, 1, 16)
  s, o = camera.fit_scaled_orthographic(x3, x2, w)
  # Weighted least squares over (s, o_x, o_y), solved independently.
  a = np.zeros((32, 3))
  a[:16, 0], a[16:, 0] = x3[:, 0], x3[:, 1]
  a[:16, 1], a[16:, 2] = 1, 1
  b = np.concatenate([x2[:, 0], x2[:, 1]])
  sw = np.sqrt(np.concatenate([w, w]))
  sol = np.linalg.lstsq(a * sw[:, None], b * sw, rcond=None)[0]
  np.testing.assert_allclose([s, *o], sol, rtol=1e-6)


def test_jit():
  rng = np.random.default_rng(8)
  points = jnp.asarray(rng.uniform([-1, -1, 3], [1, 1, 5], (2, 4, 3)))
  intr = jnp.asarray([[100.0, 100.0, 32.0, 32.0]] * 2)
  np.testing.assert_allclose(
      jax.jit(camera.project_intrinsics)(points, intr),
      camera.project_intrinsics(np.asarray(points), np.asarray(intr)), rtol=1e-5)
  a = jax.jit(camera.crop_affine, static_argnums=2)(
      jnp.zeros((2, 2)), jnp.ones(2), 8, jnp.zeros(2))
  assert a.shape == (2, 2, 3)


@pytest.mark.parametrize('call, name', [
    (lambda: camera.project(np.zeros((4, 2)), np.ones(2), np.ones(2)), 'points'),
    (lambda: camera.project_intrinsics(np.ones((4, 3)), np.ones(3)),
     'intrinsics'),
    (lambda: camera.world_to_camera(np.ones((4, 3)), np.eye(2), np.ones(3)),
     'rotation'),
    (lambda: camera.apply_affine(np.ones((4, 2)), np.ones((3, 3))), 'affine'),
    (lambda: camera.crop_affine(np.ones(3), 1.0, 8), 'center'),
    (lambda: camera.fit_scaled_orthographic(np.ones((5, 3)), np.ones((4, 2))),
     'points_3d'),
    (lambda: camera.fit_scaled_orthographic(np.ones((5, 3)), np.ones((5, 2)),
                                            np.ones(4)), 'weights'),
])
def test_bad_shapes(call, name):
  with pytest.raises(ValueError, match=name):
    call()
