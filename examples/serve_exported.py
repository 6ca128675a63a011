"""Runs an exported DeepSkeleton-JAX model with nothing but jax and numpy.

  python examples/serve_exported.py EXPORT_DIR CROPS.npy OUT.npz

EXPORT_DIR holds `model.jax` and `model.json` from
`python run.py --mode=export`; CROPS.npy is a uint8 array [b, C, S, S, 3] of
RGB person crops, one per crop scale of `model.json`'s `preprocessing`
(`crop` below makes them from an image array and a person box). OUT.npz gets
every output under its `model.json` name. This file imports neither flax
nor deepskeleton_jax: copy it next to the artifact and serve from there.

`model.json` records the size and SHA-256 of `model.jax` ("artifact"); a
file that does not match (truncated, damaged, from another export) is
refused with one line, `error: ...`, and exit status 2. `crop` and
`to_image` need numpy alone (an ONNX server uses them too, see
examples/serve_onnx.py).
"""

import hashlib
import json
import os
import sys

import numpy as np


def load(export_dir):
  """Returns (fn: crops -> {name: array}, spec: model.json as a dict).

  Raises:
    ValueError: model.json is not JSON, or model.jax is not the artifact it
      describes (size or SHA-256) or not a jax.export artifact.
    OSError: a file cannot be read.
  """
  import jax  # pylint: disable=g-import-not-at-top  (crop and to_image need numpy only)
  spec_path = os.path.join(export_dir, 'model.json')
  with open(spec_path) as f:
    try:
      spec = json.load(f)
    except ValueError as e:
      raise ValueError(f'{spec_path} is not valid JSON ({e}): export again') from None
  path = os.path.join(export_dir, 'model.jax')
  with open(path, 'rb') as f:
    data = f.read()
  record = spec.get('artifact')
  if record is not None:
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != record['bytes'] or digest != record['sha256']:
      raise ValueError(
          f'{path} has {len(data)} bytes with SHA-256 {digest}, but {spec_path} records '
          f'{record["bytes"]} bytes with SHA-256 {record["sha256"]}: the file is damaged '
          'or from another export; export again (python run.py --mode=export)')
  try:
    exported = jax.export.deserialize(bytearray(data))
  except Exception as e:  # pylint: disable=broad-except  # flatbuffers raise many kinds
    raise ValueError(f'{path} is not a jax.export artifact ({type(e).__name__}: {e}); '
                     'export again') from None
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
  try:
    fn, _ = load(argv[1])
  except (OSError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  outputs = fn(np.load(argv[2]))
  np.savez(argv[3], **outputs)
  print({k: v.shape for k, v in outputs.items()})


if __name__ == '__main__':
  main(sys.argv)
