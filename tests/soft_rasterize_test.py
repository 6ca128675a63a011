"""Tests for geometry/soft_rasterize.py against the exact rasterizer and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepskeleton_jax.geometry import rasterize
from deepskeleton_jax.geometry import soft_rasterize

SIZE = 16


def random_poses(rng, lead, size=SIZE):
  joints = rng.uniform(-0.2 * size, 1.2 * size, lead + (16, 2))
  depth = rng.uniform(-1000, 1000, lead + (16,))
  visible = rng.uniform(size=lead + (16,)) < 0.85
  return joints.astype(np.float32), depth.astype(np.float32), visible


def test_converges_to_the_exact_maps():
  rng = np.random.default_rng(0)
  joints, depth, visible = random_poses(rng, (6,))
  exact = np.concatenate(rasterize.skeleton_maps(joints, depth, 3.0, SIZE, visible), -1)
  errors = []
  for temperature, depth_temperature in ((1.0, 100.0), (0.1, 1.0), (0.01, 1e-2), (1e-4, 1e-6)):
    soft = soft_rasterize.soft_render_targets(joints, depth, visible, 3.0, SIZE,
                                              temperature=temperature,
                                              depth_temperature=depth_temperature)
    errors.append(float(np.abs(np.asarray(soft) - exact).mean()))
  assert all(a > b for a, b in zip(errors, errors[1:])), errors
  assert errors[0] > 0.1 and errors[-1] < 1e-3, errors
  # Hard edges and a hard order: the exact rule, ties at joints included.
  hard = soft_rasterize.soft_skeleton_maps(joints, depth, 3.0, SIZE, visible,
                                           temperature=0.0, depth_temperature=0.0)
  np.testing.assert_allclose(np.concatenate(hard, -1), exact, atol=1e-6)


def test_gradients_match_finite_differences():
  rng = np.random.default_rng(1)
  with jax.enable_x64(True):
    joints = jnp.asarray(rng.uniform(2, 10, (16, 2)))
    depth = jnp.asarray(rng.uniform(-50, 50, (16,)))
    probe = jnp.asarray(rng.normal(size=(12, 12, 6)))

    def loss(j, d):
      maps = soft_rasterize.soft_render_targets(j, d, None, 2.5, 12, temperature=0.7,
                                                depth_temperature=5.0)
      assert maps.dtype == jnp.float64
      return jnp.sum(maps * probe)

    grads = jax.grad(loss, argnums=(0, 1))(joints, depth)
    eps = 1e-6
    for arg, grad in enumerate(grads):
      x = (joints, depth)[arg]
      for idx in zip(*(rng.integers(0, n, 8) for n in x.shape)):
        bump = jnp.zeros_like(x).at[idx].set(eps)
        args = [joints, depth]
        args[arg] = x + bump
        up = loss(*args)
        args[arg] = x - bump
        down = loss(*args)
        np.testing.assert_allclose(grad[idx], (up - down) / (2 * eps), rtol=1e-5, atol=1e-7,
                                   err_msg=f'argument {arg} index {idx}')
    assert float(jnp.abs(grads[0]).sum()) > 0 and float(jnp.abs(grads[1]).sum()) > 0


def test_jit_vmap_and_leading_axes_agree():
  rng = np.random.default_rng(2)
  joints, depth, visible = random_poses(rng, (2, 3))
  widths = np.array([2.0, 3.0, 4.0], np.float32)
  direct = soft_rasterize.soft_skeleton_maps(joints, depth, widths, SIZE, visible)
  fn = jax.jit(lambda j, d, v: soft_rasterize.soft_skeleton_maps(j, d, widths, SIZE, v))
  mapped = jax.vmap(fn)(joints, depth, visible)
  for a, b in zip(direct, mapped):
    assert a.shape == (2, 3, SIZE, SIZE, 3)
    np.testing.assert_allclose(a, b, atol=1e-6)
  one = soft_rasterize.soft_skeleton_maps(joints[1, 2], depth[1, 2], 4.0, SIZE, visible[1, 2])
  np.testing.assert_allclose(one[1], direct[1][1, 2], atol=1e-6)


def test_bad_inputs_raise():
  joints, depth, _ = random_poses(np.random.default_rng(3), (1,))
  with pytest.raises(ValueError, match='temperature must be finite'):
    soft_rasterize.soft_skeleton_maps(joints, depth, 3.0, SIZE, temperature=-1.0)
  with pytest.raises(ValueError, match='depth must have shape'):
    soft_rasterize.soft_skeleton_maps(joints, depth[..., :3], 3.0, SIZE)
