"""Tests for visualization.figures and visualization.drawing: pixels where the geometry says."""

import json
import os

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np
from PIL import Image
import pytest

from deepskeleton_jax.geometry import skeleton
from deepskeleton_jax.visualization import drawing
from deepskeleton_jax.visualization import figures

_STANDING = {
    'thorax': (0, 0, 0), 'upper_neck': (0, -60, 0), 'head_top': (0, -260, 20),
    'pelvis': (0, 500, 0), 'r_hip': (-120, 500, 0), 'l_hip': (120, 500, 0),
    'r_knee': (-130, 930, -30), 'l_knee': (130, 930, -30),
    'r_ankle': (-130, 1350, 20), 'l_ankle': (130, 1350, 20),
    'r_shoulder': (-180, 20, 0), 'l_shoulder': (180, 20, 0),
    'r_elbow': (-460, 20, 0), 'l_elbow': (460, 20, 0),
    'r_wrist': (-720, 20, -50), 'l_wrist': (720, 20, -50)}


def _t_pose(depth=4000.0):
  """A person facing the camera in a T-pose, mm, camera frame (y down)."""
  pose = np.array([_STANDING[n] for n in skeleton.JOINT_NAMES], np.float64)
  return pose + [0.0, -200.0, depth]


def _render(fig):
  canvas = FigureCanvasAgg(fig)
  canvas.draw()
  return np.asarray(canvas.buffer_rgba())[..., :3].astype(int)


def _pixels_of(rgb, color, tol=3):
  """(rows, cols) of pixels within `tol` of `color` (floats in [0, 1])."""
  target = np.round(np.asarray(color) * 255)
  return np.nonzero(np.all(np.abs(rgb - target) <= tol, axis=-1))


def _png_size(path):
  assert os.path.getsize(path) > 0
  with Image.open(path) as im:
    im.load()
    return im.size


@pytest.mark.parametrize('bone,outline', [(0, False), (0, True), (13, False)])
def test_draw_skeleton_2d_horizontal_bone_pixels(bone, outline):
  fig = Figure(figsize=(2, 2), dpi=100, facecolor='black')
  ax = fig.add_axes((0, 0, 1, 1))
  ax.set_axis_off()
  rng = np.random.default_rng(bone)
  joints = rng.uniform(0, 100, (16, 2))
  a, b = skeleton.BONES[bone]
  joints[a], joints[b] = (20, 30), (80, 30)
  visible = np.zeros(16, bool)
  visible[[a, b]] = True
  lines = drawing.draw_skeleton_2d(ax, joints, visible, linewidth=4.0,
                                     outline=outline)
  assert len(lines) == 1
  ax.set_xlim(0, 100)
  ax.set_ylim(100, 0)
  rgb = _render(fig)
  height = rgb.shape[0]
  # Display coordinates have their origin at the bottom left.
  (x0, y), (x1, _) = ax.transData.transform([(25, 30), (75, 30)])
  row = int(height - y)
  cols = np.arange(int(x0), int(x1))
  expected = np.round(skeleton.BONE_COLORS[bone] * 255)
  np.testing.assert_allclose(rgb[row, cols], np.broadcast_to(
      expected, (len(cols), 3)), atol=2)
  # Well above and below the bone, and left of its start: background.
  assert rgb[row - 12, cols].max() == 0
  assert rgb[row + 12, cols].max() == 0
  left = int(ax.transData.transform((10, 30))[0])
  assert rgb[row, left].max() == 0
  if not outline:
    # The random other bones were not drawn: every lit pixel is a shade of
    # this bone's colour (antialiasing only scales it).
    lit = rgb[rgb.max(axis=-1) > 0]
    zero = skeleton.BONE_COLORS[bone] == 0
    assert lit[:, zero].max() == 0


def test_draw_skeleton_2d_skips_nonfinite_and_single_color():
  fig = Figure()
  ax = fig.add_subplot()
  joints = _t_pose()[:, :2]
  joints[9] = np.nan  # head_top: the head bone (8, 9) goes.
  lines = drawing.draw_skeleton_2d(ax, joints, color='red')
  assert len(lines) == 14
  assert all(line.get_color() == 'red' for line in lines)


def test_camera_to_plot_is_a_rotation():
  basis = drawing.camera_to_plot(np.eye(3))
  np.testing.assert_allclose(basis @ basis.T, np.eye(3))
  assert np.linalg.det(basis) == pytest.approx(1.0)
  # Camera "down" (+y) is plot "down" (-z); depth (+z) is plot +y.
  np.testing.assert_allclose(basis[1], [0, 0, -1])
  np.testing.assert_allclose(basis[2], [0, 1, 0])


def test_draw_skeleton_3d_line_data_upright():
  fig = Figure()
  ax = fig.add_subplot(projection='3d')
  pose = _t_pose()
  lines = drawing.draw_skeleton_3d(ax, pose)
  assert len(lines) == 15
  head = np.asarray(lines[8].get_data_3d())  # bone (8, 9): neck -> head top
  np.testing.assert_allclose(head[:, 1], [pose[9, 0], pose[9, 2], -pose[9, 1]])
  shin = np.asarray(lines[0].get_data_3d())  # bone (0, 1): r_ankle -> knee
  assert head[2].max() > shin[2].max() + 1000
  # Equal aspect: one cube of limits.
  spans = [np.diff(lim)[0] for lim in
           (ax.get_xlim(), ax.get_ylim(), ax.get_zlim())]
  np.testing.assert_allclose(spans, spans[0])


@pytest.mark.parametrize('view', [(10, -60), (0, -90), (30, 20), (15, 150)])
def test_draw_skeleton_3d_head_above_feet_in_image(view):
  fig = Figure(figsize=(3, 3), dpi=100)
  ax = fig.add_subplot(projection='3d')
  drawing.draw_skeleton_3d(ax, _t_pose(), view=view, linewidth=3.0)
  rgb = _render(fig)
  head_rows, _ = _pixels_of(rgb, skeleton.BONE_COLORS[8])
  r_shin_rows, _ = _pixels_of(rgb, skeleton.BONE_COLORS[0])
  l_shin_rows, _ = _pixels_of(rgb, skeleton.BONE_COLORS[5])
  assert head_rows.size and r_shin_rows.size and l_shin_rows.size
  assert head_rows.mean() < r_shin_rows.mean() - 50  # image rows grow down
  assert head_rows.mean() < l_shin_rows.mean() - 50


def test_draw_skeleton_3d_camera_view_matches_projection():
  # Seen from the camera (elev 0, azim -90) left/right match the 2D image.
  pose = _t_pose()
  projected_x = pose[:, 0] / pose[:, 2]
  assert projected_x[10] < projected_x[15]  # r_wrist left of l_wrist
  fig = Figure(figsize=(3, 3), dpi=100)
  ax = fig.add_subplot(projection='3d')
  drawing.draw_skeleton_3d(ax, pose, view=(0, -90), linewidth=3.0)
  rgb = _render(fig)
  _, r_cols = _pixels_of(rgb, skeleton.BONE_COLORS[9])   # r_forearm
  _, l_cols = _pixels_of(rgb, skeleton.BONE_COLORS[14])  # l_forearm
  assert r_cols.size and l_cols.size
  assert r_cols.mean() < l_cols.mean() - 50


def _hypotheses(n=3, seed=0):
  rng = np.random.default_rng(seed)
  pose = _t_pose() - _t_pose()[skeleton.ROOT]
  return pose[None] + rng.normal(0, 40, (n, 16, 3))


def _maps(size=16):
  rng = np.random.default_rng(1)
  return rng.uniform(0, 1, (size, size, 3)), rng.uniform(0, 1, (size, size, 3))


def _image(size=64):
  return np.random.default_rng(2).integers(0, 256, (size, size, 3), np.uint8)


def _assert_no_temp_files(folder):
  assert [f for f in os.listdir(folder) if f.startswith('.tmp')] == []


def test_skeleton_maps_figure(tmp_path):
  fg, bg = _maps()
  path = figures.skeleton_maps_figure(_image(), fg, bg,
                                        str(tmp_path / 'maps.png'), title='t')
  assert _png_size(path) == (900, 330)
  path = figures.skeleton_maps_figure(None, fg, bg,
                                        str(tmp_path / 'sub' / 'maps2.png'))
  assert _png_size(path) == (600, 300)
  _assert_no_temp_files(tmp_path)
  _assert_no_temp_files(tmp_path / 'sub')


def test_prediction_figure(tmp_path):
  fg, bg = _maps()
  hyps = _hypotheses()
  path = figures.prediction_figure(
      str(tmp_path / 'pred.png'), _image(), np.full((16, 2), 32.0), fg, bg,
      hyps, 1, gt_3d=_t_pose(), title='x')
  assert _png_size(path) == (1300, 360)
  _assert_no_temp_files(tmp_path)


def test_prediction_figure_contents():
  fg, bg = _maps()
  hyps = _hypotheses(4) + [0, 0, 3000]  # not root-relative: shown so
  image = _image(48)
  fig = figures.prediction_figure(None, image, np.full((16, 2), 20.0), fg,
                                    bg, hyps, 2)
  ax2d, _, _, ax3d = fig.axes
  # Continuous pixel convention: pixel (i, j) covers [j, j+1) x [i, i+1).
  assert tuple(ax2d.images[0].get_extent()) == (0, 48, 48, 0)
  assert len(ax3d.lines) == 4 * 15
  chosen = [l for l in ax3d.lines if l.get_alpha() == 1.0]
  assert len(chosen) == 15
  assert all(l.get_zorder() > o.get_zorder() for l in chosen
             for o in ax3d.lines if o not in chosen)
  rel = hyps[2] - hyps[2, skeleton.ROOT]
  a, b = skeleton.BONES[0]
  np.testing.assert_allclose(np.asarray(chosen[0].get_data_3d()).T,
                             drawing.camera_to_plot(rel[[a, b]]))


def test_hypotheses_figure(tmp_path):
  hyps = _hypotheses(3)
  proj = np.random.default_rng(3).uniform(0, 64, (3, 16, 2))
  path = figures.hypotheses_figure(str(tmp_path / 'h.png'), _image(), proj,
                                     hyps, 0, gt_3d=_t_pose())
  assert _png_size(path) == (780, 555)
  _assert_no_temp_files(tmp_path)


def test_training_curves_figure(tmp_path):
  metrics = tmp_path / 'metrics.jsonl'
  rows = [{'step': s, 'train/loss': 1.0 / (s + 1), 'lr': 1e-3, 'note': 'x',
           'done': False} for s in (20, 0, 10)]
  rows.append({'step': 10, 'eval/mpjpe': 80.0})
  metrics.write_text(''.join(json.dumps(r) + '\n' for r in rows)
                     + '{"step": 30, "train/lo')  # torn last line
  path = figures.training_curves_figure(str(metrics),
                                          str(tmp_path / 'curves.png'))
  assert _png_size(path) == (1200, 280)
  _assert_no_temp_files(tmp_path)
  fig = figures.training_curves_figure(str(metrics), None)
  by_title = {ax.get_title(): ax for ax in fig.axes}
  assert set(by_title) == {'train/loss', 'lr', 'eval/mpjpe'}
  assert by_title['train/loss'].get_yscale() == 'log'
  assert by_title['lr'].get_yscale() == 'linear'
  x, y = by_title['train/loss'].lines[0].get_data()
  np.testing.assert_allclose(x, [0, 10, 20])
  np.testing.assert_allclose(y, [1, 1 / 11, 1 / 21])


def test_training_curves_figure_bad_input(tmp_path):
  with pytest.raises(ValueError, match='does not exist'):
    figures.training_curves_figure(str(tmp_path / 'none.jsonl'), None)
  bad = tmp_path / 'bad.jsonl'
  bad.write_text('{"step": 0, "loss": 1}\nnot json\n{"step": 1, "loss": 1}\n')
  with pytest.raises(ValueError, match=r'bad.jsonl:2'):
    figures.training_curves_figure(str(bad), None)
  empty = tmp_path / 'empty.jsonl'
  empty.write_text('{"step": 0, "name": "a"}\n')
  with pytest.raises(ValueError, match='no numeric metrics'):
    figures.training_curves_figure(str(empty), None)


def test_failed_write_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
  fg, bg = _maps()
  path = str(tmp_path / 'maps.png')
  figures.skeleton_maps_figure(None, fg, bg, path)
  before = open(path, 'rb').read()

  def broken_print_png(self, f, **unused_kwargs):
    del self
    f.write(b'partial')
    raise OSError('disk full')

  monkeypatch.setattr(figures.FigureCanvasAgg, 'print_png', broken_print_png)
  with pytest.raises(OSError, match='disk full'):
    figures.skeleton_maps_figure(None, fg, bg, path)
  assert open(path, 'rb').read() == before
  assert os.listdir(tmp_path) == ['maps.png']


def test_bad_shapes_raise():
  fg, bg = _maps()
  hyps = _hypotheses(2)
  with pytest.raises(ValueError, match='joints_2d'):
    drawing.draw_skeleton_2d(Figure().add_subplot(), np.zeros((15, 2)))
  with pytest.raises(ValueError, match='hypotheses'):
    figures.prediction_figure(None, _image(), np.zeros((16, 2)), fg, bg,
                                hyps[:, :, :2], 0)
  with pytest.raises(ValueError, match='chosen_index'):
    figures.prediction_figure(None, _image(), np.zeros((16, 2)), fg, bg,
                                hyps, 2)
  with pytest.raises(ValueError, match='projections'):
    figures.hypotheses_figure(None, _image(), np.zeros((3, 16, 2)), hyps, 0)
  with pytest.raises(ValueError, match='fg'):
    figures.skeleton_maps_figure(None, fg[..., :2], bg, None)
