"""Tests of the mpii builder: real samples (JSON route) and a fake .mat."""

import json
import logging
import shutil

import h5py
import numpy as np
from PIL import Image
import pytest
import scipy.io
import tensorflow_datasets as tfds

import mpii_release  # tests/mpii_release.py

from deepskeleton_jax import errors
from deepskeleton_jax.data import registry
from deepskeleton_jax.geometry import camera

mpii = registry.load_module('mpii')
mpii_annotations = registry.load_module('mpii', 'mpii_annotations')


def _build(manual_dir, data_dir, **kwargs):
  builder = mpii.Mpii(data_dir=str(data_dir),
                      config=mpii.MpiiConfig(name='t', **kwargs))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual_dir)))
  return builder


def _examples(builder, split):
  source = builder.as_data_source(split)
  return [source[i] for i in range(len(source))]


@pytest.fixture(scope='module')
def json_build(shared_data, tmp_path_factory):
  root = tmp_path_factory.mktemp('mpii_manual')
  annotations = mpii_release.copy_json_release(shared_data, root)
  shutil.copy(shared_data / 'mpii_eval' / 'valid.h5', root / 'valid.h5')
  # Pseudo-3D for one person only.
  pseudo = np.arange(48, dtype=np.float32).reshape(16, 3) + 2000
  np.savez(root / 'pseudo3d.npz', **{f'{annotations[1]["image"]}#0': pseudo})
  builder = _build(root, tmp_path_factory.mktemp('mpii_data'), crop_size=128,
                   pseudo_3d_file='pseudo3d.npz')
  return builder, annotations, root, pseudo


def test_json_joints_map_back_to_the_annotation(json_build, shared_data):
  builder, annotations, root, pseudo = json_build
  with h5py.File(shared_data / 'mpii_eval' / 'valid.h5', 'r') as f:
    normalize = {n.decode(): v for n, v in zip(f['imgname'][()],
                                              f['normalize'][()])}
  # Five images: fewer than 20, so the last image's person is held out.
  train, holdout = _examples(builder, 'train'), _examples(builder, 'holdout')
  assert [e['image_name'].decode() for e in holdout] == [annotations[-1]['image']]
  assert len(train) == len(annotations) - 1
  assert builder.info.metadata['skipped_files'] == []
  for examples in (train + holdout, _examples(builder, 'validation')):
    assert len(examples) == len(annotations)
    for ex in examples:
      a = next(a for a in annotations if a['image'] == ex['image_name'].decode())
      vis = np.asarray(a['joints_vis']) > 0
      np.testing.assert_array_equal(ex['visible'], vis)
      # Continuous = 1-based MATLAB - 0.5.
      back = camera.apply_affine(ex['joints_2d'].astype(np.float64),
                                 ex['crop_to_image'].astype(np.float64))
      np.testing.assert_allclose(back[vis] + 0.5, np.asarray(a['joints'])[vis],
                                 atol=0.02)
      # Box: centre shifted 15 x scale down; side scale x 200 x 1.25 x 1.5.
      centre = camera.apply_affine(np.array([[64.0, 64.0]]),
                                   ex['crop_to_image'].astype(np.float64))[0]
      np.testing.assert_allclose(
          centre, np.asarray(a['center']) - 0.5 + [0, 15 * a['scale']],
          atol=0.02)
      np.testing.assert_allclose(ex['crop_to_image'][0, 0] * 128,
                                 a['scale'] * 200 * 1.25 * 1.5, rtol=1e-5)
      np.testing.assert_allclose(ex['head_size'] * ex['crop_to_image'][0, 0],
                                 normalize[a['image']], rtol=1e-4)
      assert not ex['has_intrinsics']
      if a['image'] == annotations[1]['image']:
        assert ex['has_3d']
        np.testing.assert_array_equal(ex['joints_3d'], pseudo)
      else:
        assert not ex['has_3d'] and not ex['joints_3d'].any()


def test_json_crop_pixels_match_an_independent_warp(json_build):
  builder, _, root, _ = json_build
  for ex in _examples(builder, 'validation'):
    original = Image.open(root / 'images' / ex['image_name'].decode())
    a = ex['crop_to_image'].astype(np.float64)
    # PIL samples output pixel (x, y) at input a @ (x, y, 1), centres at +.5.
    reference = np.asarray(original.convert('RGB').transform(
        (128, 128), Image.Transform.AFFINE, tuple(a.reshape(-1)),
        resample=Image.Resampling.BILINEAR), np.float32)
    inside = reference.sum(-1) > 0
    diff = np.abs(ex['image'].astype(np.float32) - reference)[inside]
    assert diff.mean() < 8, ex["image_name"]  # (a 1 px shift gives 6-26)


def test_json_head_sizes_of_all_2958_validation_persons(shared_data, tmp_path):
  """Both JSON-route sources give every validation person the official head size,
  the 10 whose `pos_gt_src` holds a zero coordinate included."""
  folder = shared_data / 'mpii_eval'
  boxes = scipy.io.loadmat(folder / 'gt_valid_tompson_format.mat')['headboxes_src']
  official = 0.6 * np.linalg.norm(boxes[1] - boxes[0], axis=0)
  path = tmp_path / 'valid.json'
  path.write_text(json.dumps(mpii_release.validation_annotations(shared_data)))
  persons = mpii_annotations.read_json(path)
  mpii_annotations.attach_official_head_sizes(
      persons, mpii_annotations.read_gt_valid(folder / 'gt_valid_tompson_format.mat'),
      folder / 'gt_valid_tompson_format.mat', path)
  np.testing.assert_allclose([p.head_size for p in persons], official, rtol=1e-6)
  persons = mpii_annotations.read_json(path)
  valid = mpii_annotations.read_valid_h5(folder / 'valid.h5')
  assert mpii_annotations.attach_head_sizes(persons, valid) == 2958
  np.testing.assert_allclose([p.head_size for p in persons], official, rtol=1e-4)
  # Not the official order: refused, naming the first person out of place.
  swapped = mpii_annotations.read_json(path)
  swapped[5], swapped[6] = swapped[6], swapped[5]
  with pytest.raises(errors.InputError, match='person 5 .* is not person 5'):
    mpii_annotations.attach_official_head_sizes(
        swapped, mpii_annotations.read_gt_valid(folder / 'gt_valid_tompson_format.mat'),
        folder / 'gt_valid_tompson_format.mat', path)


@pytest.fixture(scope='module')
def mat_manual(tmp_path_factory):
  root = tmp_path_factory.mktemp('mpii_mat')
  (root / 'images').mkdir()
  rng = np.random.default_rng(0)
  for name in ('a.jpg', 'b.jpg', 'c.jpg', 'd.jpg'):
    Image.fromarray(rng.integers(0, 255, (90, 120, 3), np.uint8)).save(
        root / 'images' / name)
  a0 = mpii_release.rect({0: (30.0, 80.0), 9: (40.0, 10.0), 12: (50.0, 30.0)},
             (30.0, 5.0, 50.0, 20.0), 0.4, (40.0, 45.0))
  a1 = mpii_release.rect({}, (0, 0, 1, 1), mpii_release.EMPTY, None)  # Unannotated person: skipped.
  b0 = mpii_release.rect({3: (60.0, 50.0), 15: (70.0, 20.0)}, (60.0, 2.0, 80.0, 14.0),
             0.35, (65.0, 40.0))
  c0 = mpii_release.rect({2: (20.0, 20.0)}, (1, 1, 2, 2), 0.3, (20.0, 20.0))  # Test image.
  d0 = mpii_release.rect({7: (50.0, 40.0)}, (45.0, 5.0, 60.0, 20.0), 0.3, (50.0, 45.0))
  annolist = mpii_release.struct_array([
      {'image': {'name': 'a.jpg'}, 'annorect': mpii_release.struct_array([a0, a1])},
      {'image': {'name': 'b.jpg'}, 'annorect': mpii_release.struct_array([b0])},
      {'image': {'name': 'c.jpg'}, 'annorect': mpii_release.struct_array([c0])},
      {'image': {'name': 'd.jpg'}, 'annorect': mpii_release.struct_array([d0])},
  ])
  scipy.io.savemat(root / 'mpii_human_pose_v1_u12_1.mat', {'RELEASE': {
      'annolist': annolist, 'img_train': np.array([1, 1, 0, 1])}})
  with h5py.File(root / 'valid.h5', 'w') as f:
    f['index'] = np.array([1.0])
    f['person'] = np.array([0.0])
    f['imgname'] = np.array([b'b.jpg'])
    f['part'] = np.zeros((1, 16, 2))
    f['normalize'] = np.array([1.0])
  return root


def test_mat_route_splits_coordinates_and_head_boxes(mat_manual, tmp_path):
  builder = _build(mat_manual, tmp_path, annotation_format='mat', crop_size=64)
  train = _examples(builder, 'train')
  valid = _examples(builder, 'validation')
  holdout = _examples(builder, 'holdout')
  assert [(e['image_name'], e['frame']) for e in train] == [(b'a.jpg', 0)]
  assert [(e['image_name'], e['frame']) for e in valid] == [(b'b.jpg', 0)]
  assert [(e['image_name'], e['frame']) for e in holdout] == [(b'd.jpg', 0)]
  # The validation order of valid.h5, read back from disk by a new builder.
  reopened = mpii.Mpii(data_dir=str(tmp_path), config=builder.builder_config)
  assert reopened.info.metadata['row_order'] == {'validation': ['b.jpg#0']}
  for ex, joints, head, scale, objpos in (
      (train[0], {0: (30, 80), 9: (40, 10), 12: (50, 30)}, (30, 5, 50, 20),
       0.4, (40, 45)),
      (valid[0], {3: (60, 50), 15: (70, 20)}, (60, 2, 80, 14), 0.35,
       (65, 40))):
    assert sorted(np.flatnonzero(ex['visible'])) == sorted(joints)
    a = ex['crop_to_image'].astype(np.float64)
    back = camera.apply_affine(ex['joints_2d'].astype(np.float64), a)
    for j, xy in joints.items():
      np.testing.assert_allclose(back[j] + 0.5, xy, atol=0.01)
    scale_px = a[0, 0]
    np.testing.assert_allclose(
        ex['head_size'] * scale_px,
        0.6 * np.hypot(head[2] - head[0], head[3] - head[1]), rtol=1e-5)
    np.testing.assert_allclose(scale_px * 64, scale * 200 * 1.25 * 1.5,
                               rtol=1e-5)
    centre = camera.apply_affine(np.array([[32.0, 32.0]]), a)[0]
    np.testing.assert_allclose(centre, np.add(objpos, (-0.5, 15 * scale - 0.5)),
                               atol=0.01)


def test_missing_files_are_listed(mat_manual, tmp_path, shared_data):
  root = tmp_path / 'm'
  shutil.copytree(mat_manual, root)
  (root / 'valid.h5').unlink()
  (root / 'images' / 'a.jpg').unlink()
  with pytest.raises(ValueError, match=r'(?s)lacks 1 .*valid\.h5.*Expected layout'):
    _build(root, tmp_path / 'd1', annotation_format='mat')
  with pytest.raises(ValueError, match=r'(?s)lacks 2 .*train\.json.*valid\.json'):
    _build(root, tmp_path / 'd2')
  shutil.copy(mat_manual / 'valid.h5', root / 'valid.h5')
  with pytest.raises(ValueError, match=r'(?s)lacks 1 .*images/a\.jpg'):
    _build(root, tmp_path / 'd3', annotation_format='mat')


def test_bad_joints_rejected_and_corrupt_images_skipped_or_strict(
    shared_data, tmp_path, caplog):
  root = tmp_path / 'm'
  annotations = mpii_release.copy_json_release(shared_data, root)
  annotations[2]['joints'][4] = [1e7, 3.0]  # Far outside the image.
  (root / 'train.json').write_text(json.dumps(annotations))
  with caplog.at_level(logging.WARNING):
    builder = _build(root, tmp_path / 'ok', crop_size=32)
  assert len(_examples(builder, 'train') + _examples(builder, 'holdout')) == (
      len(annotations) - 1)
  assert len(_examples(builder, 'validation')) == len(annotations)
  assert 'rejected 1 invalid examples' in caplog.text
  assert builder.info.metadata['rejected_examples'] == 1
  assert f'{len(annotations)} of {len(annotations)} persons have no head size' \
      in caplog.text
  bad = root / 'images' / annotations[3]['image']
  bad.write_bytes(b'not a jpeg')
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    builder = _build(root, tmp_path / 'skip', crop_size=32)
  assert builder.info.metadata['skipped_files'] == [str(bad)]
  assert f'skipping {bad}' in caplog.text
  assert annotations[3]['image'].encode() not in {
      e['image_name'] for e in _examples(builder, 'validation')}
  assert len(_examples(builder, 'validation')) == len(annotations) - 1
  with pytest.raises(errors.InputError, match=str(bad)):
    _build(root, tmp_path / 'bad', crop_size=32, strict=True)
  assert not list((tmp_path / 'bad').rglob('dataset_info.json'))
  assert not list((tmp_path / 'bad').rglob('*array_record*'))


def test_holdout_is_every_20th_training_image_with_all_its_persons():
  persons = [mpii_annotations.Person(f'{i:03d}.jpg', k, np.zeros(2), 1.0, np.zeros((16, 2)),
                         np.ones(16, bool)) for i in range(45) for k in range(1 + i % 3)]
  images = list(dict.fromkeys(p.image for p in persons))
  train, holdout = mpii.split_holdout(persons, 20)
  assert {p.image for p in holdout} == {images[19], images[39]}
  assert len(holdout) == sum(p.image in (images[19], images[39]) for p in persons)
  assert sorted((p.image, p.person) for p in train + holdout) == sorted(
      (p.image, p.person) for p in persons)
  assert not {p.image for p in train} & {p.image for p in holdout}


def test_config_validation():
  with pytest.raises(errors.ConfigError, match='annotation_format'):
    mpii.MpiiConfig(name='x', annotation_format='xml')
  with pytest.raises(errors.ConfigError, match='holdout_every'):
    mpii.MpiiConfig(name='x', holdout_every=1)


def test_skeleton_net_refuses_examples_without_depth(json_build, tiny_data_dir, monkeypatch):
  """MPII without pseudo-3D for every person: fg = bg targets; training fails at start."""
  from configs import tiny  # pylint: disable=g-import-not-at-top
  from deepskeleton_jax.experiment import config_lib  # pylint: disable=g-import-not-at-top
  from deepskeleton_jax.training import train_loop  # pylint: disable=g-import-not-at-top
  builder = json_build[0]
  config = tiny.get_config()
  config.data.data_dir = str(tiny_data_dir)
  config = config_lib.finalize(config)
  train_loop.check_depth(config)  # the synthetic set has depth everywhere
  monkeypatch.setattr(train_loop.registry, 'data_source',
                      lambda data, split, decode_image=True: builder.as_data_source(split))
  config.data.name = 'mpii'
  with pytest.raises(errors.ConfigError, match='pseudo_3d_file') as e:
    train_loop.train_stage(config, '/nonexistent/workdir', 'skeleton_net')
  assert 'of 4 sampled training examples have no 3D joints' in str(e.value)


def _transposed(entry):
  return dict(entry, joints=np.asarray(entry['joints']).T.tolist())


@pytest.mark.parametrize('change, message', [
    (_transposed, r"person 2 \(image '.*\.jpg'\): joints has shape \[2, 16\]; "
                  r'expected \[16, 2\]'),
    (lambda e: dict(e, joints_vis=e['joints_vis'][:15]),
     r'person 2 .*: joints_vis has shape \[15\]; expected \[16\]'),
    (lambda e: dict(e, center=[e['center']]),
     r'person 2 .*: center has shape \[1, 2\]; expected \[2\]'),
    (lambda e: dict(e, scale='4.7'), r"person 2 .*: scale is '4.7'; expected a number"),
    (lambda e: dict(e, scale=[4.7]), r'person 2 .*: scale has shape \[1\]; expected a number'),
    (lambda e: dict(e, joints=None), r'person 2 .*: joints is None; expected \[16, 2\]'),
    (lambda e: dict(e, image=7), r'person 2: image is 7; expected the image file name'),
    (lambda e: {k: v for k, v in e.items() if k != 'center'},
     r"person 2 \(entry 2 of the list\) lacks \['center'\]"),
])
def test_json_fields_of_the_wrong_shape_are_refused_naming_the_person(
    tmp_path, change, message):
  """Nothing is transposed or reshaped to fit: one line names file, person, field."""
  entries = [dict(image=f'{i}.jpg', center=[50.0, 60.0], scale=1.0,
                  joints=[[10.0 + j, 20.0] for j in range(16)], joints_vis=[1] * 16)
             for i in range(4)]
  entries[2] = change(entries[2])
  path = tmp_path / 'train.json'
  path.write_text(json.dumps(entries))
  with pytest.raises(errors.InputError, match=message) as info:
    mpii_annotations.read_json(path)
  assert str(info.value).startswith(f'{path}: ') and '\n' not in str(info.value)


def test_zero_byte_image_is_skipped_by_a_default_build(shared_data, tmp_path, caplog):
  root = tmp_path / 'm'
  annotations = mpii_release.copy_json_release(shared_data, root)
  empty = root / 'images' / annotations[1]['image']
  empty.write_bytes(b'')
  with caplog.at_level(logging.WARNING):
    builder = _build(root, tmp_path / 'skip', crop_size=32)
  assert builder.info.metadata['skipped_files'] == [str(empty)]
  assert f'skipping {empty} (strict=False): empty file (0 bytes)' in caplog.text
  assert len(_examples(builder, 'validation')) == len(annotations) - 1
  with pytest.raises(errors.InputError, match=f'{empty}: empty file'):
    _build(root, tmp_path / 'strict', crop_size=32, strict=True)
