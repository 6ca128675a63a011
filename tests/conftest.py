"""Session fixtures shared by the end-to-end, video and export tests; the fast tier.

`tiny_pipeline` builds the tiny synthetic set and trains every stage of
configs/tiny.py for a few steps, once per session, so each program compiles
once (the checkpoints are tiny and untrained: they test plumbing, not
accuracy); `synthetic_clip` renders a 30-frame video of a walking person
with known joints and boxes; `demo_workdir` is a trained demo workdir
(DEEPSKELETON_DEMO_WORKDIR, default workdir/demo) for the opt-in accuracy
tests, which skip without one.

The fast tier, `python -m pytest -q -m "not slow"`, leaves out the tests
marked `slow` here (and in their own files: wheel_test, device_check_test):
every test of the trained tiny pipeline, the opt-in accuracy tests on a
trained demo workdir (about 40 s each where one exists), the multi-process and
Beam modules, subprocess runs of the trainer, full-size traces, and unit tests that compile
or train for more than a few seconds (measured with `--durations`), while
each module keeps its quick unit tests.
"""

import os
import pathlib

import pytest

from configs import demo
from configs import tiny
from deepskeleton_jax import errors
from deepskeleton_jax.data import registry
from deepskeleton_jax.experiment import checkpointing
from deepskeleton_jax.experiment import config_lib
from deepskeleton_jax.training import train_loop

REPO = pathlib.Path(__file__).resolve().parents[1]


class TinyPipeline:
  """A trained tiny workdir; `config(**predict)` gives a fresh config for it."""

  def __init__(self, root: pathlib.Path, data_dir: pathlib.Path):
    self.data_dir = data_dir
    self.workdir = str(root / 'workdir')

  def config(self, **predict):
    config = tiny.get_config()
    config.data.data_dir = str(self.data_dir)
    config.predict.update(predict)
    return config_lib.finalize(config)


# Whole modules out of the fast tier: several processes, or Apache Beam.
SLOW_MODULES = ('beam_build_test', 'multihost_test')
# Tests (every parametrization) out of the fast tier, by module.
SLOW_TESTS = {
    'benchmark_test': ('test_mfu_does_not_change_with_the_number_of_devices',),
    'fault_tolerance_test': (
        'test_sigterm_saves_exits_0_and_rerun_continues',
        'test_sigkill_anywhere_then_rerun_matches_uninterrupted',
        'test_sigkill_in_save_then_truncated_newest_step_resumes_from_the_one_before',
        'test_config_contradicting_checkpoints_is_refused_and_eval_skips_a_damaged_step',
        'test_nonfinite_update_is_skipped_and_recorded'),
    'hourglass_test': ('test_tiny_forward_backward', 'test_loss_decreases',
                       'test_bfloat16_compute_returns_float32'),
    'hypotheses_test': ('test_apply_stacked_train_mode_and_gradients_equal_separate_applies',),
    'input_pipeline_test': ('test_worker_processes_give_the_same_batches',),
    'lifting_test': ('test_loss_decreases',),
    'paper_configs_test': ('test_train_and_eval_steps_trace_at_full_size',),
    'predict_video_test': ('test_bad_video_is_one_line_from_run_py',),
    'pretrained_test': ('test_six_channel_first_conv_adaptation',
                        'test_safetensors_round_trip_matches_numpy_reference'),
    'resnet_test': ('test_remat_matches_plain_model', 'test_tiny_forward_shapes_and_backward',
                    'test_bfloat16_compute_keeps_float32_parameters_and_statistics'),
    'stages_test': ('test_predicted_input_mixes_rendered_and_predicted_maps_by_step',),
}


def is_slow(item) -> bool:
  """Whether the fast tier leaves `item` out (see the module docstring)."""
  module = item.module.__name__.rpartition('.')[2]
  fixtures = getattr(item, 'fixturenames', ())
  return ('tiny_pipeline' in fixtures or 'demo_workdir' in fixtures or module in SLOW_MODULES
          or item.originalname in SLOW_TESTS.get(module, ()))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
  """Groups tests for `pytest -n N --dist loadgroup` and marks the slow tier.

  Each test module runs on one worker (its module fixtures compile once), and
  every test of the session-trained tiny pipeline on one worker (it trains
  once); `is_slow` tests get the `slow` marker (`-m "not slow"`: the fast tier).
  """
  del config
  for item in items:
    shared = 'tiny_pipeline' in getattr(item, 'fixturenames', ())
    item.add_marker(pytest.mark.xdist_group('tiny_pipeline' if shared else item.module.__name__))
    if is_slow(item):
      item.add_marker(pytest.mark.slow)


@pytest.fixture(scope='session')
def tiny_data_dir(tmp_path_factory) -> pathlib.Path:
  """A data_dir with configs/tiny.py's synthetic dataset built (once per session)."""
  path = tmp_path_factory.mktemp('tiny_tfds')
  config = tiny.get_config()
  config.data.data_dir = str(path)
  registry.prepare(config_lib.finalize(config).data)
  return path


@pytest.fixture(scope='session')
def tiny_pipeline(tmp_path_factory, tiny_data_dir) -> TinyPipeline:
  pipe = TinyPipeline(tmp_path_factory.mktemp('tiny_pipeline'), tiny_data_dir)
  config = pipe.config()
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


@pytest.fixture(scope='session')
def demo_workdir() -> str:
  """A workdir the current demo config trained (skips the test without one)."""
  path = pathlib.Path(os.environ.get('DEEPSKELETON_DEMO_WORKDIR', REPO / 'workdir' / 'demo'))
  needed = ('skeleton_net', 'regressor', 'hourglass')
  if not all((path / s / 'checkpoints').is_dir() for s in needed):
    pytest.skip(f'no trained demo workdir at {path} (run `python run.py`, or set '
                'DEEPSKELETON_DEMO_WORKDIR)')
  try:
    checkpointing.check_trained_with(config_lib.finalize(demo.get_config()), str(path),
                                     'hourglass')
  except errors.ConfigError as e:
    pytest.skip(f'the demo workdir at {path} is from an older demo config: {e}')
  return str(path)
