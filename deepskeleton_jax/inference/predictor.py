"""The trained pipeline on user inputs: person crops in, poses out in image pixels.

`Predictor` loads the trained stages once and runs one jitted
`pipeline.make_pipeline_fn` per batch shape; `make_batch` crops images at every
hypothesis' crop scale around a person box; `parse_box`/`parse_boxes` read the
boxes users give on the command line. Shared by image prediction (`predict.py`)
and video prediction (`predict_video.py`).
"""

from __future__ import annotations

from absl import logging
import jax
import ml_collections
import numpy as np

from deepskeleton_jax import errors
from deepskeleton_jax.data import image_ops
from deepskeleton_jax.experiment import stages as stages_lib
from deepskeleton_jax.geometry import camera
from deepskeleton_jax.geometry import skeleton
from deepskeleton_jax.inference import pipeline

K = skeleton.NUM_JOINTS


def parse_box(text: str, where: str) -> np.ndarray:
  """One 'x0 y0 x1 y1' box (spaces or commas); `where` names it in errors."""
  try:
    vals = [float(v) for v in text.replace(',', ' ').split()]
  except ValueError:
    vals = []
  if len(vals) != 4 or not np.all(np.isfinite(vals)) or vals[2] <= vals[0] or vals[3] <= vals[1]:
    raise errors.ConfigError(f"{where}: {text!r} is not a box; expected 'x0 y0 x1 y1' "
                             '(finite numbers) with x1 > x0 and y1 > y0')
  return np.array(vals, np.float32)


def parse_boxes(text: str, num_images: int) -> list[np.ndarray | None]:
  """Parses `--config.predict.boxes` ('x0 y0 x1 y1;...', one per image, or empty)."""
  if not text.strip():
    return [None] * num_images
  parts = [p.strip() for p in text.split(';')]
  if len(parts) != num_images:
    raise errors.ConfigError(
        f'config.predict.boxes has {len(parts)} boxes for {num_images} images; '
        "expected one 'x0 y0 x1 y1' per image, separated by ';'")
  return [parse_box(p, 'config.predict.boxes') for p in parts]


def json_array(x) -> list | float | None:
  """An array as a JSON value: the nested list (3 decimals), or None if any entry is NaN/inf.

  JSON has no NaN: outputs hold null where there is no finite result.
  """
  x = np.asarray(x)
  return None if not np.all(np.isfinite(x)) else np.round(x.astype(np.float64), 3).tolist()


def make_batch(images: list[np.ndarray], boxes: list[np.ndarray | None], crop_scales,
               size: int) -> dict[str, np.ndarray]:
  """A batch in the input pipeline's format (labels zero), one row per image.

  Args:
    images: [H, W, 3] uint8 RGB images.
    boxes: per image its person box `x0 y0 x1 y1`, or None for the whole image.
    crop_scales: `data.crop_scales`.
    size: the input side.

  Returns:
    The batch: `image` [b, C, size, size, 3], `input_to_image` [b, C, 2, 3], and
    zero labels.
  """
  crops, to_image = [], []
  for image, box in zip(images, boxes):
    h, w = image.shape[:2]
    box = np.array([0, 0, w, h], np.float32) if box is None else box
    center = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2], np.float32)
    side = float(max(box[2] - box[0], box[3] - box[1]))
    affines = [camera.crop_affine(center, np.float32(side * c), size) for c in crop_scales]
    crops.append(np.stack([image_ops.warp_affine(image, a, size) for a in affines]))
    to_image.append(np.stack([camera.invert_affine(a) for a in affines]))
  b, c = len(images), len(crop_scales)
  return {
      'image': np.stack(crops), 'input_to_image': np.stack(to_image).astype(np.float32),
      'joints_2d': np.zeros((b, c, K, 2), np.float32), 'visible': np.ones((b, K), bool),
      'joints_3d': np.zeros((b, K, 3), np.float32), 'has_3d': np.zeros((b,), bool),
  }


class Predictor:
  """The trained pipeline on user images: maps, hypotheses, 2D, the chosen pose.

  One jitted `pipeline.make_pipeline_fn` (matching included) per batch shape.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str,
               with_maps: bool = True, with_hourglass: bool = True):
    """Loads the trained stages.

    Args:
      config: finalised config.
      workdir: the experiment directory (skeleton_net and regressor
        checkpoints required, hourglass optional).
      with_maps: also return the skeleton maps (a video needs none).
      with_hourglass: load the hourglass when there is one (off when the 2D
        comes from a keypoints file: then the base hypothesis is `chosen`
        and the caller matches against its own 2D).
    """
    self.loaded = pipeline.load_stages(
        config, workdir, ('skeleton_net', 'regressor') + (('hourglass',) if with_hourglass else ()),
        required=('skeleton_net', 'regressor'))
    if with_hourglass and 'hourglass' not in self.loaded:
      logging.warning('no hourglass checkpoint: the base hypothesis is used and its 2D '
                      'comes from its own projection')
    self.variables = {k: v['variables'] for k, v in self.loaded.items()}
    self.norms = {k: v['norm'] for k, v in self.loaded.items()}
    self.fn = jax.jit(pipeline.make_pipeline_fn(config, self.loaded, with_maps=with_maps))
    self.lay = stages_lib.layout(config)
    self.crop_scales = tuple(config.data.crop_scales)

  def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs for a `make_batch` batch, with image-pixel 2D.

    Args:
      batch: from `make_batch` (only `image` and `input_to_image` are used).

    Returns:
      `pose` [b, 16, 3] (mm), `chosen` [b], `hyps` [b, H, 16, 3], `maps`
      [b, H, s, s, 6] (with `with_maps`), `joints_crop` [b, 16, 2] (pixels
      of the c = 1 crop), `joints_2d` [b, 16, 2] in image pixels and
      `confidence` [b, 16] (ones without a hourglass).
    """
    out = {k: np.asarray(v) for k, v in jax.device_get(
        self.fn(self.variables, self.norms, batch['image'])).items()}
    to_image = batch['input_to_image'][:, self.lay.unit]
    out['joints_crop'] = out['joints_2d']
    out['joints_2d'] = np.asarray(camera.apply_affine(out['joints_crop'], to_image))
    return out
