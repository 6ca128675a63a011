"""Synthetic people: procedural 3D poses rendered as shaded capsule bodies.

No download. Each person has anthropometric proportions of their own
(`deepskeleton_jax.pose_sampler`); each example draws a pose from a named
pose family (the `action` field: 'Walk', 'Sit', 'Reach', ...), a camera
around the person (the `camera` field names the viewpoint sector: 'front',
'back_left', ...) and a cluttered scene, and renders the crop directly at the
stored size (`deepskeleton_jax.synthetic_render`): the camera's focal length
and principal point are chosen so that the person box fills 1/CROP_SCALE of
the crop, so the crop->image affine is the identity.

Fields follow `deepskeleton_jax.data.example_format`: joints_3d in mm in the camera
frame (has_3d True), intrinsics in crop pixels (has_intrinsics True), all 16
joints visible, head_size = 0.6 x the diagonal of a square head box whose side
is the projected neck-to-head-top length, subject = person id (train and test
people are disjoint), frame = example index in the split, image_name =
'<split>/<subject>/<frame>'.

With `num_poses` > 0 the build also writes a 'poses' split: image-free
examples (a 1x1 placeholder image) drawn like 'train' from other people,
whose labels alone feed the regressors' rendered-map steps
(`config.regressor.gt_split`); in the demo's build about 1.6 ms per example
against about 9 ms per rendered crop (measured).

Deterministic per `seed`: example i of a split depends only on (seed, split,
person = i // EXAMPLES_PER_PERSON, i). Build it with
`python run.py --mode=prepare --config=configs/<x>.py` (which calls
`deepskeleton_jax.data.registry.prepare`); `tfds build` needs TensorFlow.
"""

from __future__ import annotations

import dataclasses

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from deepskeleton_jax import errors
from deepskeleton_jax.data import example_format
from . import pose_sampler
from . import synthetic_render

CROP_SCALE = 1.5
EXAMPLES_PER_PERSON = 16
# 'holdout' is drawn like 'train' (other people): the validation split of the
# plateau schedule, so training never opens 'test'.
_SPLITS = {'train': 0, 'test': 1, 'holdout': 2, 'poses': 3}


@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
  """Options of the synthetic dataset.

  Attributes:
    num_train: number of training examples.
    num_test: number of test examples.
    num_holdout: number of held-out training examples (validation split).
    num_poses: number of image-free examples in the 'poses' split (0: none).
    crop_size: side of the stored crop in pixels.
    seed: random seed; equal seeds give equal datasets.
    camera_yaw_deg: camera yaw around the person uniform in +-this (0 = in
      front of the person; 180 = all around).
    camera_pitch_min_deg: lowest camera pitch (positive: looking down).
    camera_pitch_max_deg: highest camera pitch.
  """
  num_train: int = 3000
  num_test: int = 300
  num_holdout: int = 200
  num_poses: int = 0
  crop_size: int = 144
  seed: int = 0
  camera_yaw_deg: float = 180.0
  camera_pitch_min_deg: float = -10.0
  camera_pitch_max_deg: float = 35.0


class Synthetic(tfds.core.GeneratorBasedBuilder):
  """Procedurally rendered people with exact 3D poses and cameras."""

  VERSION = tfds.core.Version('1.2.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.', '1.1.0': "A 'holdout' split.",
                   '1.2.0': "An image-free 'poses' split (num_poses)."}
  BUILDER_CONFIGS = [SyntheticConfig(
      name='default', description='3000 train / 200 holdout / 300 test crops of 144 px.')]

  def _info(self) -> tfds.core.DatasetInfo:
    return example_format.dataset_info(
        self, description=__doc__,
        homepage='https://arxiv.org/abs/1711.10796')

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Nothing to download.
    cfg = self.builder_config
    for name, low in (('num_train', 1), ('num_test', 1), ('num_holdout', 1), ('num_poses', 0),
                      ('crop_size', 16), ('seed', 0)):
      if getattr(cfg, name) < low:
        raise errors.ConfigError(f'data.builder_kwargs.{name} must be >= {low}, got '
                         f'{getattr(cfg, name)}')
    if not -90.0 <= cfg.camera_pitch_min_deg <= cfg.camera_pitch_max_deg <= 90.0:
      raise errors.ConfigError(
          'data.builder_kwargs.camera_pitch_min_deg/camera_pitch_max_deg must satisfy '
          f'-90 <= min <= max <= 90, got {cfg.camera_pitch_min_deg}, {cfg.camera_pitch_max_deg}')
    return {split: self._generate_examples(split) for split in _SPLITS
            if split != 'poses' or cfg.num_poses}

  def _generate_examples(self, split: str):
    """Yields (key, example); rejected examples are counted in the log."""
    cfg = self.builder_config
    num = getattr(cfg, f'num_{split}')
    rejected = 0
    for index in range(num):
      try:
        yield index, make_synthetic_example(
            cfg.seed, split, index, cfg.crop_size, camera_yaw_deg=cfg.camera_yaw_deg,
            camera_pitch_deg=(cfg.camera_pitch_min_deg, cfg.camera_pitch_max_deg),
            image=split != 'poses')
      except example_format.InvalidExample as e:
        rejected += 1
        logging.warning('synthetic %s example %d rejected: %s', split, index, e)
    logging.info('synthetic %s: %d examples written, %d rejected.', split,
                 num - rejected, rejected)


def make_synthetic_example(seed: int, split: str, index: int, crop_size: int,
                           camera_yaw_deg: float = 180.0,
                           camera_pitch_deg: tuple[float, float] = (-10.0, 35.0),
                           image: bool = True) -> dict:
  """Renders example `index` of `split` as an `example_format` example dict.

  Args:
    seed: dataset seed.
    split: one of 'train', 'test', 'holdout', 'poses'.
    index: example index in the split.
    crop_size: stored crop side.
    camera_yaw_deg: camera yaw range (see `SyntheticConfig`).
    camera_pitch_deg: (min, max) camera pitch.
    image: render the crop; False samples the pose and camera only and
      stores a placeholder image (the 'poses' split).

  Returns:
    The example dict.

  Raises:
    example_format.InvalidExample: non-finite joints or joints outside the
      stored crop.
  """
  person_id = index // EXAMPLES_PER_PERSON
  person_rng = np.random.default_rng([seed, _SPLITS[split], person_id])
  person = pose_sampler.sample_person(person_rng)
  rng = np.random.default_rng([seed, _SPLITS[split], person_id, index])
  if image:
    appearance = synthetic_render.sample_appearance(person_rng)
    sample = synthetic_render.render_sample(rng, person, appearance, crop_size,
                                            CROP_SCALE, camera_yaw_deg=camera_yaw_deg,
                                            camera_pitch_deg=camera_pitch_deg)
  else:
    sample = synthetic_render.sample_of_view(pose_sampler.sample_view(
        rng, person, crop_size, CROP_SCALE, camera_yaw_deg, camera_pitch_deg), None)
  if not (np.all(np.isfinite(sample.joints_2d))
          and np.all(sample.joints_2d >= 0) and np.all(sample.joints_2d <= crop_size)):
    raise example_format.InvalidExample(
        f'joints_2d outside the {crop_size} px crop or not finite')
  subject = f'{split}_person{person_id:05d}'
  return example_format.make_example(
      sample.image, center=np.full(2, crop_size / 2.0),
      box_size=crop_size / CROP_SCALE, crop_size=crop_size,
      crop_scale=CROP_SCALE, joints_2d=sample.joints_2d,
      visible=np.ones(len(sample.joints_2d), bool), joints_3d=sample.joints_3d,
      intrinsics=sample.intrinsics, head_size=sample.head_size,
      subject=subject, action=sample.action, camera_id=sample.view,
      image_name=f'{split}/{subject}/{index:06d}', frame=index)
