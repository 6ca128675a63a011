"""Fuzz test of the input readers: a damaged file gives a result or one line, nothing else.

`READERS` is a table of `Reader` rows, one per input reader:
  read(path) -> result   reads one file the way the project does;
  make(folder) -> path   writes a valid sample;
  check(result)          asserts the result's contract (shapes, dtypes);
  wrong(folder) -> [path]  well-formed files of the wrong shape (must be refused).
The valid sample must read and pass `check`. Then `CASES` seeded mutations of
it (truncations, byte flips, a deleted or a repeated chunk) must each either
read and pass `check` or raise an `errors.UserError` whose message is one
line; any other exception, a case over `TIMEOUT_S` (a hang) or a result that
fails `check` (a silently wrong shape) fails the test, naming the seed. The
wrong-shape files must raise an `errors.UserError`. To point a row at another
reader (e.g. after a merge), edit its row.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
from typing import Any, Callable

import cdflib.cdfwrite
import cv2
import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.io

import mpii_release  # tests/mpii_release.py

from deepskeleton_jax import errors
from deepskeleton_jax.data import image_ops
from deepskeleton_jax.data import registry
from deepskeleton_jax.evaluation import detections
from deepskeleton_jax.inference import people_io
from deepskeleton_jax.inference import video_io

REPO = pathlib.Path(__file__).resolve().parents[1]
CASES = 300
TIMEOUT_S = 10.0
K = 16

human36m = registry.load_module('human36m')
fake_release = registry.load_module('human36m', 'fake_release')
bvh_mocap = registry.load_module('bvh_mocap')
mpii_annotations = registry.load_module('mpii', 'mpii_annotations')


@dataclasses.dataclass(frozen=True)
class Reader:
  name: str
  read: Callable[[pathlib.Path], Any]
  make: Callable[[pathlib.Path], pathlib.Path]
  check: Callable[[Any], None]
  wrong: Callable[[pathlib.Path], list[pathlib.Path]] = lambda folder: []
  # The one-line refusals the reader may raise (examples/ cannot import errors).
  refusals: tuple[type[Exception], ...] = (errors.UserError,)
  isolated: bool = False  # fuzz in a child process: the reader may crash it


# ---------------------------------------------------------------------------
# Images and videos.


def _make_image(suffix):
  def make(folder):
    rng = np.random.default_rng(0)
    path = folder / f'sample{suffix}'
    cv2.imwrite(str(path), rng.integers(0, 255, (24, 32, 3), np.uint8))
    return path
  return make


def _check_image(image):
  assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
  assert image.shape[0] >= 1 and image.shape[1] >= 1


def _make_video(folder):
  path = folder / 'sample.mp4'
  writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), 25, (32, 24))
  rng = np.random.default_rng(0)
  for _ in range(6):
    writer.write(rng.integers(0, 255, (24, 32, 3), np.uint8))
  writer.release()
  return path


def _read_video(path):
  source = video_io.FrameSource(str(path), 25.0)
  return source, list(source.frames())


def _check_video(result):
  source, frames = result
  assert len(frames) == source.num_frames >= 1
  for frame in frames:
    _check_image(frame)
    assert frame.shape[:2] == (source.height, source.width)


# ---------------------------------------------------------------------------
# Human3.6M CDF.


def _write_cdf(path, data, name='Pose', kind=cdflib.cdfwrite.CDF.CDF_FLOAT):
  cdf = cdflib.cdfwrite.CDF(str(path), cdf_spec={}, delete=True)
  cdf.write_var({'Variable': name, 'Data_Type': kind, 'Num_Elements': 1, 'Rec_Vary': True,
                 'Dim_Sizes': list(np.shape(data)[1:])}, var_data=data)
  cdf.close()
  return path


def _make_cdf(folder):
  path = folder / 'Walking.cdf'
  fake_release.write_cdf(path, fake_release.world_poses(5, seed=0))
  return path


def _check_poses(poses):
  assert poses.ndim == 3 and poses.shape[1:] == (32, 3) and poses.shape[0] >= 1
  assert poses.dtype == np.float64


def _wrong_cdfs(folder):
  values = np.arange(5 * 96, dtype=np.float32)
  return [
      _write_cdf(folder / '2d.cdf', np.zeros((1, 12, 64), np.float32)),  # 8 x 96 values
      _write_cdf(folder / 'split.cdf', values.reshape(1, 5, 32, 3)),
      _write_cdf(folder / 'two_records.cdf', np.zeros((2, 5, 96), np.float32)),
      _write_cdf(folder / 'wide.cdf', np.zeros((1, 5, 97), np.float32)),
      _write_cdf(folder / 'renamed.cdf', values.reshape(1, 5, 96), name='Positions'),
  ]


# ---------------------------------------------------------------------------
# BVH.


# The joints of bvh.CMU_TO_SKELETON, as (name, parent, offset).
_BVH_JOINTS = [
    ('LeftHip', 'Hips', (1, -1, 0)), ('LeftKnee', 'LeftHip', (0, -4, 0)),
    ('LeftAnkle', 'LeftKnee', (0, -4, 0)), ('RightHip', 'Hips', (-1, -1, 0)),
    ('RightKnee', 'RightHip', (0, -4, 0)), ('RightAnkle', 'RightKnee', (0, -4, 0)),
    ('Spine', 'Hips', (0, 3, 0)), ('LeftShoulder', 'Spine', (1.5, 1, 0)),
    ('LeftElbow', 'LeftShoulder', (2, 0, 0)), ('LeftWrist', 'LeftElbow', (2, 0, 0)),
    ('RightShoulder', 'Spine', (-1.5, 1, 0)), ('RightElbow', 'RightShoulder', (-2, 0, 0)),
    ('RightWrist', 'RightElbow', (-2, 0, 0)), ('Head', 'Spine', (0, 2, 0)),
]


def _bvh_text(joints=_BVH_JOINTS, num_frames=4, drop_value=False):
  def block(name, offset, depth):
    pad = '  ' * depth
    kids = [block(n, o, depth + 1) for n, p, o in joints if p == name]
    if name == 'Head':
      kids.append(f'{pad}  End Site\n{pad}  {{\n{pad}    OFFSET 0 1 0\n{pad}  }}\n')
    return (f'{pad}JOINT {name}\n{pad}{{\n{pad}  OFFSET {" ".join(map(str, offset))}\n'
            f'{pad}  CHANNELS 3 Zrotation Xrotation Yrotation\n' + ''.join(kids) + f'{pad}}}\n')
  root = ''.join(block(n, o, 1) for n, p, o in joints if p == 'Hips')
  channels = 6 + 3 * len(joints) - drop_value
  rng = np.random.default_rng(0)
  rows = '\n'.join(' '.join(f'{v:.2f}' for v in rng.uniform(-20, 20, channels))
                   for _ in range(num_frames))
  return (f'HIERARCHY\nROOT Hips\n{{\n  OFFSET 0 0 0\n  CHANNELS 6 Xposition Yposition '
          f'Zposition Zrotation Yrotation Xrotation\n{root}}}\nMOTION\nFrames: {num_frames}\n'
          f'Frame Time: 0.0083333\n{rows}\n')


def _make_bvh(folder):
  path = folder / '131_01.bvh'
  path.write_text(_bvh_text())
  return path


def _read_bvh(path):
  return bvh_mocap.read_joints(bvh_mocap.BvhMocapConfig(name='fuzz', frame_every=1), path)


def _check_bvh(result):
  frames, world = result
  assert frames.ndim == 1 and world.shape == (len(frames), K, 3)


def _wrong_bvhs(folder):
  texts = {
      'short_rows.bvh': _bvh_text(drop_value=True),  # a value missing on every frame line
      'no_head.bvh': _bvh_text(joints=[j for j in _BVH_JOINTS if j[0] != 'Head']),
      'fewer_frames.bvh': _bvh_text().replace('Frames: 4', 'Frames: 5'),
      'offset_2.bvh': _bvh_text().replace('OFFSET 2 0 0', 'OFFSET 2 0', 1),
      'channels_inf.bvh': _bvh_text().replace('CHANNELS 3', 'CHANNELS inf', 1),
      'channels_7.bvh': _bvh_text().replace('CHANNELS 3', 'CHANNELS 7', 1),
      'no_frames.bvh': _bvh_text().replace('Frames: 4', 'Frames: 0'),
      'minus_frames.bvh': _bvh_text().replace('Frames: 4', 'Frames: -2'),
  }
  for name, text in texts.items():
    (folder / name).write_text(text)
  return [folder / n for n in texts]


# ---------------------------------------------------------------------------
# MPII annotations.


def _mpii_entries():
  return [dict(image=f'{i:09d}.jpg', center=[50.0 + i, 60.0], scale=1.5,
               joints=[[10.0 + j, 20.0 + i] for j in range(K)], joints_vis=[1] * K)
          for i in range(3)]


def _make_mpii_json(folder):
  path = folder / 'train.json'
  path.write_text(json.dumps(_mpii_entries()))
  return path


def _check_persons(persons):
  assert isinstance(persons, list)
  for p in persons:
    assert p.joints.shape == (K, 2) and p.visible.shape == (K,) and p.visible.dtype == bool
    assert p.center.shape == (2,) and isinstance(p.scale, float) and isinstance(p.image, str)


def _wrong_mpii_jsons(folder):
  def entry(**change):
    return [dict(_mpii_entries()[0], **change)]
  variants = {
      'transposed.json': entry(joints=np.zeros((2, K)).tolist()),
      'xyz.json': entry(joints=np.zeros((K, 3)).tolist()),
      'fifteen.json': entry(joints=np.zeros((K - 1, 2)).tolist()),
      'vis_2d.json': entry(joints_vis=np.ones((K, 2)).tolist()),
      'center_3.json': entry(center=[1, 2, 3]),
      'scale_list.json': entry(scale=[1.5]),
      'scale_text.json': entry(scale='1.5'),
      'dict.json': {'annotations': _mpii_entries()},
      'strings.json': ['000000001.jpg'],
  }
  for name, value in variants.items():
    (folder / name).write_text(json.dumps(value))
  return [folder / n for n in variants]


def _release_mat(path, annolist, img_train, compressed=False):
  scipy.io.savemat(path, {'RELEASE': {'annolist': annolist, 'img_train': img_train}},
                   do_compression=compressed)
  return path


def _annolist(rects):
  return mpii_release.struct_array([
      {'image': {'name': f'{i}.jpg'}, 'annorect': mpii_release.struct_array([r])}
      for i, r in enumerate(rects)])


_GOOD_RECT = mpii_release.rect({0: (30.0, 80.0), 9: (40.0, 10.0), 12: (50.0, 30.0)},
                               (30.0, 5.0, 50.0, 20.0), 0.4, (40.0, 45.0))
_VALID = {'index': np.array([1]), 'person': np.array([0])}


def _make_mat(compressed):
  def make(folder):  # MATLAB writes compressed files by default, savemat does not
    return _release_mat(folder / 'release.mat', _annolist([_GOOD_RECT] * 3),
                        np.array([1, 1, 1]), compressed)
  return make


def _read_mat(path):
  annolist, img_train = mpii_annotations.read_mat(path)
  return mpii_annotations.mat_persons(annolist, img_train, _VALID, path, path.parent / 'v.h5')


def _check_mat_persons(result):
  train, validation = result
  _check_persons(train + validation)


def _wrong_mats(folder):
  bad_id = mpii_release.rect({16: (1.0, 1.0)}, (0, 0, 1, 1), 0.4, (4.0, 4.0))
  text_x = mpii_release.rect({3: ('left', 1.0)}, (0, 0, 1, 1), 0.4, (4.0, 4.0))
  return [
      _release_mat(folder / 'bad_id.mat', _annolist([_GOOD_RECT, bad_id]), np.array([1, 1])),
      _release_mat(folder / 'text_x.mat', _annolist([_GOOD_RECT, text_x]), np.array([1, 1])),
      _release_mat(folder / 'no_train.mat', _annolist([_GOOD_RECT] * 2), np.array([1])),
      _release_mat(folder / 'no_rects.mat', mpii_release.struct_array(
          [{'image': {'name': 'a.jpg'}}, {'image': {'name': 'b.jpg'}}]), np.array([1, 1])),
  ]


# ---------------------------------------------------------------------------
# Detection files and boxes files.


def _make_detections(suffix):
  def make(folder):
    rng = np.random.default_rng(0)
    preds = rng.uniform(0, 100, (3, K, 2)).astype(np.float32)
    scores = rng.uniform(0, 1, (3, K)).astype(np.float32)
    path = folder / f'preds{suffix}'
    if suffix == '.json':
      path.write_text(json.dumps({'preds': preds.tolist(), 'scores': scores.tolist()}))
    elif suffix == '.npz':
      np.savez(path, preds=preds, scores=scores)
    elif suffix == '.h5':
      with h5py.File(path, 'w') as f:
        f['preds'], f['scores'] = preds, scores
    else:
      scipy.io.savemat(path, {'preds': preds, 'scores': scores})
    return path
  return make


def _read_detections(path):
  return detections.load_detections(path, return_scores=True)


def _check_detections(result):
  joints, scores = result
  assert joints.ndim == 3 and joints.shape[1:] == (K, 2) and joints.dtype == np.float32
  assert scores is None or scores.shape == joints.shape[:2]


def _wrong_detections(folder):
  arrays = {'xyz.npz': {'preds': np.zeros((3, K, 3))},
            'fifteen.npz': {'preds': np.zeros((3, K - 1, 2))},
            'flat.npz': {'preds': np.zeros((3, 2 * K))},
            'scores.npz': {'preds': np.zeros((3, K, 2)), 'scores': np.zeros((3, K - 1))}}
  for name, fields in arrays.items():
    np.savez(folder / name, **fields)
  (folder / 'ragged.json').write_text(json.dumps([[[1, 2]] * K, [[1, 2]] * (K - 1)]))
  return [folder / n for n in arrays] + [folder / 'ragged.json']


_FRAMES, _HEIGHT, _WIDTH = 5, 48, 64


def _make_boxes(suffix):
  """A boxes file with ids (`frame id x0 y0 x1 y1`): two people, one missing in frame 1."""
  def make(folder):
    rows = [(f, i, [4 + i * 20, 4, 24 + i * 20, 40]) for f in range(_FRAMES) for i in (0, 1)
            if (f, i) != (1, 1)]
    path = folder / f'boxes{suffix}'
    if suffix == '.json':
      path.write_text(json.dumps([{'frame': f, 'id': i, 'box': b} for f, i, b in rows]))
    else:
      path.write_text('\n'.join(' '.join(map(str, [f, i, *b])) for f, i, b in rows) + '\n')
    return path
  return make


def _read_boxes(path):
  return people_io.read_boxes_file(str(path), people_io.Index([(_HEIGHT, _WIDTH)] * _FRAMES))


def _check_boxes(frames):
  assert len(frames) == _FRAMES
  for people in frames:
    for person in people:
      assert person.box.shape == (4,) and np.all(np.isfinite(person.box))


def _make_keypoints(folder):
  rng = np.random.default_rng(0)
  entries = [{'frame': f, 'track_id': 3, 'keypoints': np.concatenate(
      [rng.uniform(10, 40, (17, 2)), np.full((17, 1), 0.9)], 1).round(2).ravel().tolist()}
             for f in range(_FRAMES)]
  path = folder / 'keypoints.json'
  path.write_text(json.dumps(entries))
  return path


def _read_keypoints(path):
  return people_io.read_keypoints_file(str(path), people_io.Index([(_HEIGHT, _WIDTH)] * _FRAMES),
                                       0.15, 30)


def _check_keypoints(frames):
  assert len(frames) == _FRAMES
  for people in frames:
    for person in people:
      assert person.joints_2d.shape == (16, 2) and person.scores.shape == (16,)


def _wrong_boxes(folder):
  texts = {'three.csv': '1 2 3\n' * _FRAMES, 'five.csv': '0 1 2 3 4\n' * _FRAMES + '0 1\n',
           'nested.json': json.dumps([[[1, 2, 3, 4]]] * _FRAMES),
           'late.csv': f'{_FRAMES} 0 1 2 30 40\n'}
  for name, text in texts.items():
    (folder / name).write_text(text)
  return [folder / n for n in texts]


def _make_model(folder):
  """A tiny `jax.export` artifact (uint8 [b, 3] in) and the model.json fields the loader reads."""
  weights = np.arange(12, dtype=np.float32).reshape(3, 4)

  def fn(x):
    x = x.astype(jnp.float32)
    return (x @ weights).sum(-1), jnp.tanh(x)

  batch, = jax.export.symbolic_shape('b')
  exported = jax.export.export(jax.jit(fn), platforms=('cpu',))(
      jax.ShapeDtypeStruct((batch, 3), jnp.uint8))
  data = exported.serialize()
  (folder / 'model.jax').write_bytes(data)
  (folder / 'model.json').write_text(json.dumps({
      'outputs': [{'name': 'sum'}, {'name': 'tanh'}],
      'artifact': {'file': 'model.jax', 'bytes': len(data),
                   'sha256': hashlib.sha256(data).hexdigest()}}))
  return folder / 'model.jax'


def _read_model(path):
  """The README's loader (examples/serve_exported.py), then one call."""
  spec = importlib.util.spec_from_file_location('serve_exported',
                                                REPO / 'examples' / 'serve_exported.py')
  serve_exported = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(serve_exported)
  fn, _ = serve_exported.load(path.parent)
  return fn(np.ones((2, 3), np.uint8))


def _check_model(outputs):
  assert outputs['sum'].shape == (2,) and outputs['tanh'].shape == (2, 3)


READERS = [
    Reader('image_jpeg', image_ops.read_image, _make_image('.jpg'), _check_image),
    Reader('image_png', image_ops.read_image, _make_image('.png'), _check_image),
    Reader('video', _read_video, _make_video, _check_video),
    Reader('human36m_cdf', human36m.read_poses, _make_cdf, _check_poses, _wrong_cdfs),
    Reader('bvh', _read_bvh, _make_bvh, _check_bvh, _wrong_bvhs),
    Reader('mpii_json', mpii_annotations.read_json, _make_mpii_json, _check_persons,
           _wrong_mpii_jsons),
    Reader('mpii_mat', _read_mat, _make_mat(False), _check_mat_persons, _wrong_mats),
    Reader('mpii_mat_compressed', _read_mat, _make_mat(True), _check_mat_persons),
    Reader('detections_json', _read_detections, _make_detections('.json'), _check_detections,
           _wrong_detections),
    Reader('detections_npz', _read_detections, _make_detections('.npz'), _check_detections),
    Reader('detections_h5', _read_detections, _make_detections('.h5'), _check_detections),
    Reader('detections_mat', _read_detections, _make_detections('.mat'), _check_detections),
    Reader('boxes_csv', _read_boxes, _make_boxes('.csv'), _check_boxes, _wrong_boxes),
    Reader('boxes_json', _read_boxes, _make_boxes('.json'), _check_boxes),
    Reader('keypoints_json', _read_keypoints, _make_keypoints, _check_keypoints),
    # examples/serve_exported.py imports nothing of this package: a ValueError.
    # A damaged artifact can abort the process (MLIR): fuzzed in a child process.
    Reader('model_jax', _read_model, _make_model, _check_model, refusals=(ValueError,),
           isolated=True),
]


def _params():
  return [pytest.param(r, id=r.name) for r in READERS]


# ---------------------------------------------------------------------------
# The fuzzer.


def mutate(data: bytes, rng: np.random.Generator, case: int) -> tuple[bytes, str]:
  """A damaged copy of `data` and what was done (case % 4 picks the kind)."""
  n = len(data)
  kind = case % 4
  if kind == 0:
    k = 0 if case == 0 else int(rng.integers(0, n))  # case 0: an empty file
    return data[:k], f'truncated to {k} of {n} bytes'
  if kind == 1:
    out = bytearray(data)
    where = rng.integers(0, n, int(rng.integers(1, 9)))
    for i in where:
      out[i] ^= int(rng.integers(1, 256))
    return bytes(out), f'bytes {sorted(where.tolist())} flipped'
  start = int(rng.integers(0, n))
  size = int(rng.integers(1, max(2, n // 8)))
  if kind == 2:
    return data[:start] + data[start + size:], f'bytes {start}:{start + size} deleted'
  return (data[:start] + data[start:start + size] + data[start:],
          f'bytes {start}:{start + size} repeated')


class _Hang(Exception):
  pass


def _on_alarm(signum, frame):
  del signum, frame
  raise _Hang()


def outcome(reader: Reader, path: pathlib.Path) -> str | None:
  """None if reading `path` gives a checked result or a one-line UserError, else why not."""
  previous = signal.signal(signal.SIGALRM, _on_alarm)
  signal.setitimer(signal.ITIMER_REAL, TIMEOUT_S)
  try:
    result = reader.read(path)
  except _Hang:
    return f'no answer within {TIMEOUT_S} s'
  except reader.refusals as e:
    return None if '\n' not in str(e) else f'a multi-line error: {str(e)[:300]!r}'
  except Exception as e:  # pylint: disable=broad-except
    return f'{type(e).__name__}: {str(e)[:300]}'
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)
  try:
    reader.check(result)
  except AssertionError as e:
    return f'a result that breaks the contract ({e})'
  return None


def _sample(reader: Reader, tmp_path: pathlib.Path) -> pathlib.Path:
  folder = tmp_path / 'sample'
  folder.mkdir()
  return reader.make(folder)


@pytest.mark.parametrize('reader', _params())
def test_valid_sample_reads_and_wrong_shapes_are_refused(reader, tmp_path):
  sample = _sample(reader, tmp_path)
  reader.check(reader.read(sample))
  for path in reader.wrong(tmp_path):
    with pytest.raises(reader.refusals) as info:
      reader.read(path)
    assert '\n' not in str(info.value), path.name
    assert str(path) in str(info.value), path.name


def campaign(reader: Reader, tmp_path: pathlib.Path, report: Callable[[str], None]) -> None:
  """Reads `CASES` damaged copies of the reader's sample; `report`s 'case N' before
  each and 'FAIL <why>' for each case that neither reads nor refuses in one line."""
  sample = _sample(reader, tmp_path)
  data = sample.read_bytes()
  for case in range(CASES):
    rng = np.random.default_rng([READERS.index(reader), case])
    mutated, what = mutate(data, rng, case)
    folder = tmp_path / f'case{case}'  # the sample's folder, its file damaged
    shutil.copytree(sample.parent, folder)
    path = folder / sample.name
    path.write_bytes(mutated)
    report(f'case {case} ({what})')
    problem = outcome(reader, path)
    if problem:
      report(f'FAIL case {case} ({what}): {problem}')
    shutil.rmtree(folder)


def _campaign_in_a_child(reader: Reader, tmp_path: pathlib.Path) -> list[str]:
  """`campaign` in a child process (this file as a script): a crash is a failure too."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [str(REPO), str(REPO / 'tests')] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
  child = subprocess.run([sys.executable, __file__, reader.name, str(tmp_path)], env=env,
                         capture_output=True, encoding='utf-8', errors='replace',
                         timeout=CASES * TIMEOUT_S)
  lines = child.stdout.splitlines()
  failures = [line.removeprefix('FAIL ') for line in lines if line.startswith('FAIL ')]
  if child.returncode:
    last = next((line for line in reversed(lines) if line.startswith('case ')), 'its start')
    failures.append(f'{last}: the process died (exit status {child.returncode}): '
                    f'{child.stderr.strip().splitlines()[-1:]}')
  return failures


@pytest.mark.parametrize('reader', _params())
def test_damaged_files_give_a_result_or_one_line(reader, tmp_path):
  if reader.isolated:
    failures = _campaign_in_a_child(reader, tmp_path)
  else:
    failures = []
    campaign(reader, tmp_path, lambda line: line.startswith('FAIL ') and failures.append(
        line.removeprefix('FAIL ')))
  assert not failures, f'{len(failures)} of {CASES} cases:\n' + '\n'.join(failures[:15])


if __name__ == '__main__':  # _campaign_in_a_child: READER_NAME TMP_DIR
  campaign(next(r for r in READERS if r.name == sys.argv[1]), pathlib.Path(sys.argv[2]),
           lambda line: print(line, flush=True))
