"""Image prediction's inputs and outputs, with a stand-in for the trained pipeline.

The stand-in (`_FakePredictor`) returns a pose that encodes the image's mean
grey value, so each output file can be traced to its input without training.
"""

import json
import logging

import cv2
import numpy as np
import pytest

from configs import tiny
from deepskeleton_jax import errors
from deepskeleton_jax.experiment import config_lib
from deepskeleton_jax.experiment import stages as stages_lib
from deepskeleton_jax.inference import predict
from deepskeleton_jax.inference import predictor as predictor_lib

K = 16


class _FakePredictor:
  """`Predictor`'s interface; hypothesis h of an image of mean grey g is g + h (mm)."""

  nan = False

  def __init__(self, config, workdir, with_maps=True, with_hourglass=True):
    del workdir, with_maps, with_hourglass
    self.loaded = {'skeleton_net': {}, 'regressor': {}}
    self.lay = stages_lib.layout(config)
    self.crop_scales = tuple(config.data.crop_scales)

  def __call__(self, batch):
    grey = float(batch['image'][0, self.lay.unit].mean())
    num_hyps, size = len(self.lay.hypotheses), self.lay.map_size
    hyps = grey + np.arange(num_hyps, dtype=np.float32)[:, None, None] + np.zeros((K, 3))
    if self.nan:
      hyps[1:] = np.nan
    return {'chosen': np.array([0]), 'hyps': hyps[None], 'pose': hyps[None, 0],
            'joints_2d': np.full((1, K, 2), np.nan if self.nan else 5.0, np.float32),
            'confidence': np.ones((1, K), np.float32),
            'maps': np.zeros((1, num_hyps, size, size, 6), np.float32)}


def _config(tmp_path, images, boxes=''):
  config = tiny.get_config()
  config.predict.update(images=images, boxes=boxes, output_dir=str(tmp_path / 'out'))
  return config_lib.finalize(config)


def _image(path, grey, size=(48, 64)):
  path.parent.mkdir(parents=True, exist_ok=True)
  cv2.imwrite(str(path), np.full(size + (3,), grey, np.uint8))
  return str(path)


def _strict_json(path):
  def refuse(constant):
    raise AssertionError(f'{path} holds {constant}, which is not JSON')
  return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture
def fake_predictor(monkeypatch):
  monkeypatch.setattr(predictor_lib, 'Predictor', _FakePredictor)
  return _FakePredictor


def test_images_of_the_same_name_get_distinct_outputs(tmp_path, fake_predictor, monkeypatch):
  del fake_predictor
  monkeypatch.chdir(tmp_path)
  a = _image(tmp_path / 'a' / 'good.jpg', 40, size=(48, 48))  # square: the crop is the image
  b = _image(tmp_path / 'b' / 'good.jpg', 200, size=(48, 48))
  records = predict.predict(_config(tmp_path, 'a/good.jpg,b/good.jpg'), str(tmp_path))
  assert len(records) == 2
  out = tmp_path / 'out'
  assert sorted(p.name for p in out.iterdir()) == [
      'a_good.json', 'a_good.png', 'b_good.json', 'b_good.png']
  for name, path, grey in (('a_good', a, 40), ('b_good', b, 200)):
    record = _strict_json(out / f'{name}.json')
    assert record['image'] == path.removeprefix(str(tmp_path) + '/')
    # The pose encodes the input's grey value (JPEG rounding aside).
    assert abs(record['joints_3d_mm'][0][0] - grey) < 2


@pytest.mark.parametrize('paths, names', [
    (['a/good.jpg', 'b/good.jpg'], ['a_good', 'b_good']),
    (['x/a/good.jpg', 'y/a/good.jpg', 'c.jpg'], ['x_a_good', 'y_a_good', 'c']),
    (['good.jpg', 'good.jpg'], ['good_1', 'good_2']),  # one image, two boxes
    (['good.jpg', 'good.png'], ['good_1', 'good_2']),
    (['a/good.jpg', 'b/good.jpg', 'a_good.jpg'], ['a_good_1', 'b_good', 'a_good_3']),
    (['a.jpg', 'b.jpg'], ['a', 'b']),
])
def test_output_names_rule(paths, names):
  assert predict.output_names(paths) == names


@pytest.mark.parametrize('boxes, message', [
    ('0 0 10 10;nan nan nan nan', r"config.predict.boxes: 'nan nan nan nan' is not a box; expected "
                        r"'x0 y0 x1 y1' \(finite numbers\)"),
    ('0 0 10 10;inf 0 10 10', r"'inf 0 10 10' is not a box"),
    ('0 0 10 10;100 60 140 90', r'config.predict.boxes: box 2 \[100.0, 60.0, 140.0, 90.0\] '
                                r'for .*two.jpg: it lies outside the 64x48 image'),
    ('-50 -50 -10 -10;0 0 10 10', r'box 1 .* for .*one.jpg: it lies outside the 64x48 image'),
])
def test_bad_person_boxes_are_refused_before_the_pipeline_loads(tmp_path, monkeypatch,
                                                                  boxes, message):
  def no_pipeline(*args, **kwargs):
    raise AssertionError('the pipeline must not load for a bad box')
  monkeypatch.setattr(predictor_lib, 'Predictor', no_pipeline)
  images = ','.join(_image(tmp_path / n, 90) for n in ('one.jpg', 'two.jpg'))
  with pytest.raises(errors.ConfigError, match=message) as info:
    predict.predict(_config(tmp_path, images, boxes), str(tmp_path))
  assert '\n' not in str(info.value)
  assert not (tmp_path / 'out').exists()


def test_non_finite_outputs_are_null_in_the_json(tmp_path, fake_predictor, monkeypatch):
  monkeypatch.setattr(fake_predictor, 'nan', True)
  image = _image(tmp_path / 'dark.jpg', 10)
  record = predict.predict(_config(tmp_path, image), str(tmp_path))[0]
  saved = _strict_json(tmp_path / 'out' / 'dark.json')
  assert saved == record
  assert saved['joints_2d'] is None and saved['hypotheses_mm'][1] is None
  assert np.asarray(saved['joints_3d_mm']).shape == (K, 3)


@pytest.mark.parametrize('content', [b'', b'\xff\xd8\xff garbage'])
def test_empty_or_undecodable_image_is_one_line_naming_it(tmp_path, fake_predictor, content,
                                                          caplog):
  del fake_predictor
  bad = tmp_path / 'bad.jpg'
  bad.write_bytes(content)
  with caplog.at_level(logging.WARNING), pytest.raises(errors.InputError) as info:
    predict.predict(_config(tmp_path, f'{_image(tmp_path / "ok.jpg", 9)},{bad}'),
                    str(tmp_path))
  assert str(info.value).startswith(f'{bad}: ')
  assert 'expected a JPEG or PNG image' in str(info.value)
  assert not (tmp_path / 'out').exists()
