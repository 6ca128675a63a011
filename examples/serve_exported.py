"""Runs an exported DeepSkeleton-JAX model with nothing but jax and numpy.

  python examples/serve_exported.py EXPORT_DIR CROPS.npy OUT.npz

EXPORT_DIR holds `model.jax` and `model.json` from
`python run.py --mode=export`; CROPS.npy is a uint8 array [b, C, S, S, 3] of
RGB person crops, one per crop scale of `model.json`'s `preprocessing`
(`crop` below makes them from an image array and a person box). OUT.npz gets
every output under its `model.json` name. This file imports neither flax
nor deepskeleton_jax: copy it next to the artifact and serve from there.
`crop` and `to_image` need numpy alone (an ONNX server uses them too, see
examples/serve_onnx.py).
"""

import json
import os
import sys

import numpy as np


def load(export_dir):
  """Returns (fn: crops -> {name: array}, spec: model.json as a dict)."""
  import jax  # pylint: disable=g-import-not-at-top  (crop and to_image need numpy only)
  with open(os.path.join(export_dir, 'model.json')) as f:
    spec = json.load(f)
  with open(os.path.join(export_dir, 'model.jax'), 'rb') as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  names = [o['name'] for o in spec['outputs']]

  def fn(crops):
    return {n: np.asarray(v) for n, v in zip(names, exported.call(np.asarray(crops, np.uint8)))}

  return fn, spec


def crop(image, box, spec):
  """[C, S, S, 3] uint8 crops of an [H, W, 3] uint8 RGB image around a box.

  Bilinear sampling at the crop pixels' centres (continuous pixel convention),
  zero outside the image: the crops `python run.py --mode=predict` makes, up
  to interpolation rounding.

  Args:
    image: [H, W, 3] uint8 RGB.
    box: (x0, y0, x1, y1) in image pixels.
    spec: model.json as a dict.

  Returns:
    [C, S, S, 3] uint8.
  """
  pre = spec['preprocessing']
  size = pre['crop_size']
  centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
  side = max(box[2] - box[0], box[3] - box[1])
  img = np.pad(image.astype(np.float32), ((1, 1), (1, 1), (0, 0)))  # zero border
  out = []
  for scale in pre['crop_scales']:
    grid = (np.arange(size) + 0.5) / size * (scale * side) + centre[:, None] - scale * side / 2
    x, y = np.meshgrid(grid[0] - 0.5 + 1, grid[1] - 0.5 + 1)  # padded pixel-centre coords
    x = np.clip(x, 0, img.shape[1] - 1.001)
    y = np.clip(y, 0, img.shape[0] - 1.001)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    top = img[y0, x0] * (1 - fx) + img[y0, x0 + 1] * fx
    bottom = img[y0 + 1, x0] * (1 - fx) + img[y0 + 1, x0 + 1] * fx
    out.append(np.clip(np.round(top * (1 - fy) + bottom * fy), 0, 255).astype(np.uint8))
  return np.stack(out)


def to_image(joints_crop, box, spec):
  """Maps [..., 16, 2] joints from the c = 1 crop's pixels to image pixels."""
  centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
  side = max(box[2] - box[0], box[3] - box[1])
  return joints_crop * (side / spec['preprocessing']['crop_size']) + centre - side / 2


def main(argv):
  if len(argv) != 4:
    sys.exit(__doc__)
  fn, _ = load(argv[1])
  outputs = fn(np.load(argv[2]))
  np.savez(argv[3], **outputs)
  print({k: v.shape for k, v in outputs.items()})


if __name__ == '__main__':
  main(sys.argv)
