"""Finds, configures, builds and opens the TFDS datasets under `datasets/`.

Rule (shared by every dataset): the folder `datasets/<name>/` holds the module
`<name>.py` with one `tfds.core.GeneratorBasedBuilder` subclass whose TFDS
name is `<name>`, and a `tfds.core.BuilderConfig` dataclass subclass with its
options (`BUILDER_CONFIGS[0]` is the default), next to the code only that
builder uses (imported relatively, `from . import bvh`).

The folders are imported as subpackages of `deepskeleton_jax.datasets`
(`deepskeleton_jax.datasets.<name>.<module>`, see there), once per process and
without TFDS's global registration (which would clash with a second import).

`data_config.builder_kwargs` overrides fields of the default config (typed
and checked by `builder_options`; `set_builder_flags` applies the command
line's `--config.data.builder_kwargs.<name>=value` flags); the
resulting config is named after the default plus the non-default fields in
sorted order (e.g. `default-crop_size_64-num_train_16`), so different options
are stored in different directories and equal options find the same one.

Datasets are written as `array_record` and read with grain through
`builder.as_data_source` (no TensorFlow).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import os
import pathlib
import re
import shlex
import shutil
import threading
import types
from typing import Any

from absl import logging
import tensorflow_datasets as tfds

from deepskeleton_jax import datasets as datasets_package
from deepskeleton_jax import errors
from deepskeleton_jax.data import example_format
from deepskeleton_jax import files
from deepskeleton_jax.data import builder_options

# A checkout's datasets/ folder, or the installed package's own (see there).
DATASETS_DIR = pathlib.Path(os.environ.get('DEEPSKELETON_DATASETS_DIR') or
                            next(iter(datasets_package.__path__)))
PREPARE_COMMAND = 'python run.py --mode=prepare --config=<your config file and overrides>'
_LOAD_LOCK = threading.RLock()


def available() -> list[str]:
  """Names of the datasets under `datasets/` (folders with `<name>/<name>.py`)."""
  if not DATASETS_DIR.is_dir():
    return []
  return sorted(p.name for p in DATASETS_DIR.iterdir()
                if (p / f'{p.name}.py').is_file())


def load_module(name: str, module: str | None = None) -> types.ModuleType:
  """Imports `datasets/<name>/<module>.py` (default `<name>.py`), once per process.

  Args:
    name: dataset name (its folder under `datasets/`).
    module: a module of that folder (default: the builder module `<name>`),
      e.g. `('human36m', 'fake_release')`.

  Returns:
    The module `deepskeleton_jax.datasets.<name>.<module>`.

  Raises:
    errors.ConfigError: no such dataset or module.
  """
  module = module or name
  path = DATASETS_DIR / name / f'{module}.py'
  if not path.is_file():
    raise errors.ConfigError(
        f'data.name: no dataset {name!r} ({path} does not exist); available: '
        f'{available()}')
  with _LOAD_LOCK:  # Threads must not see a half-executed module.
    datasets_package.__path__ = [str(DATASETS_DIR)]  # tests reassign DATASETS_DIR
    with tfds.core.registered.skip_registration():
      return importlib.import_module(f'{datasets_package.__name__}.{name}.{module}')


def builder_class(name: str) -> type[tfds.core.GeneratorBasedBuilder]:
  """The dataset's `GeneratorBasedBuilder` subclass (TFDS name == `name`)."""
  module = load_module(name)
  found = [v for v in vars(module).values()
           if isinstance(v, type) and issubclass(v, tfds.core.GeneratorBasedBuilder)
           and v.__module__ == module.__name__]
  if len(found) != 1 or found[0].name != name:
    raise ValueError(
        f'{module.__file__}: expected exactly one GeneratorBasedBuilder subclass '
        f'named {name!r} (TFDS name), found {[c.name for c in found]}')
  return found[0]


def to_dict(kwargs: Any) -> dict[str, Any]:
  """`builder_kwargs` (None, dict or ConfigDict) as a plain dict."""
  if kwargs is None:
    return {}
  if hasattr(kwargs, 'to_dict'):
    return kwargs.to_dict()
  return dict(kwargs)


def _format_value(value: Any) -> str:
  if isinstance(value, (list, tuple)):
    return '_'.join(_format_value(v) for v in value)
  text = str(value)
  return ''.join(c if c.isalnum() or c in '.-' else '_' for c in text)


def make_config(cls: type[tfds.core.GeneratorBasedBuilder],
                builder_kwargs: Any) -> tfds.core.BuilderConfig:
  """The builder config for `builder_kwargs` (the default config if empty).

  Args:
    cls: builder class.
    builder_kwargs: dict (or ConfigDict) of config fields to override.

  Returns:
    The default config when no field differs from it, else a new config of
    the same class named deterministically from the non-default fields.

  Raises:
    errors.ConfigError: an unknown field, or a value of the wrong type.
  """
  if not cls.BUILDER_CONFIGS:
    raise ValueError(f'{cls.__name__}.BUILDER_CONFIGS is empty')
  default = cls.BUILDER_CONFIGS[0]
  changed = {}
  for key, value in sorted(to_dict(builder_kwargs).items()):
    value = builder_options.option_value(cls, key, value, where=f'data.builder_kwargs.{key}')
    if value != getattr(default, key):
      changed[key] = value
  if not changed:
    return default
  name = default.name + '-' + '-'.join(
      f'{k}_{_format_value(v)}' for k, v in changed.items())
  if len(name) > 100:
    digest = hashlib.sha1(repr(sorted(changed.items())).encode()).hexdigest()[:12]
    name = f'{default.name}-custom_{digest}'
  fields = {f.name: getattr(default, f.name) for f in dataclasses.fields(default)
            if f.init}
  fields.update(changed, name=name,
                description=f'{default.description or default.name} Overrides: {changed}')
  return type(default)(**fields)


def set_builder_flags(data_config: Any, flags: list[tuple[str, str]]) -> None:
  """Sets `--config.data.builder_kwargs[.<name>]` flags in `data_config.builder_kwargs`.

  Any option of the builder `data_config.name` can be set, whether the config
  file sets it or not; the dict form merges (see `builder_options`).

  Args:
    data_config: `config.data` (locked or not).
    flags: (flag name, text) pairs from `config_lib.take_builder_flags`.

  Raises:
    errors.ConfigError: an unknown option (naming the valid ones) or a value of
      the wrong type, naming the flag.
  """
  values = builder_options.parse_flags(builder_class(data_config.name), flags)
  with data_config.unlocked():
    for name, value in values.items():
      if name in data_config.builder_kwargs:  # its type may differ (1 for 1.0)
        del data_config.builder_kwargs[name]
      data_config.builder_kwargs[name] = value


def get_builder(data_config: Any) -> tfds.core.GeneratorBasedBuilder:
  """The builder for `data_config` (fields name, data_dir, builder_kwargs).

  Args:
    data_config: the `config.data` ConfigDict (or any object with those
      attributes; `builder_kwargs` and `data_dir` may be missing or empty).

  Returns:
    A builder writing/reading `array_record` under `data_config.data_dir`
    (TFDS's default data dir when empty).
  """
  cls = builder_class(data_config.name)
  config = make_config(cls, getattr(data_config, 'builder_kwargs', None))
  data_dir = getattr(data_config, 'data_dir', None) or None
  if data_dir:
    data_dir = os.path.expanduser(data_dir)
  return cls(config=config, data_dir=data_dir, file_format='array_record')


class DatasetNotBuiltError(errors.UserError, FileNotFoundError):
  """Reading a dataset that has not been built (prepared) yet."""


def _not_built_error(builder: tfds.core.DatasetBuilder) -> DatasetNotBuiltError:
  return DatasetNotBuiltError(
      f'Dataset {builder.name} (config {builder.builder_config.name}) is not '
      f'built in data_dir {builder.data_dir_root} (expected {builder.data_dir}). '
      f'Build it first with: {PREPARE_COMMAND}, using the same config, '
      f'data.data_dir and data.builder_kwargs.')


_BEAM_INSTALL = 'pip install -r requirements-beam.txt'


def beam_options(data_config: Any):
  """Beam pipeline options for `data.beam_num_workers` / `data.beam_options`.

  Args:
    data_config: the `config.data` ConfigDict (the two fields may be missing).

  Returns:
    None for the sequential build (beam_num_workers 0, no beam_options; no
    apache-beam import), else `apache_beam...PipelineOptions`: with
    beam_num_workers N > 0 Beam's DirectRunner with N local worker processes
    (`--direct_running_mode=multi_processing`), plus the flags of
    beam_options (e.g. '--runner=FlinkRunner --flink_master=host:8081' for a
    cluster; shell-quoted).

  Raises:
    errors.ConfigError: apache-beam is not installed (the message says how to
      install it), or beam_num_workers > 0 with a runner other than
      DirectRunner.
  """
  workers = int(getattr(data_config, 'beam_num_workers', 0) or 0)
  flags = shlex.split(str(getattr(data_config, 'beam_options', '') or ''))
  if workers < 0:
    raise errors.ConfigError(f'data.beam_num_workers: expected 0 (sequential) or '
                             f'a number of workers, got {workers}')
  if workers == 0 and not flags:
    return None
  try:
    from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
  except ImportError:
    key = (f'data.beam_num_workers={workers}' if workers else
           f'data.beam_options={" ".join(flags)!r}')
    raise errors.ConfigError(
        f'{key} builds the dataset with Apache Beam, which is not installed; '
        f'install it with `{_BEAM_INSTALL}` (or `pip install -e .[beam]`), or '
        'set data.beam_num_workers=0 and data.beam_options="" for the '
        'sequential build') from None
  if workers:
    runners = [f.split('=', 1)[1] for f in flags if f.startswith('--runner=')]
    if any(r not in ('DirectRunner', 'direct') for r in runners):
      raise errors.ConfigError(
          f'data.beam_num_workers={workers} sets the local DirectRunner\'s '
          f'workers, but data.beam_options names --runner={runners[0]}; set '
          'data.beam_num_workers=0 for a cluster runner')
    flags = ['--runner=DirectRunner', f'--direct_num_workers={workers}',
             '--direct_running_mode=multi_processing'] + [
                 f for f in flags if not f.startswith('--runner=')]
  return pipeline_options.PipelineOptions(flags)


# A builder's error from inside a Beam worker, as the pipeline's error text
# quotes it (the worker's traceback ends with 'module.Class: message').
_WORKER_ERROR = re.compile(
    r'(?:deepskeleton_jax\.[\w.]*\.)?(?:BadFileError|InputError): (.+)')


def _worker_input_error(error: BaseException) -> errors.InputError | None:
  """The InputError a Beam worker raised, if `error` carries one."""
  if isinstance(error, errors.UserError):
    return None
  match = _WORKER_ERROR.search(str(error))
  return errors.InputError(match.group(1).strip()) if match else None


def prepare(data_config: Any) -> tfds.core.GeneratorBasedBuilder:
  """Builds the dataset (no-op if built); a failed build leaves nothing behind.

  TFDS writes into a temporary `incomplete.*` directory and renames it when
  done; on failure this also removes the directories the attempt created
  (the config/version directories and an empty `downloads/`). Builds of the
  same dataset version take turns (a lock file `.<name>-<version>.build.lock`
  in the data dir, released when its process ends, even by SIGKILL); the
  build that holds it first removes the `incomplete.*` folders of that
  version that killed builds left. (Not on gs://: no lock, nothing removed.)

  With `data.beam_num_workers` > 0 or `data.beam_options` (see
  `beam_options`), builders that support it generate their examples with
  Apache Beam (human36m, mpii, bvh_mocap; the same examples as the
  sequential build); the worker processes find this package through
  PYTHONPATH. An input error raised in a worker comes back as an
  `errors.InputError` naming the file.

  Args:
    data_config: the `config.data` ConfigDict; `manual_dir` (may be empty) is
      where manual-download datasets read their files from.

  Returns:
    The prepared builder.
  """
  builder = get_builder(data_config)
  if builder.is_prepared():
    logging.info('%s already built in %s', builder.name, builder.data_dir)
    return builder
  options = beam_options(data_config)
  manual_dir = _manual_dir(builder, data_config)
  root = pathlib.Path(builder.data_dir_root)
  dataset_dir = root / builder.name
  parent = pathlib.Path(builder.data_dir).parent
  watched = [root, root / 'downloads', dataset_dir, dataset_dir / '.config',
             parent, pathlib.Path(builder.data_dir)]
  existed = {p: p.exists() for p in watched}
  local = '://' not in str(builder.data_dir_root)  # no file locks on gs://
  if local:
    root.mkdir(parents=True, exist_ok=True)
  # One build of a dataset version at a time (processes of this package):
  # holding the lock, no other build is writing, so TFDS's `incomplete.*`
  # folders of this version were left by killed builds and can go.
  with (files.exclusive_lock(root / f'.{builder.name}-{builder.version}.build.lock',
                             on_wait=lambda: logging.info(
                                 'waiting for another process building %s', builder.name))
        if local else contextlib.nullcontext()):
    if builder.is_prepared():
      logging.info('%s was built by another process in %s', builder.name, builder.data_dir)
      return builder
    stale = re.compile(rf'incomplete\.[A-Z0-9]{{6}}_{re.escape(str(builder.version))}')
    for leftover in (parent.iterdir() if local and parent.is_dir() else ()):
      if leftover.is_dir() and stale.fullmatch(leftover.name):
        logging.info('removing %s, left by an interrupted build', leftover)
        shutil.rmtree(leftover)
    try:
      with _package_on_pythonpath(options is not None):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            manual_dir=manual_dir, beam_options=options))
    except BaseException as e:
      for p in reversed(watched):
        if not existed[p] and p.exists():
          shutil.rmtree(p, ignore_errors=True)
      if parent.is_dir():
        for leftover in parent.glob(f'incomplete.*{builder.version}'):
          shutil.rmtree(leftover, ignore_errors=True)
      worker_error = _worker_input_error(e) if options is not None else None
      if worker_error is not None:
        raise worker_error from e
      raise
  logging.info('%s built in %s', builder.name, builder.data_dir)
  return builder


def _manual_dir(builder: tfds.core.DatasetBuilder, data_config: Any) -> str | None:
  """`data.manual_dir` checked: a folder, or None where the builder needs none.

  A builder with manual download instructions and no `manual_dir` reads TFDS's
  default, `<data_dir>/downloads/manual`, when that holds files.

  Raises:
    errors.ConfigError: one line naming `config.data.manual_dir` and what the
      builder expects there.
  """
  manual_dir = str(getattr(data_config, 'manual_dir', None) or '').strip()
  instructions = getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None)
  expected = (f'the folder of the manually downloaded files of {builder.name}'
              + (f' ({instructions.strip().splitlines()[0].rstrip(":")})'
                 if instructions else ''))
  if manual_dir:
    manual_dir = os.path.expanduser(manual_dir)
    if not os.path.isdir(manual_dir):
      raise errors.ConfigError(f'config.data.manual_dir: {manual_dir} is not a directory; '
                               f'expected {expected}')
    return manual_dir
  default = pathlib.Path(builder.data_dir_root) / 'downloads' / 'manual'
  if instructions and not (default.is_dir() and any(default.iterdir())):
    raise errors.ConfigError(f'config.data.manual_dir is empty: expected {expected}, '
                             'e.g. --config.data.manual_dir=/data/' + builder.name)
  return None


@contextlib.contextmanager
def _package_on_pythonpath(enabled: bool):
  """Puts this checkout on PYTHONPATH (for Beam's worker processes)."""
  if not enabled:
    yield
    return
  old = os.environ.get('PYTHONPATH')
  top = str(pathlib.Path(__file__).resolve().parents[2])
  os.environ['PYTHONPATH'] = os.pathsep.join([top] + ([old] if old else []))
  try:
    yield
  finally:
    if old is None:
      os.environ.pop('PYTHONPATH', None)
    else:
      os.environ['PYTHONPATH'] = old


def data_source(data_config: Any, split: str, decode_image: bool = True):
  """A random-access grain data source of one split of a built dataset.

  Args:
    data_config: the `config.data` ConfigDict.
    split: split name (e.g. 'train', 'test', or a TFDS slice like 'train[:10]').
    decode_image: False keeps `image` as encoded bytes (the input pipeline
      decodes it itself).

  Returns:
    A sequence of example dicts (numpy values; text fields as bytes).

  Raises:
    DatasetNotBuiltError: the dataset is not built (the message gives the
      prepare command and the data_dir).
    errors.ConfigError: the split does not exist.
  """
  return split_source(get_builder(data_config), split, decode_image)


def row_order(data_config: Any, split: str) -> list[str] | None:
  """The keys of `split`'s persons in its annotation file's order, if recorded.

  Args:
    data_config: the `config.data` ConfigDict.
    split: a split name (a TFDS slice names its whole split).

  Returns:
    The example keys the builder recorded (`example_format.ROW_ORDER`), or
    None when it recorded none for this split.

  Raises:
    DatasetNotBuiltError: the dataset is not built.
  """
  builder = get_builder(data_config)
  if not builder.is_prepared():
    raise _not_built_error(builder)
  orders = (builder.info.metadata or {}).get(example_format.ROW_ORDER) or {}
  order = orders.get(split.split('[')[0])
  return None if order is None else [str(k) for k in order]


def split_source(builder: tfds.core.DatasetBuilder, split: str,
                 decode_image: bool = True):
  """`data_source` for an existing builder (see there)."""
  if not builder.is_prepared():
    raise _not_built_error(builder)
  base_split = split.split('[')[0]
  if base_split not in builder.info.splits:
    raise errors.ConfigError(f'split {split!r} not in {builder.name} '
                     f'(splits: {sorted(builder.info.splits)})')
  decoders = None if decode_image else {'image': tfds.decode.SkipDecoding()}
  return builder.as_data_source(split, decoders=decoders)
