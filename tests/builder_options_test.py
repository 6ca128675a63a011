"""Builder options from the command line: `--config.data.builder_kwargs.<name>=value`."""

import os
import pathlib
import subprocess
import sys

import pytest

from configs import h36m_skeleton_net
from configs import tiny
from deepskeleton_jax import errors
from deepskeleton_jax.data import builder_options
from deepskeleton_jax.data import registry
from deepskeleton_jax.experiment import config_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
FLAG = '--config.data.builder_kwargs'


def _builder_config(config, argv):
  rest, flags = config_lib.take_builder_flags(['run.py', '--mode=prepare'] + argv)
  assert rest == ['run.py', '--mode=prepare']
  config.lock()
  registry.set_builder_flags(config.data, flags)
  return registry.get_builder(config_lib.finalize(config).data).builder_config


def test_readme_examples_set_options_the_config_file_does_not():
  cfg = _builder_config(h36m_skeleton_net.get_config(), [
      f'{FLAG}.strict=True', f'{FLAG}.skip_sequences=()', f'{FLAG}.cameras',
      '54138969,60457274', f'{FLAG}.train_every=10'])
  assert cfg.strict is True and cfg.skip_sequences == ()
  assert cfg.cameras == ('54138969', '60457274')
  assert cfg.train_every == 10 and cfg.test_every == 64  # the config file's, kept
  # Named by the options that differ from the builder's defaults.
  assert cfg.name == 'default-cameras_54138969_60457274-skip_sequences_-strict_True-train_every_10'


def test_dict_form_merges_into_the_config_files_options():
  cfg = _builder_config(tiny.get_config(), [f"{FLAG}={{'num_train': 4, 'camera_yaw_deg': 30}}"])
  assert (cfg.num_train, cfg.camera_yaw_deg) == (4, 30.0)
  assert (cfg.num_test, cfg.crop_size) == (8, 48)  # from configs/tiny.py, not dropped


@pytest.mark.parametrize('text, value', [
    ('strict=false', False), ('strict=1', True), ('skip_videos=S9/Walking.55011271',
                                                  ('S9/Walking.55011271',)),
    ("actions=('Walking 1', 'Eating')", ('Walking 1', 'Eating')),
    ('holdout_fraction=0.1', 0.1), ('mono_check_mm=0', 0.0)])
def test_text_is_read_by_the_options_type(text, value):
  name, _, raw = text.partition('=')
  cls = registry.builder_class('human36m')
  assert builder_options.parse_flags(cls, [(f'{FLAG}.{name}', raw)]) == {name: value}


@pytest.mark.parametrize('flag, text, message', [
    (f'{FLAG}.stirct', 'True', r'^--config.data.builder_kwargs.stirct=True: not an option of '
                               r'human36m; its options: actions, box_margin, .*, strict, '),
    (f'{FLAG}.strict', 'yes', r'strict=yes: expected a value of type bool like the default '
                              r"False, got 'yes'$"),
    (f'{FLAG}.train_every', '2.5', r'expected a value of type int'),
    (f'{FLAG}.cameras', '(54138969,)', r'expected a value of type tuple\[str, ...\]'),
    (FLAG, "{'x': 1}", r"builder_kwargs: 'x': not an option of human36m"),
    (FLAG, 'strict', r'expected a Python dict of options'),
])
def test_unknown_option_or_wrong_type_is_one_line(flag, text, message):
  with pytest.raises(errors.ConfigError, match=message) as info:
    builder_options.parse_flags(registry.builder_class('human36m'), [(flag, text)])
  assert '\n' not in str(info.value)


def test_flag_without_a_value_is_refused():
  with pytest.raises(errors.ConfigError, match=f'flag {FLAG}.strict: expected'):
    config_lib.take_builder_flags(['run.py', f'{FLAG}.strict'])


def _run(args, tmp_path):
  cmd = [sys.executable, str(REPO / 'run.py'), f'--workdir={tmp_path / "work"}'] + args
  return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=str(REPO),
                        env=dict(os.environ))


def test_command_line_builds_with_an_option_the_config_file_lacks(tmp_path):
  out = _run(['--mode=prepare', '--config=tiny', f'--config.data.data_dir={tmp_path / "d"}',
              f'{FLAG}.camera_yaw_deg=30', f'{FLAG}.num_train', '4'], tmp_path)
  assert out.returncode == 0, out.stderr[-3000:]
  built = [p.name for p in (tmp_path / 'd' / 'synthetic').iterdir() if not p.name.startswith('.')]
  assert built == ['default-camera_yaw_deg_30.0-crop_size_48-num_holdout_8-num_test_8-'
                   'num_train_4']


def test_command_line_refuses_an_unknown_option_in_one_line(tmp_path):
  out = _run(['--mode=prepare', '--config=h36m_skeleton_net', f'{FLAG}.strict=True',
              f'{FLAG}.skip_sequences=()', f'{FLAG}.stirct=True'], tmp_path)
  assert out.returncode == 2
  lines = out.stderr.strip().splitlines()
  assert lines[-1].startswith(f'error: {FLAG}.stirct=True: not an option of human36m; its '
                              'options: actions,'), out.stderr[-3000:]
  assert 'Traceback' not in out.stderr
