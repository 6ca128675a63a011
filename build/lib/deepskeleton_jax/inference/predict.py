"""3D poses for a user's own images, with figures.

For each image (and optional person box `x0 y0 x1 y1`; otherwise the whole
image), crops at every hypothesis' crop scale, runs the trained SkeletonMapNet
and regressors, matches the hypotheses against the hourglass' 2D detections
(scaled orthographic, weighted by the detection confidences: a user's image
has no known camera), and writes `<name>.json` (2D joints in image pixels,
the chosen 3D pose, all hypotheses) and `<name>.png` (input with 2D overlay,
fg/bg maps, the chosen 3D pose from a novel viewpoint with the other
hypotheses faded behind it). `predict_video.py` does the same for videos.
"""

from __future__ import annotations

import json
import os
from typing import Any

from absl import logging
import ml_collections

from deepskeleton_jax import errors
from deepskeleton_jax import files
from deepskeleton_jax.data import image_ops
from deepskeleton_jax.geometry import skeleton
from deepskeleton_jax.inference import predict_video
from deepskeleton_jax.inference import predictor as predictor_lib
from deepskeleton_jax.visualization import figures


def predict(config: ml_collections.ConfigDict, workdir: str) -> Any:
  """Predicts every image in `config.predict.images`, or `config.predict.video`.

  Args:
    config: finalised config.
    workdir: the experiment directory with the trained stages.

  Returns:
    The JSON records of the images, or with `config.predict.video` what
    `predict_video.predict_video` returns.
  """
  if str(config.predict.video).strip():
    if str(config.predict.images).strip():
      raise errors.ConfigError('config.predict.images and config.predict.video are both '
                               'set: expected one of them')
    return predict_video.predict_video(config, workdir)
  paths = [p.strip() for p in str(config.predict.images).split(',') if p.strip()]
  if not paths:
    raise errors.ConfigError('config.predict.images is empty: pass '
                             '--config.predict.images=a.jpg,b.jpg (or '
                             '--config.predict.video=clip.mp4)')
  boxes = predictor_lib.parse_boxes(config.predict.boxes, len(paths))
  images = [image_ops.read_image(p) for p in paths]  # every file is checked first
  predictor = predictor_lib.Predictor(config, workdir)
  out_dir = config.predict.output_dir or os.path.join(workdir, 'predict')
  os.makedirs(out_dir, exist_ok=True)
  source = 'hourglass' if 'hourglass' in predictor.loaded else 'projection of the base hypothesis'
  records = []
  for path, image, box in zip(paths, images, boxes):
    out = predictor(predictor_lib.make_batch([image], [box], predictor.crop_scales,
                                             predictor.lay.input_size))
    chosen, hyps = int(out['chosen'][0]), out['hyps'][0]
    name = os.path.splitext(os.path.basename(path))[0]
    record = {'image': path, 'box': None if box is None else box.tolist(),
              'joints_2d': out['joints_2d'][0].tolist(), 'joints_2d_source': source,
              'joint_names': list(skeleton.JOINT_NAMES), 'chosen_hypothesis': chosen,
              'joints_3d_mm': hyps[chosen].tolist(), 'hypotheses_mm': hyps.tolist(),
              'hypotheses_config': [list(h) for h in predictor.lay.hypotheses]}
    files.write_text(os.path.join(out_dir, f'{name}.json'), json.dumps(record, indent=1))
    maps = out['maps'][0, chosen]
    figures.prediction_figure(os.path.join(out_dir, f'{name}.png'), image, out['joints_2d'][0],
                              maps[..., :3], maps[..., 3:], hyps, chosen,
                              title=f'{name}: hypothesis {chosen} chosen')
    logging.info('predict: %s -> %s/%s.{json,png}', path, out_dir, name)
    records.append(record)
  return records
