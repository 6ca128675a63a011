"""3D poses for a user's own images, with figures.

For each image (and optional person box `x0 y0 x1 y1`; otherwise the whole
image), crops at every hypothesis' crop scale, runs the trained SkeletonMapNet
and regressors, matches the hypotheses against the hourglass' 2D detections
(scaled orthographic: a user's image has no known camera), and writes
`<name>.json` (2D joints in image pixels, the chosen 3D pose, all hypotheses)
and `<name>.png` (input with 2D overlay, fg/bg maps, the chosen 3D pose from a
novel viewpoint with the other hypotheses faded behind it).
"""

from __future__ import annotations

import json
import os
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from deepskeleton_jax.geometry import camera
from deepskeleton_jax.training import config_lib
from deepskeleton_jax.evaluation import evaluate
from deepskeleton_jax.data import image_ops
from deepskeleton_jax.evaluation import matching
from deepskeleton_jax.geometry import skeleton
from deepskeleton_jax.training import stages as stages_lib
from deepskeleton_jax.evaluation import figures

K = skeleton.NUM_JOINTS


def parse_boxes(text: str, num_images: int) -> list[np.ndarray | None]:
  """Parses `--config.predict.boxes` ('x0 y0 x1 y1;...', one per image, or empty)."""
  if not text.strip():
    return [None] * num_images
  parts = [p.strip() for p in text.split(';')]
  if len(parts) != num_images:
    raise ValueError(f'config.predict.boxes has {len(parts)} boxes for {num_images} images; '
                     "expected one 'x0 y0 x1 y1' per image, separated by ';'")
  boxes = []
  for p in parts:
    vals = [float(v) for v in p.replace(',', ' ').split()]
    if len(vals) != 4 or vals[2] <= vals[0] or vals[3] <= vals[1]:
      raise ValueError(f"config.predict.boxes entry {p!r}: expected 'x0 y0 x1 y1' with x1>x0, y1>y0")
    boxes.append(np.array(vals, np.float32))
  return boxes


def make_batch(image: np.ndarray, box: np.ndarray | None, crop_scales, size: int) -> dict[str, np.ndarray]:
  """One-example batch in the input pipeline's format (labels zero)."""
  h, w = image.shape[:2]
  if box is None:
    box = np.array([0, 0, w, h], np.float32)
  center = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2], np.float32)
  side = float(max(box[2] - box[0], box[3] - box[1]))
  crops, to_image = [], []
  for c in crop_scales:
    a = camera.crop_affine(center, np.float32(side * c), size)
    crops.append(image_ops.warp_affine(image, a, size))
    to_image.append(camera.invert_affine(a))
  c = len(crop_scales)
  return {
      'image': np.stack(crops)[None], 'input_to_image': np.stack(to_image)[None].astype(np.float32),
      'joints_2d': np.zeros((1, c, K, 2), np.float32), 'visible': np.ones((1, K), bool),
      'joints_3d': np.zeros((1, K, 3), np.float32), 'has_3d': np.zeros((1,), bool),
  }


def predict(config: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
  """Predicts every image in `config.predict.images`; returns the JSON records."""
  paths = [p.strip() for p in str(config.predict.images).split(',') if p.strip()]
  if not paths:
    raise ValueError('config.predict.images is empty: pass --config.predict.images=a.jpg,b.jpg')
  boxes = parse_boxes(config.predict.boxes, len(paths))
  loaded = evaluate.load_stages(config, workdir, ('skeleton_net', 'regressor', 'hourglass'))
  for need in ('skeleton_net', 'regressor'):
    if need not in loaded:
      raise FileNotFoundError(
          f'predict needs a trained {need}: no checkpoint under {workdir}/{need}/checkpoints')
  variables = {k: v['variables'] for k, v in loaded.items()}
  norms = {k: v['norm'] for k, v in loaded.items()}
  fn = jax.jit(evaluate.make_predict_fn(config, loaded))
  out_dir = config.predict.output_dir or os.path.join(workdir, 'predict')
  os.makedirs(out_dir, exist_ok=True)
  unit = stages_lib.unit_crop_index(config)
  base = config.hypotheses.base
  records = []
  for path, box in zip(paths, boxes):
    image = image_ops.read_image(path)
    batch = make_batch(image, box, config.data.crop_scales, config.data.input_size)
    out = jax.device_get(fn(variables, norms, {k: v for k, v in batch.items()}))
    hyps = np.asarray(out['hyps'][0])
    to_image = batch['input_to_image'][0, unit]
    if 'detections' in out:
      dets = np.asarray(out['detections'])
      idx, _ = matching.select(hyps[None], dets, np.ones((1, K), bool))
      chosen = int(idx[0])
      joints_2d = camera.apply_affine(dets[0], to_image)
      source = 'hourglass'
    else:
      logging.warning('no hourglass checkpoint: using the base hypothesis, 2D from its projection')
      chosen = base
      proj = hyps[chosen, :, :2] - hyps[chosen, :, :2].mean(0)
      scale = 0.35 * config.data.input_size / max(np.abs(proj).max(), 1e-6)
      joints_2d = camera.apply_affine(proj * scale + config.data.input_size / 2, to_image)
      source = 'projection of the base hypothesis'
    name = os.path.splitext(os.path.basename(path))[0]
    record = {'image': path, 'box': None if box is None else box.tolist(),
              'joints_2d': np.asarray(joints_2d).tolist(), 'joints_2d_source': source,
              'joint_names': list(skeleton.JOINT_NAMES), 'chosen_hypothesis': chosen,
              'joints_3d_mm': hyps[chosen].tolist(), 'hypotheses_mm': hyps.tolist(),
              'hypotheses_config': [list(h) for h in config_lib.hypothesis_list(config)]}
    json_path = os.path.join(out_dir, f'{name}.json')
    tmp = f'{json_path}.tmp'
    with open(tmp, 'w') as f:
      json.dump(record, f, indent=1)
    os.replace(tmp, json_path)
    maps = np.asarray(out['maps'][chosen, 0])
    figures.prediction_figure(os.path.join(out_dir, f'{name}.png'), image, np.asarray(joints_2d),
                                maps[..., :3], maps[..., 3:], hyps, chosen,
                                title=f'{name}: hypothesis {chosen} chosen')
    logging.info('predict: %s -> %s/%s.{json,png}', path, out_dir, name)
    records.append(record)
  return records
