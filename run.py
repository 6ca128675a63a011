r"""DeepSkeleton-JAX: 3D human pose estimation through skeleton maps.

With no flags, runs the synthetic demo end to end (builds the dataset, trains
Direct RGB, a 3-hypothesis SkeletonMapNet + regressor and a small hourglass,
evaluates, writes ./workdir/demo/eval/report.md and figures):

  python run.py

General form (any config value can be overridden on the command line):

  python run.py --config=configs/<experiment>.py[:arg] --workdir=DIR \
      --mode=all|prepare|train|eval|predict|benchmark|pseudo3d|export \
      [--config.skeleton_net.train.batch_size=64 ...]

Modes:
  all        prepare (if needed), train `config.stages`, then eval.
  prepare    build the config's TFDS dataset (manual files from
             --config.data.manual_dir).
  train      train the stages in `config.stages` (comma-separated), resuming
             from the latest checkpoint.
  eval       evaluate the trained stages on the test split: report.md,
             results.json, figures under WORKDIR/eval.
  predict    3D poses for your own images (--config.predict.images=a.jpg,b.jpg)
             or video (--config.predict.video=clip.mp4): JSON, figures, overlay video.
  benchmark  images/s, MFU and memory of the train and inference steps,
             with same-run references (config.benchmark).
  pseudo3d   lift a 2D dataset's people to 3D with a trained lifting stage
             (MPII pseudo-3D labels; see deepskeleton_jax/evaluation/pseudo3d.py).
  export     the whole inference function as a jax.export artifact
             (WORKDIR/export/model.jax + model.json) that runs without this code.

A bad flag, config value or input file prints one line, `error: ...`, and
exits with status 2.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from deepskeleton_jax import errors
from deepskeleton_jax.training import config_lib
from deepskeleton_jax.training import parallel

_REPO = os.path.dirname(os.path.abspath(__file__))
with errors.one_line(), errors.config_keys_checked(sys.argv):  # overrides apply here
  _CONFIG = config_flags.DEFINE_config_file(
      'config', os.path.join(_REPO, 'configs', 'demo.py'),
      'Experiment config file (configs/<name>.py[:arg]); values can be '
      'overridden with --config.<group>.<key>=value.', lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None,
    'Directory for checkpoints, metrics, reports and figures '
    '(default: ./workdir/<config file name>).')
_MODES = ('all', 'prepare', 'train', 'eval', 'predict', 'benchmark', 'pseudo3d', 'export')
_MODE = flags.DEFINE_enum('mode', 'all', _MODES, 'What to run (see the module docstring).')


def _default_workdir() -> str:
  path = config_flags.get_config_filename(flags.FLAGS['config'])
  name = os.path.splitext(os.path.basename(path))[0]
  return os.path.join('workdir', name or 'demo')


def _load_config():
  try:
    return config_lib.finalize(_CONFIG.value)
  except OSError as e:  # ml_collections could not load the file
    detail = ' '.join(str(e).split('\n')[1:]).split()
    raise errors.ConfigError(f'--config={flags.FLAGS["config"].config_filename}: cannot '
                             f'load the config file ({" ".join(detail)})') from None


def main(argv):
  if len(argv) > 1:
    raise errors.ConfigError(f'unexpected arguments {argv[1:]}: flags are --name=value')
  logging.set_verbosity(logging.INFO)
  # Orbax logs every checkpoint phase at INFO; keep its warnings only.
  logging.get_absl_logger().addFilter(
      lambda r: r.levelno >= 30 or 'orbax' not in r.pathname)  # 30: WARNING
  jax.config.update('jax_compilation_cache_dir', os.path.join(
      os.path.expanduser('~'), '.cache', 'deepskeleton_jax', 'jax_cache'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  config = _load_config()
  parallel.maybe_initialize_distributed(config.parallel)
  workdir = _WORKDIR.value or _default_workdir()
  logging.info('mode=%s workdir=%s devices=%s', _MODE.value, workdir, jax.devices())
  from deepskeleton_jax.training import train_loop  # pylint: disable=g-import-not-at-top
  with parallel.fail_fast():
    try:
      globals()['_' + _MODE.value](config, workdir)
    except train_loop.Preempted as e:
      logging.warning('%s', e)  # A clean stop: exit status 0, nothing else runs.


def _prepare(config, workdir):
  del workdir
  from deepskeleton_jax.data import registry  # pylint: disable=g-import-not-at-top
  registry.prepare(config.data)


def _train(config, workdir):
  from deepskeleton_jax.training import train_loop  # pylint: disable=g-import-not-at-top
  for stage in config_lib.stage_list(config):
    train_loop.train_stage(config, workdir, stage)


def _eval(config, workdir):
  from deepskeleton_jax.evaluation import evaluate  # pylint: disable=g-import-not-at-top
  return evaluate.evaluate(config, workdir)


def _predict(config, workdir):
  from deepskeleton_jax.evaluation import predict  # pylint: disable=g-import-not-at-top
  predict.predict(config, workdir)


def _benchmark(config, workdir):
  from benchmarks import train_benchmark  # pylint: disable=g-import-not-at-top
  train_benchmark.run(config, workdir)


def _pseudo3d(config, workdir):
  from deepskeleton_jax.evaluation import pseudo3d  # pylint: disable=g-import-not-at-top
  pseudo3d.write_pseudo_3d(config, workdir)


def _export(config, workdir):
  from deepskeleton_jax.evaluation import export  # pylint: disable=g-import-not-at-top
  export.export(config, workdir)


def _all(config, workdir):
  from deepskeleton_jax.evaluation import report  # pylint: disable=g-import-not-at-top
  _prepare(config, workdir)
  _train(config, workdir)
  results = _eval(config, workdir)
  if jax.process_index() == 0:
    out = os.path.join(workdir, 'eval')
    print(f'\n{report.main_table(results)}\n\nReport: {out}/report.md, results: '
          f'{out}/results.json, figures: {out}/*.png', flush=True)


if __name__ == '__main__':
  with errors.one_line():
    app.run(main, flags_parser=errors.parse_flags)
