"""Tests for deepskeleton_jax.rasterize against brute-force NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepskeleton_jax.geometry import rasterize
from deepskeleton_jax.benchmarks import rasterize_benchmark
from deepskeleton_jax.geometry import skeleton

COLORS = np.concatenate([skeleton.BONE_COLORS, np.zeros((1, 3), np.float32)])
DIST_TOL = 1e-3    # px^2: coverage within this of the radius is ambiguous.
DEPTH_TOL = 1e-2   # depth units: near-ties within this are ambiguous.


def reference_one(joints, depth, width, size, visible):
  """Per-pixel brute force in float64 for one pose.

  Returns:
    fg index [S, S], bg index [S, S] (15 = none) and an `ambiguous` mask of
    pixels whose answer float32 rounding may legitimately change.
  """
  joints = np.asarray(joints, np.float64)
  depth = np.asarray(depth, np.float64)
  r2 = (width / 2.0) ** 2
  centre = np.stack(np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5,
                                indexing='xy'), -1)  # [S, S, (x, y)]
  depths, close = [], np.zeros((size, size), bool)
  for a, b in skeleton.BONES:
    pa, pb = joints[a], joints[b]
    if not (visible[a] and visible[b]):
      depths.append(np.full((size, size), np.nan))
      continue
    d = pb - pa
    l2 = d @ d
    t = np.zeros((size, size)) if l2 == 0 else np.clip(
        ((centre - pa) @ d) / l2, 0.0, 1.0)
    nearest = pa + t[..., None] * d
    dist2 = np.sum((centre - nearest) ** 2, -1)
    lerp = depth[a] + t * (depth[b] - depth[a])
    z = np.where(t >= 1, depth[b], np.where(t <= 0, depth[a], lerp))
    depths.append(np.where(dist2 <= r2, z, np.nan))
    close |= np.abs(dist2 - r2) < DIST_TOL
  z = np.stack(depths)  # [15, S, S], NaN = not covered.
  covered = ~np.isnan(z)
  any_cov = covered.any(0)
  fg = np.where(any_cov, np.argmin(np.where(covered, z, np.inf), 0), 15)
  bg = np.where(any_cov, np.argmax(np.where(covered, z, -np.inf), 0), 15)
  # Near-ties that are not exact ties: rounding may pick either bone.
  ambiguous = close.copy()
  for best in (fg, bg):
    zb = np.take_along_axis(z, np.minimum(best, 14)[None], 0)[0]
    gap = np.abs(z - zb[None])
    ambiguous |= any_cov & np.any(covered & (gap > 0) & (gap < DEPTH_TOL), 0)
  return fg, bg, ambiguous


def reference(joints, depth, width, size, visible):
  """Reference over flattened leading dims; colours [..., S, S, 3] + mask."""
  lead = joints.shape[:-2]
  width = np.broadcast_to(width, lead).reshape(-1)
  outs = [reference_one(j, d, w, size, v) for j, d, w, v in zip(
      joints.reshape(-1, 16, 2), depth.reshape(-1, 16), width,
      visible.reshape(-1, 16))]
  fg, bg, amb = (np.stack(x).reshape(lead + (size, size)) for x in zip(*outs))
  return COLORS[fg], COLORS[bg], amb


def random_poses(rng, lead, size):
  joints = rng.uniform(-0.2 * size, 1.2 * size, lead + (16, 2))
  depth = rng.uniform(-1000, 1000, lead + (16,))
  visible = rng.uniform(size=lead + (16,)) < 0.85
  return joints.astype(np.float32), depth.astype(np.float32), visible


def assert_matches_reference(fg, bg, joints, depth, width, size, visible):
  ref_fg, ref_bg, amb = reference(joints, depth, width, size, visible)
  assert amb.mean() < 0.01
  for got, want in ((fg, ref_fg), (bg, ref_bg)):
    got = np.asarray(got)
    assert got.shape == want.shape and got.dtype == np.float32
    wrong = np.any(got != want, -1) & ~amb
    assert not wrong.any(), f'{wrong.sum()} pixels differ, first at ' \
        f'{np.argwhere(wrong)[0]}'


def test_matches_bruteforce_reference_with_leading_dims():
  rng = np.random.default_rng(0)
  size = 32
  joints, depth, visible = random_poses(rng, (2, 3), size)
  joints[0, 0, 7] = joints[0, 0, 8]  # A zero-length bone (neck): a disc.
  widths = np.array([1.0, 2.5, 6.0], np.float32)  # One per hypothesis.
  fg, bg = jax.jit(rasterize.skeleton_maps, static_argnums=3)(
      joints, depth, widths, size, visible)
  assert_matches_reference(fg, bg, joints, depth, widths, size, visible)
  # The maps are not trivial: several bones and real occlusions.
  assert np.mean(np.any(np.asarray(fg) != np.asarray(bg), -1)) > 0.01


def test_matches_reference_eagerly_with_scalar_width_and_all_visible():
  rng = np.random.default_rng(1)
  size = 24
  joints, depth, _ = random_poses(rng, (4,), size)
  fg, bg = rasterize.skeleton_maps(joints, depth, 3.0, size)
  assert_matches_reference(fg, bg, joints, depth, 3.0, size,
                           np.ones((4, 16), bool))


def two_bone_pose(depth_0, depth_5):
  """Bone 0 (joints 0-1) and bone 5 (joints 4-5) crossing as an X."""
  joints = np.zeros((16, 2), np.float32)
  joints[[0, 1, 4, 5]] = [[4, 4], [28, 28], [28, 4], [4, 28]]
  depth = np.zeros(16, np.float32)
  depth[[0, 1]] = depth_0
  depth[[4, 5]] = depth_5
  visible = np.zeros(16, bool)
  visible[[0, 1, 4, 5]] = True
  return joints, depth, visible


def segment_distance(size, pa, pb):
  """Independent distance map from pixel centres to segment pa-pb."""
  y, x = np.mgrid[:size, :size] + 0.5
  p = np.stack([x, y], -1)
  d = np.asarray(pb, np.float64) - pa
  t = np.clip(((p - pa) @ d) / (d @ d), 0, 1)
  return np.linalg.norm(p - (pa + t[..., None] * d), axis=-1)


@pytest.mark.parametrize('near_bone,far_bone', [(0, 5), (5, 0)])
def test_crossing_limbs_differ_exactly_on_overlap(near_bone, far_bone):
  size, width = 32, 4.0
  joints, depth, visible = two_bone_pose(
      *((100.0, 200.0) if near_bone == 0 else (200.0, 100.0)))
  fg, bg = rasterize.skeleton_maps(joints, depth, width, size, visible)
  fg, bg = np.asarray(fg), np.asarray(bg)
  on_0 = segment_distance(size, joints[0], joints[1]) <= width / 2
  on_5 = segment_distance(size, joints[4], joints[5]) <= width / 2
  overlap = on_0 & on_5
  assert overlap.sum() > 10
  np.testing.assert_array_equal(np.any(fg != bg, -1), overlap)
  np.testing.assert_array_equal(fg[overlap], np.broadcast_to(
      skeleton.BONE_COLORS[near_bone], fg[overlap].shape))
  np.testing.assert_array_equal(bg[overlap], np.broadcast_to(
      skeleton.BONE_COLORS[far_bone], bg[overlap].shape))
  np.testing.assert_array_equal(np.any(fg != 0, -1), on_0 | on_5)


def test_equal_depths_tie_to_lower_bone_index():
  rng = np.random.default_rng(2)
  size = 32
  joints, _, visible = random_poses(rng, (3,), size)
  depth = np.full((3, 16), 5.0, np.float32)
  fg, bg = rasterize.skeleton_maps(joints, depth, 3.0, size, visible)
  np.testing.assert_array_equal(fg, bg)
  ref_fg, _, ambiguous = reference(joints, depth, 3.0, size, visible)
  np.testing.assert_array_equal(np.asarray(fg)[~ambiguous], ref_fg[~ambiguous])


def test_invisible_joints_drop_their_bones():
  rng = np.random.default_rng(3)
  size = 32
  joints, depth, _ = random_poses(rng, (), size)
  visible = np.ones(16, bool)
  visible[11] = False  # r_elbow: drops r_forearm (9) and r_upper_arm (10).
  joints[11] = np.nan  # Invisible joints may hold anything.
  fg, bg = rasterize.skeleton_maps(joints, depth, 4.0, size, visible)
  for m in (np.asarray(fg), np.asarray(bg)):
    for k in (9, 10):
      assert not np.any(np.all(m == skeleton.BONE_COLORS[k], -1))
  assert_matches_reference(fg, bg, joints, depth, 4.0, size, visible)


def test_joints_outside_the_map():
  size = 24
  joints = np.full((16, 2), -500.0, np.float32)
  joints[0] = [-100.0, 10.5]  # Bone 0 crosses the whole map on row 10's
  joints[1] = [200.0, 10.5]   # centre line; both ends far outside.
  visible = np.zeros(16, bool)
  visible[[0, 1]] = True
  fg, bg = rasterize.skeleton_maps(joints, np.zeros(16), 2.0, size, visible)
  expected = np.zeros((size, size, 3), np.float32)
  expected[9:12] = skeleton.BONE_COLORS[0]  # |i + 0.5 - 10.5| <= 1 (inclusive).
  np.testing.assert_array_equal(fg, expected)
  np.testing.assert_array_equal(bg, expected)
  # With every joint visible, the other bones (towards (-500, -500)) miss the
  # map entirely and change nothing.
  fg_all, _ = rasterize.skeleton_maps(joints, np.zeros(16), 2.0, size)
  np.testing.assert_array_equal(fg_all, expected)


def test_vmap_and_per_example_widths_match_separate_calls():
  rng = np.random.default_rng(4)
  size = 24
  joints, depth, visible = random_poses(rng, (3,), size)
  widths = np.array([1.5, 3.0, 5.0], np.float32)
  render = lambda j, d, w, v: rasterize.skeleton_maps(j, d, w, size, v)
  batched = jax.jit(render)(joints, depth, widths, visible)
  vmapped = jax.jit(jax.vmap(render))(joints, depth, widths, visible)
  for i in range(3):
    single = render(joints[i], depth[i], float(widths[i]), visible[i])
    for b, v, s in zip(batched, vmapped, single):
      np.testing.assert_array_equal(b[i], s)
      np.testing.assert_array_equal(v[i], s)


def test_render_targets_and_width_conversion():
  rng = np.random.default_rng(5)
  joints, depth, visible = random_poses(rng, (2,), 16)
  fg, bg = rasterize.skeleton_maps(joints, depth, 2.0, 16, visible)
  targets = rasterize.render_targets(joints, depth, visible, 2.0, 16)
  assert targets.shape == (2, 16, 16, 6) and targets.dtype == jnp.float32
  np.testing.assert_array_equal(targets, np.concatenate([fg, bg], -1))
  assert rasterize.stick_width_in_map(10, 56) == 2.5
  np.testing.assert_allclose(
      rasterize.stick_width_in_map(np.array([5.0, 15.0]), 56), [1.25, 3.75])


def test_nan_joints_raise_when_concrete_and_are_not_drawn_under_jit():
  rng = np.random.default_rng(6)
  size = 24
  joints, depth, _ = random_poses(rng, (2,), size)
  visible = np.ones((2, 16), bool)
  bad = joints.copy()
  bad[1, 11, 0] = np.nan
  with pytest.raises(ValueError, match='NaN'):
    rasterize.skeleton_maps(bad, depth, 3.0, size, visible)
  bad_depth = depth.copy()
  bad_depth[0, 3] = np.inf
  with pytest.raises(ValueError, match='depth'):
    rasterize.skeleton_maps(joints, bad_depth, 3.0, size)
  jitted = jax.jit(rasterize.skeleton_maps, static_argnums=3)
  got = jitted(bad, depth, 3.0, size, visible)
  hidden = visible.copy()
  hidden[1, 11] = False
  want = rasterize.skeleton_maps(joints, depth, 3.0, size, hidden)
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize('args,name', [
    (dict(joints_2d=np.zeros((2, 15, 2))), 'joints_2d'),
    (dict(joints_2d=np.zeros((2, 16, 3))), 'joints_2d'),
    (dict(depth=np.zeros((2, 15))), 'depth'),
    (dict(depth=np.zeros((3, 16))), 'depth'),
    (dict(visible=np.ones((2, 15), bool)), 'visible'),
    (dict(stick_width=np.ones(3)), 'stick_width'),
    (dict(stick_width=-1.0), 'stick_width'),
    (dict(stick_width=np.nan), 'stick_width'),
    (dict(size=0), 'size'),
    (dict(size=8.0), 'size'),
])
def test_bad_input_raises_value_error_naming_the_argument(args, name):
  kwargs = dict(joints_2d=np.zeros((2, 16, 2)), depth=np.zeros((2, 16)),
                stick_width=2.0, size=8, visible=None)
  kwargs.update(args)
  with pytest.raises(ValueError, match=name):
    rasterize.skeleton_maps(**kwargs)


def test_benchmark_smoke():
  """The benchmark runs; OpenCV's painter's order roughly agrees (no timing)."""
  result = rasterize_benchmark.run(batch=16, size=32, stick_width=2.0,
                                   repeats=1)
  assert result['jax_poses_per_s'] > 0 and result['opencv_poses_per_s'] > 0
  assert 0.9 < result['opencv_agreement'] < 1.0
