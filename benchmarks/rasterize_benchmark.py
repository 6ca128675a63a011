"""Throughput of `rasterize.skeleton_maps` against an OpenCV reference.

The reference draws the same poses with `cv2.line` in painter's order: for the
foreground map the bones sorted far to near by mean end depth (the nearest is
drawn last and stays on top), for the background map near to far. That is the
closest OpenCV gets to the occlusion rule; it is wrong wherever the depth order
of two crossing bones is not the order of their mean depths, and it rounds the
stick width to whole pixels. `opencv_agreement` reports the fraction of pixels
on which the two agree. Both sides render fg + bg float32 maps of the same
poses and are timed in the same run, interleaved, best of `repeats`.

  python -m benchmarks.rasterize_benchmark [--batch=1024 --size=56]

prints one JSON line and a table.

On XLA:CPU most of the jax time at batch 1024 is the kernel faulting in the
two fresh 38.5 MB output buffers (~19,000 4-KiB page faults per call; the
rendering itself is ~8 ms), while NumPy backs the OpenCV side's output with
transparent huge pages (it madvises large arrays). Where THP is in `madvise`
mode, `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` gives XLA's buffers huge pages
as well; the result records the setting as `glibc_tunables`.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from absl import app
from absl import flags
import cv2
import jax
import jax.numpy as jnp
import numpy as np

from deepskeleton_jax.geometry import rasterize
from deepskeleton_jax.geometry import skeleton

# A standing person (mm; x right, y down, z away from the camera), 16 joints.
_TEMPLATE = np.array([
    [-110, 880, 0], [-100, 460, 30], [-100, 0, 0], [100, 0, 0],
    [100, 460, 30], [110, 880, 0], [0, 0, 0], [0, -500, 0], [0, -580, 0],
    [0, -800, 0], [-300, 10, -120], [-260, -230, 30], [-180, -480, 0],
    [180, -480, 0], [260, -230, 30], [300, 10, -120]], np.float64)


def random_poses(rng: np.random.Generator, batch: int,
                 size: int) -> tuple[np.ndarray, np.ndarray]:
  """Plausible random poses: jittered template, random yaw/pitch, projected.

  Args:
    rng: numpy random generator.
    batch: number of poses.
    size: map side in pixels; the figure spans about 80% of it.

  Returns:
    joints_2d [batch, 16, 2] float32 map pixels, depth [batch, 16] float32 mm.
  """
  pts = _TEMPLATE + rng.normal(0.0, 80.0, (batch, 16, 3))
  yaw = rng.uniform(0, 2 * np.pi, batch)
  pitch = rng.uniform(-0.3, 0.3, batch)
  cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
  zero, one = np.zeros(batch), np.ones(batch)
  rot_y = np.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1)
  rot_x = np.stack([one, zero, zero, zero, cp, -sp, zero, sp, cp], -1)
  rot = rot_x.reshape(-1, 3, 3) @ rot_y.reshape(-1, 3, 3)
  cam = np.einsum('bij,bkj->bki', rot, pts)
  scale = 0.8 * size / 1800.0
  joints = cam[..., :2] * scale + size / 2 + [0.0, -0.04 * size]
  depth = cam[..., 2] + 5000.0
  return joints.astype(np.float32), depth.astype(np.float32)


def opencv_maps(joints_2d: np.ndarray, depth: np.ndarray, stick_width: float,
                size: int) -> np.ndarray:
  """Painter's-order OpenCV rendering, float32 [batch, 2, size, size, 3]."""
  bones = np.asarray(skeleton.BONES)
  thickness = max(1, int(round(stick_width)))
  shift = 4  # Sub-pixel end points; OpenCV's pixel centres are integers.
  ends = np.round((joints_2d[:, bones] - 0.5) * (1 << shift)).astype(np.int32)
  order = np.argsort(-depth[:, bones].mean(-1), axis=1, kind='stable')
  ends = np.take_along_axis(ends, order[:, :, None, None], 1).tolist()
  colors = [tuple(map(float, c)) for c in skeleton.BONE_COLORS]
  colors = [[colors[k] for k in o] for o in order.tolist()]
  out = np.zeros((len(joints_2d), 2, size, size, 3), np.float32)
  line, line_type = cv2.line, cv2.LINE_8
  for n, (segs, cols) in enumerate(zip(ends, colors)):
    fg, bg = out[n, 0], out[n, 1]
    for (p, q), c in zip(segs, cols):  # Far to near: nearest on top.
      line(fg, p, q, c, thickness, line_type, shift)
    for (p, q), c in zip(segs[::-1], cols[::-1]):  # Near to far.
      line(bg, p, q, c, thickness, line_type, shift)
  return out


def _seconds(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def run(batch: int = 1024, size: int = 56,
        stick_width: float = rasterize.stick_width_in_map(10, 56),
        repeats: int = 10, seed: int = 0) -> dict[str, Any]:
  """Times jitted `skeleton_maps` and the OpenCV loop on the same poses.

  Args:
    batch: poses per call.
    size: map side in pixels.
    stick_width: stick width in map pixels (default: the paper's l = 10 at
      224 px, scaled to a 56-px map).
    repeats: timed calls per side (interleaved); the best is kept.
    seed: pose seed.

  Returns:
    dict with poses/s and best ms for 'jax' and 'opencv', their `ratio`,
    `opencv_agreement` (fraction of fg and bg pixels OpenCV gets right),
    `compile_s` (the first jax call: trace, compile, run), device, CPU
    count and the `GLIBC_TUNABLES` setting.
  """
  joints, depth = random_poses(np.random.default_rng(seed), batch, size)
  render = jax.jit(rasterize.skeleton_maps, static_argnums=3)
  dev_joints, dev_depth = jax.device_put(joints), jax.device_put(depth)
  width = jnp.float32(stick_width)
  start = time.perf_counter()
  fg, bg = jax.block_until_ready(render(dev_joints, dev_depth, width, size))
  compile_s = time.perf_counter() - start
  reference = opencv_maps(joints, depth, stick_width, size)
  agreement = float(np.mean(np.all(
      np.stack([fg, bg], 1) == reference, axis=-1)))
  del fg, bg, reference
  jax_s, cv_s = float('inf'), float('inf')
  for _ in range(repeats):
    jax_s = min(jax_s, _seconds(lambda: jax.block_until_ready(
        render(dev_joints, dev_depth, width, size))))
    cv_s = min(cv_s, _seconds(
        lambda: opencv_maps(joints, depth, stick_width, size)))
  device = jax.devices()[0]
  return {
      'batch': batch, 'size': size, 'stick_width': float(stick_width),
      'jax_poses_per_s': batch / jax_s, 'opencv_poses_per_s': batch / cv_s,
      'ratio': cv_s / jax_s, 'jax_ms': 1e3 * jax_s, 'opencv_ms': 1e3 * cv_s,
      'opencv_agreement': agreement, 'compile_s': compile_s,
      'device': f'{device.platform}:{device.device_kind}',
      'cpu_count': os.cpu_count(),
      'glibc_tunables': os.environ.get('GLIBC_TUNABLES', ''),
  }


def main(argv):
  del argv
  result = run(_BATCH.value, _SIZE.value,
               rasterize.stick_width_in_map(_WIDTH.value, _SIZE.value),
               _REPEATS.value)
  print(json.dumps(result))
  print(f"{'':10s}{'poses/s':>12s}{'ms/batch':>10s}")
  print(f"{'jax':10s}{result['jax_poses_per_s']:12.0f}{result['jax_ms']:10.2f}")
  print(f"{'opencv':10s}{result['opencv_poses_per_s']:12.0f}"
        f"{result['opencv_ms']:10.2f}")
  print(f"ratio jax/opencv {result['ratio']:.2f}x on {result['device']} "
        f"({result['cpu_count']} CPUs), batch {result['batch']}, "
        f"{result['size']}x{result['size']}, width {result['stick_width']:.2f}"
        f" px; OpenCV agrees on {100 * result['opencv_agreement']:.1f}% of "
        'pixels')


if __name__ == '__main__':
  # Flags only when run as a script: importing this module (run.py's benchmark
  # mode, the tests) must not define flags that clash with the importer's.
  _BATCH = flags.DEFINE_integer('batch', 1024, 'Poses per call.')
  _SIZE = flags.DEFINE_integer('size', 56, 'Map side in pixels.')
  _WIDTH = flags.DEFINE_float('stick_width_224', 10.0,
                              'Stick width in 224-px input pixels.')
  _REPEATS = flags.DEFINE_integer('repeats', 10, 'Timed calls per side.')
  app.run(main)
