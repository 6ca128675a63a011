"""The command line: `python run.py` in a checkout, `deepskeleton-jax` once installed.

Parses absl flags, loads the ml_collections config (a file path or the name of
a shipped config, `--config=demo`, `--config=h36m_skeleton_net:gt`), and
dispatches on `--mode`. Each mode imports only what it runs: `--mode=predict`
or `--mode=export` never import the trainer. `--help` takes the demo's
description from `configs/demo.py`, so it cannot go stale.
"""

import ast
import os
import pathlib
import sys
import textwrap

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from deepskeleton_jax import configs as configs_package
from deepskeleton_jax import errors
from deepskeleton_jax import files
from deepskeleton_jax.experiment import config_lib
from deepskeleton_jax.experiment import parallel

CONFIGS_DIR = pathlib.Path(next(iter(configs_package.__path__)))
_MODES = ('all', 'prepare', 'train', 'eval', 'predict', 'benchmark', 'pseudo3d', 'export')

_USAGE = """{demo}

  {prog}    # the demo: build, train, evaluate (no flags)

General form (any config value can be overridden on the command line):

  {prog} --config=<name or path>[:arg] --workdir=DIR \\
      --mode=all|prepare|train|eval|predict|benchmark|pseudo3d|export \\
      [--config.skeleton_net.train.batch_size=64 ...]

Configs shipped with the package (--config=NAME):
{names}

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
  pseudo3d   lift a 2D dataset's people to 3D with a trained lifting stage.
  export     the whole inference function as a jax.export artifact
             (WORKDIR/export/model.jax + model.json) that runs without this code;
             --config.export.format=onnx writes model.onnx for ONNX Runtime.

A bad flag, config value or input file prints one line, `error: ...`, and
exits with status 2. Docs: README.md and docs/ in the repository.
"""


def config_names() -> list[str]:
  """Names of the shipped configs (`--config=<name>`), without the shared modules."""
  return sorted(p.stem for p in CONFIGS_DIR.glob('*.py')
                if 'def get_config' in p.read_text() and not p.stem.startswith('_'))


def resolve_config(value: str) -> str:
  """`--config` as a path: a shipped config's name becomes its file.

  Args:
    value: `name[:arg]` or `path/to/config.py[:arg]`.

  Returns:
    The value with the name replaced by the file's path (paths pass unchanged).

  Raises:
    errors.ConfigError: a bare name that no shipped config has.
  """
  name, sep, arg = value.partition(':')
  if os.sep in name or '/' in name or name.endswith('.py') or os.path.exists(name):
    check_config_file(name, f'--config={value}')
    return value
  path = CONFIGS_DIR / f'{name}.py'
  if not path.is_file():
    raise errors.ConfigError(f'--config={value}: no config named {name!r}; expected a '
                             f'file path or one of {config_names()}')
  return f'{path}{sep}{arg}'


def check_config_file(path: str, flag: str) -> None:
  """Refuses a config file that does not parse or defines no `get_config`.

  Args:
    path: the config file (a missing one is reported when the config is used).
    flag: the flag as given, for the message.

  Raises:
    errors.ConfigError: a syntax error (with its line) or no `get_config`.
  """
  try:
    source = pathlib.Path(path).read_text()
  except (OSError, UnicodeDecodeError):
    return
  try:
    tree = ast.parse(source, path)
  except SyntaxError as e:
    raise errors.ConfigError(f'{flag}: {path} line {e.lineno}: {e.msg} (expected a Python '
                             'file that defines get_config())') from None
  defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
  defined |= {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
              for a in n.names}
  defined |= {n.id for n in ast.walk(tree)
              if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
  if 'get_config' not in defined:
    raise errors.ConfigError(f'{flag}: {path} defines no get_config(); a config file '
                             'returns its ml_collections.ConfigDict from get_config(arg=None)')


def _resolve_argv(argv: list[str]) -> list[str]:
  out = list(argv)
  for i, arg in enumerate(out):
    if arg.startswith('--config='):
      out[i] = '--config=' + resolve_config(arg[len('--config='):])
    elif arg == '--config' and i + 1 < len(out):
      out[i + 1] = resolve_config(out[i + 1])
  return out


def demo_description() -> str:
  """The demo config's summary line and its first descriptive paragraph."""
  doc = ast.get_docstring(ast.parse((CONFIGS_DIR / 'demo.py').read_text())) or ''
  paragraphs = [p for p in doc.split('\n\n') if p.strip()]
  prose = [p for p in paragraphs[1:] if not p.startswith(' ')]
  return '\n\n'.join(paragraphs[:1] + prose[:1])


with errors.one_line(), errors.config_keys_checked(sys.argv):  # overrides apply here
  sys.argv[:] = _resolve_argv(sys.argv)
  # Any builder option, set once the config is loaded (registry.set_builder_flags).
  sys.argv[:], _BUILDER_FLAGS = config_lib.take_builder_flags(sys.argv)
  _CONFIG = config_flags.DEFINE_config_file(
      'config', str(CONFIGS_DIR / 'demo.py'),
      'Experiment config: a shipped config\'s name (demo, tiny, h36m_skeleton_net, ...) or '
      'a file (configs/<name>.py), with an optional :arg; values can be overridden with '
      '--config.<group>.<key>=value.', lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None,
    'Directory for checkpoints, metrics, reports and figures '
    '(default: ./workdir/<config file name>).')
_MODE = flags.DEFINE_enum('mode', 'all', _MODES, 'What to run (see --help).')


def _default_workdir() -> str:
  path = config_flags.get_config_filename(flags.FLAGS['config'])
  name = os.path.splitext(os.path.basename(path))[0]
  return os.path.join('workdir', name or 'demo')


def _load_config():
  try:
    if _BUILDER_FLAGS:
      from deepskeleton_jax.data import registry  # pylint: disable=g-import-not-at-top
      registry.set_builder_flags(_CONFIG.value.data, _BUILDER_FLAGS)
    return config_lib.finalize(_CONFIG.value)
  except OSError as e:  # ml_collections could not load the file
    detail = ' '.join(str(e).split('\n')[1:]).split()
    raise errors.ConfigError(f'--config={flags.FLAGS["config"].config_filename}: cannot '
                             f'load the config file ({" ".join(detail)})') from None


def main(argv):
  """Runs `--mode` on the loaded config (absl's main)."""
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
  workdir = _WORKDIR.value or _default_workdir()
  # Before the preflight: it builds stages, which asks JAX for its backend.
  parallel.maybe_initialize_distributed(config.parallel)
  preflight(config, workdir, _MODE.value)
  logging.info('mode=%s workdir=%s devices=%s', _MODE.value, workdir, jax.devices())
  with parallel.fail_fast():
    try:
      globals()['_' + _MODE.value](config, workdir)
    except parallel.Preempted as e:
      logging.warning('%s', e)  # A clean stop: exit status 0, nothing else runs.


def _outputs(config, workdir: str, mode: str) -> list[tuple[str, str]]:
  """(folder, the flag that sets it) for each folder `mode` writes."""
  def chosen(key, default):
    value = config[key.split('.')[0]][key.split('.')[1]]
    return (value, f'--config.{key}') if value else (default, f'--workdir={workdir}')

  sub = lambda name: (os.path.join(workdir, name), f'--workdir={workdir}')
  return {
      'train': [(workdir, f'--workdir={workdir}')],
      'all': [(workdir, f'--workdir={workdir}'), sub('eval')],
      'eval': [sub('eval')],
      'benchmark': [sub('benchmark')],
      'predict': [chosen('predict.output_dir', os.path.join(workdir, 'predict'))],
      'export': [chosen('export.output_dir', os.path.join(workdir, 'export'))],
      'pseudo3d': [chosen('predict.output_dir', workdir)],
  }.get(mode, [])


_INFERENCE_STAGES = ('skeleton_net', 'regressor', 'hourglass')  # predict, export


def preflight(config, workdir: str, mode: str) -> None:
  """Checks, before any work, what would otherwise fail late.

  Args:
    config: the finalised config.
    workdir: the experiment directory.
    mode: the `--mode`.

  Raises:
    errors.ConfigError: a folder the mode writes is a file or not writable; or
      the config contradicts the checkpoints the mode resumes or loads (the
      key, the checkpoint's value and the config's).
  """
  for folder, flag in _outputs(config, workdir, mode):
    problem = files.writable_folder_problem(folder)
    if problem:
      raise errors.ConfigError(f'{flag}: {problem}; expected a folder this user can write '
                               f'(--mode={mode} writes to {folder})')
  if mode in ('train', 'all'):
    from deepskeleton_jax.training import train_loop  # pylint: disable=g-import-not-at-top
    train_loop.check_against_checkpoints(config, workdir,
                                         tuple(config_lib.stage_list(config)))
  if mode in ('all', 'eval', 'predict', 'export', 'pseudo3d'):
    from deepskeleton_jax.experiment import checkpointing  # pylint: disable=g-import-not-at-top
    from deepskeleton_jax.inference import pipeline  # pylint: disable=g-import-not-at-top
    loads = {'predict': _INFERENCE_STAGES, 'export': _INFERENCE_STAGES,
             'pseudo3d': ('lifting',)}.get(mode, pipeline.PIPELINE_STAGES)
    for stage in loads:
      checkpointing.check_trained_with(config, workdir, stage)


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
  from deepskeleton_jax.inference import predict  # pylint: disable=g-import-not-at-top
  predict.predict(config, workdir)


def _benchmark(config, workdir):
  from deepskeleton_jax.training import benchmark  # pylint: disable=g-import-not-at-top
  benchmark.run(config, workdir)


def _pseudo3d(config, workdir):
  from deepskeleton_jax.evaluation import pseudo3d  # pylint: disable=g-import-not-at-top
  pseudo3d.write_pseudo_3d(config, workdir)


def _export(config, workdir):
  from deepskeleton_jax.inference import export  # pylint: disable=g-import-not-at-top
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


def run() -> None:
  """The console script's entry point (and run.py's)."""
  prog = 'python run.py' if sys.argv[0].endswith('run.py') else 'deepskeleton-jax'
  # absl prints the main module's docstring for --help.
  sys.modules['__main__'].__doc__ = _USAGE.format(
      demo=demo_description(), prog=prog, names=textwrap.fill(', '.join(config_names()), 78, initial_indent='  ',
                                                      subsequent_indent='  '))
  if any(arg in ('--help', '-?', '--helpshort') for arg in sys.argv[1:]):
    # absl's own --help exits with status 1; asking for help is not an error.
    app.usage(shorthelp=True, writeto_stdout=True)
    print('\nTry --helpfull to get a list of all flags.')
    sys.exit(0)
  with errors.one_line():
    app.run(main, flags_parser=errors.parse_flags)
