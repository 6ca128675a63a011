"""The example format shared by every TFDS builder, and how to make one example.

Every dataset (synthetic, human36m, mpii, bvh_mocap) stores the same fields
(docs/DESIGN.md, Datasets): a square person crop around the person box enlarged by
`crop_scale` (default 1.5, the largest crop scale the paper uses), the
crop->original affine, and the annotations in crop pixels. The input pipeline
later takes the central `c / crop_scale` part for a hypothesis' crop scale c.

Fields:
  image: the crop, JPEG, [crop_size, crop_size, 3] (bvh_mocap: 1x1 black).
  crop_to_image: [2, 3] affine from crop pixels to original-image pixels.
  crop_scale: the stored crop's side over the person box side.
  joints_2d: [16, 2] crop pixels (continuous convention).
  visible: [16] bool.
  joints_3d: [16, 3] mm, camera frame (zeros where unknown).
  has_3d: bool.
  intrinsics: [4] (f_x, f_y, c_x, c_y) in crop pixels (zeros where unknown).
  has_intrinsics: bool.
  head_size: PCKh normaliser (0.6 x head box diagonal) in crop pixels, 0 if
    unknown.
  subject, action, camera, image_name: text ids; frame: int.

Identity: each example is named by a key made of its id fields, stable across
builds and unlike its position in a split (TFDS stores a split in an order
shuffled by key hash). MPII: image_name and frame, the person index
(`person_key`: '<image name>#<person>'); Human3.6M: subject, action (the CDF
stem, with its take), camera and frame (the pose/video frame index);
synthetic: image_name; bvh_mocap: image_name, camera and frame. Detection
files are joined to examples through these keys
(`deepskeleton_jax/evaluation/detections.py`). Builders whose annotation files
list persons in an order of their own (MPII's validation split: the official
evaluation's order) record it in the dataset's metadata under `ROW_ORDER`:
{split: [person_key, ...]}.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from deepskeleton_jax.geometry import camera
from deepskeleton_jax.data import image_ops
from deepskeleton_jax.geometry import skeleton

K = skeleton.NUM_JOINTS
# Dataset metadata key: {split: [example keys in the annotation file's order]}.
ROW_ORDER = 'row_order'


def person_key(image_name: str | bytes, person: int) -> str:
  """The key '<image name>#<person>' of an MPII example (its TFDS key too).

  Args:
    image_name: the image file name (str or UTF-8 bytes).
    person: the person index (the stored `frame` field).

  Returns:
    The key.
  """
  if isinstance(image_name, bytes):
    image_name = image_name.decode('utf-8')
  return f'{image_name}#{int(person)}'


def features() -> tfds.features.FeaturesDict:
  """The TFDS feature spec every builder uses."""
  tensor = tfds.features.Tensor
  return tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
      'crop_to_image': tensor(shape=(2, 3), dtype=np.float32),
      'crop_scale': tensor(shape=(), dtype=np.float32),
      'joints_2d': tensor(shape=(K, 2), dtype=np.float32),
      'visible': tensor(shape=(K,), dtype=np.bool_),
      'joints_3d': tensor(shape=(K, 3), dtype=np.float32),
      'has_3d': tensor(shape=(), dtype=np.bool_),
      'intrinsics': tensor(shape=(4,), dtype=np.float32),
      'has_intrinsics': tensor(shape=(), dtype=np.bool_),
      'head_size': tensor(shape=(), dtype=np.float32),
      'subject': tfds.features.Text(),
      'action': tfds.features.Text(),
      'camera': tfds.features.Text(),
      'image_name': tfds.features.Text(),
      'frame': tensor(shape=(), dtype=np.int32),
  })


def dataset_info(builder: tfds.core.DatasetBuilder, description: str,
                 homepage: str = '', citation: str = '') -> tfds.core.DatasetInfo:
  """DatasetInfo built directly (works for builders outside a package)."""
  return tfds.core.DatasetInfo(
      builder=builder, description=description, features=features(),
      homepage=homepage, citation=citation)


class InvalidExample(ValueError):
  """An example with NaN or out-of-range annotations (rejected at build time)."""


@functools.lru_cache(maxsize=1)
def _placeholder_jpeg() -> bytes:
  """The 1x1 black JPEG that image-free examples store."""
  return image_ops.encode_jpeg(np.zeros((1, 1, 3), np.uint8))


def make_example(image: np.ndarray | None, *, center: np.ndarray, box_size: float,
                 crop_size: int, crop_scale: float, joints_2d: np.ndarray,
                 visible: np.ndarray, joints_3d: np.ndarray | None = None,
                 intrinsics: np.ndarray | None = None, head_size: float = 0.0,
                 subject: str = '', action: str = '', camera_id: str = '',
                 image_name: str = '', frame: int = 0) -> dict[str, Any]:
  """Crops one person and returns a TFDS example dict.

  Args:
    image: [H, W, 3] uint8 RGB original image, or None for image-free
      datasets (a 1x1 black JPEG is stored; 2D joints are still transformed).
    center: [2] person box centre in original pixels.
    box_size: person box side in original pixels (crop scale 1.0).
    crop_size: stored crop side in pixels.
    crop_scale: stored crop side / box side (e.g. 1.5).
    joints_2d: [16, 2] original-image pixels.
    visible: [16] bool.
    joints_3d: [16, 3] mm camera frame, or None.
    intrinsics: [4] original-image intrinsics, or None.
    head_size: PCKh normaliser in original pixels (0 if unknown).
    subject, action, camera_id, image_name, frame: ids.

  Returns:
    A dict matching `features()`.

  Raises:
    InvalidExample: NaN/inf joints, a non-positive box, or no visible joint.
  """
  joints_2d = np.asarray(joints_2d, np.float32).reshape(K, 2)
  visible = np.asarray(visible, bool).reshape(K)
  if not np.isfinite(box_size) or box_size <= 0:
    raise InvalidExample(f'box_size must be positive, got {box_size}')
  if not np.all(np.isfinite(joints_2d[visible])):
    raise InvalidExample('non-finite visible 2D joints')
  if joints_3d is not None and not np.all(np.isfinite(joints_3d)):
    raise InvalidExample('non-finite 3D joints')
  if not visible.any():
    raise InvalidExample('no visible joint')
  image_to_crop = camera.crop_affine(np.asarray(center, np.float32),
                                     np.float32(box_size * crop_scale), crop_size)
  crop_joints = camera.apply_affine(np.where(visible[:, None], joints_2d, 0.0),
                                    image_to_crop).astype(np.float32)
  if image is None:
    encoded = _placeholder_jpeg()
  else:
    encoded = image_ops.encode_jpeg(image_ops.warp_affine(image, image_to_crop, crop_size))
  example = {
      'image': encoded,
      'crop_to_image': camera.invert_affine(image_to_crop).astype(np.float32),
      'crop_scale': np.float32(crop_scale),
      'joints_2d': crop_joints,
      'visible': visible,
      'joints_3d': (np.zeros((K, 3), np.float32) if joints_3d is None else
                    np.asarray(joints_3d, np.float32).reshape(K, 3)),
      'has_3d': joints_3d is not None,
      'intrinsics': (np.zeros(4, np.float32) if intrinsics is None else
                     camera.affine_intrinsics(np.asarray(intrinsics, np.float32),
                                              image_to_crop).astype(np.float32)),
      'has_intrinsics': intrinsics is not None,
      'head_size': np.float32(head_size * image_to_crop[0, 0]),
      'subject': str(subject),
      'action': str(action),
      'camera': str(camera_id),
      'image_name': str(image_name),
      'frame': np.int32(frame),
  }
  return example
