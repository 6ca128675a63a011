"""Session fixtures shared by the video and export tests.

`tiny_pipeline` builds the tiny synthetic set and trains the tiny
SkeletonMapNet, regressors and hourglass for a few steps once per session
(the checkpoints are tiny and untrained: they test plumbing, not accuracy);
`synthetic_clip` renders a 30-frame video of a walking person with known
joints and boxes.
"""

import pathlib

import pytest

from configs import tiny
from deepskeleton_jax.data import registry
from deepskeleton_jax.training import config_lib
from deepskeleton_jax.training import train_loop

REPO = pathlib.Path(__file__).resolve().parents[1]


class TinyPipeline:
  """A trained tiny workdir; `config(**predict)` gives a fresh config for it."""

  def __init__(self, root: pathlib.Path):
    self.data_dir = root / 'tfds'
    self.workdir = str(root / 'workdir')

  def config(self, **predict):
    config = tiny.get_config()
    config.data.data_dir = str(self.data_dir)
    config.stages = 'skeleton_net,regressor,hourglass'
    config.predict.update(predict)
    return config_lib.finalize(config)


@pytest.fixture(scope='session')
def tiny_pipeline(tmp_path_factory) -> TinyPipeline:
  pipe = TinyPipeline(tmp_path_factory.mktemp('tiny_pipeline'))
  config = pipe.config()
  registry.prepare(config.data)
  for stage in config_lib.stage_list(config):
    train_loop.train_stage(config, pipe.workdir, stage)
  return pipe


@pytest.fixture(scope='session')
def synthetic_video():
  """The `datasets/synthetic/synthetic_video.py` module."""
  return registry.load_module('synthetic', 'synthetic_video')


@pytest.fixture(scope='session')
def synthetic_clip(synthetic_video):
  """30 frames (192 x 256) of a person walking, with joints and boxes."""
  return synthetic_video.render_clip(num_frames=30, height=192, width=256, seed=0)
