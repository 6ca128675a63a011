"""Tests of the dataset registry: loading by path, configs, prepare, errors."""

import os
import sys
import textwrap

import ml_collections
import numpy as np
import pytest

from deepskeleton_jax import errors
from deepskeleton_jax.data import registry

# A small builder following the datasets/ rule, written into a temporary
# datasets folder: it reads `numbers.txt` from the manual dir.
_FAKE = '''
"""A fake manual-download dataset."""
import dataclasses
import numpy as np
import tensorflow_datasets as tfds


@dataclasses.dataclass
class ManualToyConfig(tfds.core.BuilderConfig):
  scale: float = 1.0
  fail_at: int = -1
  tag: str = 'a'


class ManualToy(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version('1.0.0')
  BUILDER_CONFIGS = [ManualToyConfig(name='default')]
  MANUAL_DOWNLOAD_INSTRUCTIONS = 'Put numbers.txt in the manual dir.'

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'x': tfds.features.Tensor(shape=(), dtype=np.float32),
        'tag': tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    path = dl_manager.manual_dir / 'numbers.txt'
    if not path.exists():
      raise ValueError(f'{path} is missing')
    values = [float(v) for v in path.read_text().split()]
    return {'train': self._generate_examples(values)}

  def _generate_examples(self, values):
    cfg = self.builder_config
    for i, v in enumerate(values):
      if i == cfg.fail_at:
        raise RuntimeError('simulated failure')
      yield i, {'x': np.float32(v * cfg.scale), 'tag': cfg.tag}
'''


@pytest.fixture
def fake_datasets(tmp_path, monkeypatch):
  root = tmp_path / 'datasets'
  (root / 'manual_toy').mkdir(parents=True)
  (root / 'manual_toy' / 'manual_toy.py').write_text(textwrap.dedent(_FAKE))
  (root / 'not_a_dataset').mkdir()
  manual = tmp_path / 'manual'
  manual.mkdir()
  (manual / 'numbers.txt').write_text('1 2 3 4 5')
  monkeypatch.setattr(registry, 'DATASETS_DIR', root)
  return manual


def _cfg(data_dir, name='manual_toy', manual_dir='', **kwargs):
  return ml_collections.ConfigDict({'name': name, 'data_dir': str(data_dir),
                                    'manual_dir': str(manual_dir),
                                    'builder_kwargs': kwargs})


def test_available_lists_the_repo_datasets():
  assert 'synthetic' in registry.available()
  assert registry.builder_class('synthetic').name == 'synthetic'


def test_unknown_dataset_names_the_options():
  with pytest.raises(ValueError, match="no dataset 'nope'.*available"):
    registry.builder_class('nope')


def test_config_names_are_deterministic():
  cls = registry.builder_class('synthetic')
  default = cls.BUILDER_CONFIGS[0]
  assert registry.make_config(cls, {}) is default
  assert registry.make_config(cls, {'num_train': default.num_train}) is default
  a = registry.make_config(cls, {'num_train': 16, 'crop_size': 64})
  b = registry.make_config(cls, ml_collections.ConfigDict(
      {'crop_size': 64.0, 'num_train': 16, 'seed': default.seed}))
  assert a.name == b.name == 'default-crop_size_64-num_train_16'
  assert (a.num_train, a.crop_size, a.num_test) == (16, 64, default.num_test)
  assert isinstance(b.crop_size, int)
  assert registry.make_config(cls, {'num_train': 17}).name != a.name


@pytest.mark.parametrize('kwargs, match', [
    ({'bogus': 1}, 'builder_kwargs.bogus: not an option'),
    ({'num_train': 'many'}, 'builder_kwargs.num_train: expected'),
    ({'num_train': 2.5}, 'builder_kwargs.num_train: expected'),
])
def test_bad_builder_kwargs(kwargs, match):
  with pytest.raises(ValueError, match=match):
    registry.make_config(registry.builder_class('synthetic'), kwargs)


def test_options_go_to_different_directories(tmp_path):
  a = registry.get_builder(_cfg(tmp_path, 'synthetic', num_train=16))
  b = registry.get_builder(_cfg(tmp_path, 'synthetic', num_train=32))
  c = registry.get_builder(_cfg(tmp_path, 'synthetic', num_train=16))
  assert a.data_dir != b.data_dir and a.data_dir == c.data_dir
  assert str(a.data_dir).startswith(str(tmp_path))


def test_data_dir_expands_home(monkeypatch, tmp_path):
  monkeypatch.setenv('HOME', str(tmp_path))
  builder = registry.get_builder(_cfg('~/tfds', 'synthetic'))
  assert str(builder.data_dir).startswith(str(tmp_path / 'tfds'))


def test_reading_an_unbuilt_dataset_says_how_to_build_it(tmp_path):
  with pytest.raises(registry.DatasetNotBuiltError) as e:
    registry.data_source(_cfg(tmp_path / 'empty', 'synthetic'), 'train')
  message = str(e.value)
  assert 'python run.py --mode=prepare --config=' in message
  assert str(tmp_path / 'empty') in message
  assert not (tmp_path / 'empty').exists()  # Reading creates nothing.


def test_prepare_reads_manual_dir_and_applies_kwargs(tmp_path, fake_datasets):
  cfg = _cfg(tmp_path / 'data', manual_dir=fake_datasets, scale=2.0, tag='b')
  builder = registry.prepare(cfg)
  assert builder.builder_config.name == 'default-scale_2.0-tag_b'
  source = registry.data_source(cfg, 'train')
  values = sorted(float(source[i]['x']) for i in range(len(source)))
  assert values == [2.0, 4.0, 6.0, 8.0, 10.0]
  assert {source[i]['tag'] for i in range(len(source))} == {b'b'}
  assert registry.prepare(cfg).is_prepared()  # A second call is a no-op.
  with pytest.raises(ValueError, match="split 'test' not in manual_toy"):
    registry.data_source(cfg, 'test')


def _files(root):
  return sorted(os.path.relpath(os.path.join(d, f), root)
                for d, _, files in os.walk(root) for f in files)


def test_failed_build_leaves_nothing_behind(tmp_path, fake_datasets):
  data = tmp_path / 'data'
  with pytest.raises(RuntimeError, match='simulated failure'):
    registry.prepare(_cfg(data, manual_dir=fake_datasets, fail_at=3))
  assert not data.exists()
  # With a data dir already holding another build, only the new attempt goes.
  good = _cfg(data, manual_dir=fake_datasets)
  registry.prepare(good)
  before = _files(data)
  with pytest.raises(RuntimeError, match='simulated failure'):
    registry.prepare(_cfg(data, manual_dir=fake_datasets, fail_at=3))
  assert _files(data) == before
  assert sorted(os.listdir(data / 'manual_toy')) == ['.config', 'default']
  source = registry.data_source(good, 'train')
  assert len(source) == 5 and np.isfinite(float(source[0]['x']))


def test_missing_manual_files_are_reported(tmp_path, fake_datasets):
  with pytest.raises(ValueError, match='data.manual_dir: .*nowhere is not a directory'):
    registry.prepare(_cfg(tmp_path / 'data', manual_dir=tmp_path / 'nowhere'))
  (fake_datasets / 'numbers.txt').rename(fake_datasets / 'other.txt')
  with pytest.raises(ValueError, match='numbers.txt is missing'):
    registry.prepare(_cfg(tmp_path / 'data', manual_dir=fake_datasets))
  assert not (tmp_path / 'data').exists()


@pytest.mark.parametrize('name, expected', [
    ('human36m', 'unpack the per-subject Videos and D3 Positions archives'),
    ('mpii', 'Download the images and annotations from http://human-pose'),
])
@pytest.mark.parametrize('manual_dir', ['', '   ', None])
def test_empty_manual_dir_is_one_line_naming_the_key(tmp_path, name, expected, manual_dir):
  cfg = _cfg(tmp_path / 'data', name=name, manual_dir='')
  cfg.manual_dir = manual_dir
  with pytest.raises(errors.ConfigError) as info:
    registry.prepare(cfg)
  message = str(info.value)
  assert message.startswith('config.data.manual_dir is empty: expected the folder of the '
                            f'manually downloaded files of {name} (')
  assert expected in message and '\n' not in message
  assert not (tmp_path / 'data').exists()


def test_tfds_default_manual_dir_still_serves(tmp_path, fake_datasets):
  default = tmp_path / 'data' / 'downloads' / 'manual'
  default.mkdir(parents=True)
  (default / 'numbers.txt').write_text('7 8')
  registry.prepare(_cfg(tmp_path / 'data'))  # TFDS reads <data_dir>/downloads/manual
  assert len(registry.data_source(_cfg(tmp_path / 'data'), 'train')) == 2


def _beam_cfg(workers=0, options=''):
  return ml_collections.ConfigDict({'beam_num_workers': workers,
                                    'beam_options': options})


def test_sequential_build_needs_no_beam(monkeypatch):
  monkeypatch.setitem(sys.modules, 'apache_beam', None)  # import fails
  assert registry.beam_options(_beam_cfg()) is None
  assert registry.beam_options(ml_collections.ConfigDict({})) is None


@pytest.mark.parametrize('workers, options', [(2, ''), (0, '--runner=FlinkRunner')])
def test_missing_apache_beam_says_how_to_install_it(monkeypatch, workers, options):
  monkeypatch.setitem(sys.modules, 'apache_beam', None)
  monkeypatch.setitem(sys.modules, 'apache_beam.options', None)
  with pytest.raises(errors.ConfigError,
                     match=r'not installed.*pip install -r requirements-beam\.txt'):
    registry.beam_options(_beam_cfg(workers, options))


def test_beam_options_for_local_workers_and_clusters():
  pytest.importorskip('apache_beam')
  local = registry.beam_options(_beam_cfg(2)).get_all_options()
  assert local['runner'] == 'DirectRunner'
  assert local['direct_num_workers'] == 2
  assert local['direct_running_mode'] == 'multi_processing'
  cluster = registry.beam_options(_beam_cfg(
      0, "--runner=FlinkRunner --flink_master=host:8081 --job_name='a b'"))
  cluster = cluster.get_all_options()
  assert cluster['runner'] == 'FlinkRunner' and cluster['job_name'] == 'a b'
  with pytest.raises(errors.ConfigError, match='DirectRunner'):
    registry.beam_options(_beam_cfg(2, '--runner=DataflowRunner'))
