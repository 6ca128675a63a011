"""Figures: skeletons in 2D and 3D, skeleton maps, predictions, training curves.

Everything here takes NumPy arrays and uses matplotlib's object-oriented API
(`matplotlib.figure.Figure` rendered by the Agg canvas), so no display, no
pyplot global state and no backend switch are involved (importing this module
leaves a notebook's backend alone) and figures are freed when they go out of
scope. Each `*_figure` function saves a PNG atomically (a temporary file in the
target folder, then `os.replace`) and returns its path, or returns the
`Figure` itself when `path` is None.

Conventions (DESIGN.md): 2D joints are continuous pixels, pixel (row i, col j)
covering [j, j+1) x [i, i+1), so images are shown with extent (0, W, H, 0).
3D joints are millimetres in the camera frame (x right, y down, z forward);
3D axes plot (x, z, -y), a proper rotation that puts "up" on the plot's z axis
so people stand upright, and the camera's own view is elev=0, azim=-90.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Sequence

from matplotlib import patheffects
from matplotlib import patches
from matplotlib import transforms
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from mpl_toolkits.mplot3d import Axes3D
import numpy as np

from deepskeleton_jax import files
from deepskeleton_jax.geometry import skeleton

# Default novel viewpoint (elevation, azimuth) in degrees: 30 degrees around
# the vertical axis from the camera's own view (azim=-90), slightly above.
DEFAULT_VIEW: tuple[float, float] = (12.0, -60.0)

_PANEL_3D_COLOR = '#1c1c1c'      # dark 3D background: the spine bone is white.
_GRID_3D_COLOR = '#4a4a4a'
_GT_COLOR = '0.75'
_HIGHLIGHT_COLOR = '#2ca02c'
_DPI = 100


# ----------------------------------------------------------------- checks ---


def _check_array(name: str, x: Any, shape: Sequence[int | None]) -> np.ndarray:
  """Returns `x` as an array, raising ValueError unless it matches `shape`."""
  x = np.asarray(x)
  ok = x.ndim == len(shape) and all(
      s is None or s == d for s, d in zip(shape, x.shape))
  if not ok:
    want = ', '.join('n' if s is None else str(s) for s in shape)
    raise ValueError(f'{name} must have shape [{want}], got {x.shape}')
  return x


def _as_rgb(name: str, image: Any) -> np.ndarray:
  """Checks an [H, W, 3] uint8 image or float map and returns it displayable.

  Floats (e.g. skeleton maps) are clipped to [0, 1]; uint8 passes unchanged.
  """
  image = _check_array(name, image, (None, None, 3))
  if image.dtype == np.uint8:
    return image
  if not np.issubdtype(image.dtype, np.floating):
    raise ValueError(f'{name} must be uint8 or floating point, got {image.dtype}')
  return np.clip(np.nan_to_num(image), 0.0, 1.0)


def _check_chosen(chosen_index: int, num: int) -> int:
  chosen_index = int(chosen_index)
  if not 0 <= chosen_index < num:
    raise ValueError(
        f'chosen_index must be in [0, {num}), got {chosen_index}')
  return chosen_index


def _bone_mask(joints: np.ndarray, visible: np.ndarray | None) -> np.ndarray:
  """[15] bool: a bone is drawn when both ends are finite (and visible)."""
  ok = np.all(np.isfinite(joints), axis=-1)
  if visible is not None:
    visible = _check_array('visible', visible, (skeleton.NUM_JOINTS,))
    ok &= visible.astype(bool)
  bones = np.asarray(skeleton.BONES)
  return ok[bones[:, 0]] & ok[bones[:, 1]]


# ---------------------------------------------------------------- drawing ---


def draw_skeleton_2d(ax: Axes,
                     joints_2d: np.ndarray,
                     visible: np.ndarray | None = None,
                     color: Any = None,
                     linewidth: float = 2.5,
                     alpha: float = 1.0,
                     outline: bool = True) -> list[Line2D]:
  """Draws the 15 bones of a 2D pose on a matplotlib axes.

  Args:
    ax: a 2D axes; coordinates are data (pixel) coordinates of that axes.
    joints_2d: [16, 2] joint positions (x, y) in pixels.
    visible: optional [16] bool; a bone is drawn only when both ends are
      visible (and finite).
    color: one matplotlib colour for every bone, or None for `BONE_COLORS`.
    linewidth: line width in points.
    alpha: opacity.
    outline: draw a thin dark outline around each bone, so light bones stay
      visible on light images.

  Returns:
    The drawn lines, one per drawn bone, in bone order.
  """
  joints_2d = _check_array('joints_2d', joints_2d, (skeleton.NUM_JOINTS, 2))
  drawn = _bone_mask(joints_2d, visible)
  effects = ([patheffects.withStroke(linewidth=linewidth + 1.5,
                                     foreground='black', alpha=0.8 * alpha)]
             if outline else None)
  lines = []
  for b, (i, j) in enumerate(skeleton.BONES):
    if not drawn[b]:
      continue
    line, = ax.plot(joints_2d[[i, j], 0], joints_2d[[i, j], 1],
                    color=skeleton.BONE_COLORS[b] if color is None else color,
                    linewidth=linewidth, alpha=alpha,
                    solid_capstyle='round', path_effects=effects)
    lines.append(line)
  return lines


def camera_to_plot(joints_3d: np.ndarray) -> np.ndarray:
  """Maps camera-frame points (x right, y down, z fwd) to plot axes (z up).

  Args:
    joints_3d: [..., 3] camera-frame points.

  Returns:
    [..., 3] points (x, z, -y): plot x = right, plot y = depth, plot z = up.
  """
  joints_3d = np.asarray(joints_3d)
  return np.stack(
      [joints_3d[..., 0], joints_3d[..., 2], -joints_3d[..., 1]], axis=-1)


def set_equal_limits_3d(ax: Axes3D, joints_3d: np.ndarray,
                        margin: float = 0.03) -> None:
  """Gives a 3D axes one cube of limits that holds all the given poses.

  Args:
    ax: a 3D axes.
    joints_3d: [..., 3] camera-frame points (all the poses drawn on `ax`).
    margin: extra space around the poses, as a fraction of the cube's side.
  """
  pts = camera_to_plot(joints_3d).reshape(-1, 3)
  pts = pts[np.all(np.isfinite(pts), axis=-1)]
  if pts.size == 0:
    raise ValueError('joints_3d must contain at least one finite point')
  lo, hi = pts.min(axis=0), pts.max(axis=0)
  centre = (lo + hi) / 2
  half = max(float(np.max(hi - lo)) / 2 * (1 + 2 * margin), 1.0)
  ax.set_xlim(centre[0] - half, centre[0] + half)
  ax.set_ylim(centre[1] - half, centre[1] + half)
  ax.set_zlim(centre[2] - half, centre[2] + half)
  ax.set_box_aspect((1, 1, 1), zoom=1.2)


def draw_skeleton_3d(ax: Axes3D,
                     joints_3d: np.ndarray,
                     color: Any = None,
                     alpha: float = 1.0,
                     linewidth: float = 2.5,
                     view: tuple[float, float] | None = DEFAULT_VIEW,
                     set_limits: bool = True,
                     zorder: float = 2.0,
                     linestyle: str = '-') -> list[Line2D]:
  """Draws a 3D pose upright on a 3D axes.

  Args:
    ax: a 3D axes (`fig.add_subplot(projection='3d')`).
    joints_3d: [16, 3] joints in mm, camera frame (y down); plotted as
      (x, z, -y) so the person stands upright.
    color: one colour for every bone, or None for `BONE_COLORS`.
    alpha: opacity.
    linewidth: line width in points.
    view: (elevation, azimuth) in degrees to look from, or None to leave the
      axes' view as it is. (0, -90) is the camera's own view.
    set_limits: give the axes equal-aspect cube limits around this pose (turn
      off when several poses share an axes; see `set_equal_limits_3d`).
    zorder: drawing order; the axes' depth sorting is switched off so that
      a higher zorder is drawn on top (e.g. the chosen pose over the others).
    linestyle: matplotlib line style.

  Returns:
    The drawn lines, one per bone with finite ends, in bone order.
  """
  joints_3d = _check_array('joints_3d', joints_3d, (skeleton.NUM_JOINTS, 3))
  pts = camera_to_plot(joints_3d)
  drawn = _bone_mask(joints_3d, None)
  ax.computed_zorder = False
  lines = []
  for b, (i, j) in enumerate(skeleton.BONES):
    if not drawn[b]:
      continue
    line, = ax.plot(pts[[i, j], 0], pts[[i, j], 1], pts[[i, j], 2],
                    color=skeleton.BONE_COLORS[b] if color is None else color,
                    alpha=alpha, linewidth=linewidth, zorder=zorder,
                    linestyle=linestyle, solid_capstyle='round')
    lines.append(line)
  if view is not None:
    ax.view_init(elev=view[0], azim=view[1])
  if set_limits and drawn.any():
    set_equal_limits_3d(ax, joints_3d)
  return lines


# ---------------------------------------------------------------- helpers ---


def _save(fig: Figure, path: str | None) -> str | Figure:
  """Writes `fig` as PNG atomically and returns the path (or the figure)."""
  if path is None:
    return fig
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with files.atomic_path(path) as tmp:
    with open(tmp, 'wb') as f:
      FigureCanvasAgg(fig).print_png(f)
  return path


def _show_image(ax: Axes, image: np.ndarray, title: str | None,
                interpolation: str = 'antialiased') -> None:
  """Shows an image with the continuous-pixel extent, without ticks."""
  h, w = image.shape[:2]
  ax.imshow(image, extent=(0, w, h, 0), interpolation=interpolation)
  ax.set_xlim(0, w)
  ax.set_ylim(h, 0)
  ax.set_xticks([])
  ax.set_yticks([])
  if title:
    ax.set_title(title, fontsize=10)


def _style_3d(ax: Axes3D, title: str | None = None) -> None:
  """Dark panes, faint grid, no tick labels."""
  ax.set_facecolor(_PANEL_3D_COLOR)
  for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
    axis.set_pane_color(_PANEL_3D_COLOR)
    axis.pane.set_edgecolor(_GRID_3D_COLOR)
    axis.line.set_color(_GRID_3D_COLOR)
    axis.set_ticklabels([])
    axis._axinfo['grid']['color'] = _GRID_3D_COLOR  # pylint: disable=protected-access
    axis._axinfo['grid']['linewidth'] = 0.5  # pylint: disable=protected-access
    axis._axinfo['tick']['inward_factor'] = 0.0  # pylint: disable=protected-access
    axis._axinfo['tick']['outward_factor'] = 0.0  # pylint: disable=protected-access
  if title:
    ax.set_title(title, fontsize=10)


def _root_relative(joints_3d: np.ndarray) -> np.ndarray:
  return joints_3d - joints_3d[..., skeleton.ROOT:skeleton.ROOT + 1, :]


def _draw_pose_set_3d(ax: Axes3D, hypotheses: np.ndarray, chosen_index: int,
                      gt_3d: np.ndarray | None, show_others: bool,
                      view: tuple[float, float]) -> None:
  """Root-relative chosen pose on top, others faded behind, GT dashed grey."""
  hyps = _root_relative(hypotheses)
  everything = [hyps]
  if show_others:
    for k, hyp in enumerate(hyps):
      if k != chosen_index:
        draw_skeleton_3d(ax, hyp, alpha=0.25, linewidth=1.5, view=None,
                         set_limits=False, zorder=1)
  if gt_3d is not None:
    gt = _root_relative(gt_3d)
    everything.append(gt[None])
    draw_skeleton_3d(ax, gt, color=_GT_COLOR, linewidth=1.5, view=None,
                     set_limits=False, zorder=2, linestyle='--')
  draw_skeleton_3d(ax, hyps[chosen_index], linewidth=2.5, view=view,
                   set_limits=False, zorder=3)
  set_equal_limits_3d(ax, np.concatenate(everything, axis=0))


# ---------------------------------------------------------------- figures ---


def skeleton_maps_figure(image: np.ndarray | None,
                         fg: np.ndarray,
                         bg: np.ndarray,
                         path: str | None,
                         title: str | None = None) -> str | Figure:
  """Image, foreground and background skeleton maps side by side.

  Args:
    image: [S, S, 3] uint8 input crop, or None to show only the maps.
    fg: [h, w, 3] foreground skeleton map, float in [0, 1] or uint8.
    bg: [h, w, 3] background skeleton map, same.
    path: PNG to write, or None to return the figure.
    title: optional figure title.

  Returns:
    `path`, or the Figure when `path` is None.
  """
  panels = [] if image is None else [('input', _as_rgb('image', image))]
  panels += [('foreground map', _as_rgb('fg', fg)),
             ('background map', _as_rgb('bg', bg))]
  fig = Figure(figsize=(3.0 * len(panels), 3.3 if title else 3.0), dpi=_DPI,
               layout='constrained')
  for k, (name, img) in enumerate(panels):
    ax = fig.add_subplot(1, len(panels), k + 1)
    _show_image(ax, img, name, 'antialiased' if k == 0 and image is not None
                else 'nearest')
  if title:
    fig.suptitle(title, fontsize=11)
  return _save(fig, path)


def prediction_figure(path: str | None,
                      image: np.ndarray,
                      joints_2d: np.ndarray,
                      fg: np.ndarray,
                      bg: np.ndarray,
                      hypotheses: np.ndarray,
                      chosen_index: int,
                      gt_3d: np.ndarray | None = None,
                      title: str | None = None,
                      visible: np.ndarray | None = None,
                      view: tuple[float, float] = DEFAULT_VIEW) -> str | Figure:
  """The predict mode's figure: input + 2D, skeleton maps, chosen 3D pose.

  Args:
    path: PNG to write, or None to return the figure.
    image: [H, W, 3] uint8 input image.
    joints_2d: [16, 2] 2D pose drawn on the image, in its pixels (e.g. the
      detections, or the projection of the chosen hypothesis).
    fg: [h, w, 3] foreground skeleton map (float in [0, 1] or uint8).
    bg: [h, w, 3] background skeleton map.
    hypotheses: [n, 16, 3] 3D hypotheses in mm (camera frame orientation).
    chosen_index: index of the selected hypothesis.
    gt_3d: optional [16, 3] ground truth, drawn dashed grey.
    title: optional figure title.
    visible: optional [16] bool for the 2D pose.
    view: (elevation, azimuth) of the 3D panel.

  Returns:
    `path`, or the Figure when `path` is None.
  """
  image = _as_rgb('image', image)
  hypotheses = _check_array('hypotheses', hypotheses,
                            (None, skeleton.NUM_JOINTS, 3))
  chosen_index = _check_chosen(chosen_index, hypotheses.shape[0])
  if gt_3d is not None:
    gt_3d = _check_array('gt_3d', gt_3d, (skeleton.NUM_JOINTS, 3))
  fig = Figure(figsize=(13.0, 3.6 if title else 3.3), dpi=_DPI,
               layout='constrained')
  ax = fig.add_subplot(1, 4, 1)
  _show_image(ax, image, 'input + 2D pose')
  draw_skeleton_2d(ax, joints_2d, visible=visible)
  ax.set_xlim(0, image.shape[1])
  ax.set_ylim(image.shape[0], 0)
  _show_image(fig.add_subplot(1, 4, 2), _as_rgb('fg', fg), 'foreground map',
              'nearest')
  _show_image(fig.add_subplot(1, 4, 3), _as_rgb('bg', bg), 'background map',
              'nearest')
  ax3 = fig.add_subplot(1, 4, 4, projection='3d')
  n = hypotheses.shape[0]
  label = f'3D, hypothesis {chosen_index + 1}/{n}'
  notes = (['others faded'] if n > 1 else []) + (
      ['GT dashed'] if gt_3d is not None else [])
  if notes:
    label += f' ({", ".join(notes)})'
  _style_3d(ax3, label)
  _draw_pose_set_3d(ax3, hypotheses, chosen_index, gt_3d, show_others=True,
                    view=view)
  if title:
    fig.suptitle(title, fontsize=11)
  return _save(fig, path)


def hypotheses_figure(path: str | None,
                      image: np.ndarray,
                      projections: np.ndarray,
                      hypotheses: np.ndarray,
                      chosen_index: int,
                      gt_3d: np.ndarray | None = None,
                      title: str | None = None,
                      view: tuple[float, float] = DEFAULT_VIEW) -> str | Figure:
  """All hypotheses (paper Fig. 4): 2D projections on top, 3D poses below.

  Args:
    path: PNG to write, or None to return the figure.
    image: [H, W, 3] uint8 image the projections are in.
    projections: [n, 16, 2] each hypothesis projected to the image, pixels.
    hypotheses: [n, 16, 3] 3D hypotheses in mm (camera frame orientation).
    chosen_index: the selected hypothesis, framed in green.
    gt_3d: optional [16, 3] ground truth, drawn dashed grey in every 3D panel.
    title: optional figure title.
    view: (elevation, azimuth) of the 3D panels.

  Returns:
    `path`, or the Figure when `path` is None.
  """
  image = _as_rgb('image', image)
  hypotheses = _check_array('hypotheses', hypotheses,
                            (None, skeleton.NUM_JOINTS, 3))
  n = hypotheses.shape[0]
  projections = _check_array('projections', projections,
                             (n, skeleton.NUM_JOINTS, 2))
  chosen_index = _check_chosen(chosen_index, n)
  if gt_3d is not None:
    gt_3d = _check_array('gt_3d', gt_3d, (skeleton.NUM_JOINTS, 3))
  # Every 3D panel shares one cube so that the poses compare at one scale.
  everything = _root_relative(hypotheses)
  if gt_3d is not None:
    everything = np.concatenate([everything, _root_relative(gt_3d)[None]])
  col_w = 2.6
  height = 2 * col_w + (0.75 if title else 0.35)
  fig = Figure(figsize=(col_w * n, height), dpi=_DPI)
  grid = fig.add_gridspec(2, n, left=0.02, right=0.98, bottom=0.02,
                          top=1 - (0.7 if title else 0.3) / height,
                          wspace=0.08, hspace=0.1)
  for k in range(n):
    chosen = k == chosen_index
    ax = fig.add_subplot(grid[0, k])
    _show_image(ax, image, None)
    draw_skeleton_2d(ax, projections[k], linewidth=2.0)
    ax.set_xlim(0, image.shape[1])
    ax.set_ylim(image.shape[0], 0)
    ax.set_title(f'hypothesis {k + 1}' + (' (chosen)' if chosen else ''),
                 fontsize=10, color=_HIGHLIGHT_COLOR if chosen else 'black',
                 fontweight='bold' if chosen else 'normal')
    ax3 = fig.add_subplot(grid[1, k], projection='3d')
    _style_3d(ax3)
    _draw_pose_set_3d(ax3, hypotheses[k:k + 1], 0,
                      gt_3d, show_others=False, view=view)
    set_equal_limits_3d(ax3, everything)
    if chosen:
      box = transforms.Bbox.union(
          [grid[0, k].get_position(fig), grid[1, k].get_position(fig)])
      pad_x, pad_y = 0.04 / (col_w * n), 0.04 / height
      title_h = 0.25 / height  # room for the column's title, in figure units
      fig.add_artist(patches.Rectangle(
          (box.x0 - pad_x, box.y0 - pad_y), box.width + 2 * pad_x,
          box.height + 2 * pad_y + title_h, transform=fig.transFigure,
          fill=False, edgecolor=_HIGHLIGHT_COLOR, linewidth=2.5))
  if title:
    fig.suptitle(title, fontsize=11)
  return _save(fig, path)


def _read_metrics(path: str) -> list[dict[str, Any]]:
  """Reads metrics.jsonl; a torn last line (a run still writing) is skipped."""
  if not os.path.isfile(path):
    raise ValueError(f'metrics file {path} does not exist')
  with open(path, encoding='utf-8') as f:
    lines = [line for line in f.read().splitlines() if line.strip()]
  rows = []
  for number, line in enumerate(lines, start=1):
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      if number == len(lines):
        break
      raise ValueError(f'{path}:{number} is not valid JSON: {e}') from e
    if not isinstance(row, dict) or 'step' not in row:
      raise ValueError(
          f'{path}:{number} must be a JSON object with a "step" field')
    rows.append(row)
  return rows


def _is_number(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def training_curves_figure(metrics_jsonl_path: str,
                           path: str | None) -> str | Figure:
  """Each numeric metric against the step, one subplot per metric.

  Args:
    metrics_jsonl_path: metrics.jsonl, one JSON object per line with a
      'step' and numeric fields (a metric may appear on only some lines).
    path: PNG to write, or None to return the figure.

  Returns:
    `path`, or the Figure when `path` is None. Metrics whose name contains
    'loss' use a log y axis when all their values are positive.
  """
  rows = _read_metrics(metrics_jsonl_path)
  series: dict[str, tuple[list[float], list[float]]] = {}
  for row in rows:
    for key, value in row.items():
      if key != 'step' and _is_number(value) and math.isfinite(value):
        steps, values = series.setdefault(key, ([], []))
        steps.append(float(row['step']))
        values.append(float(value))
  if not series:
    raise ValueError(
        f'{metrics_jsonl_path} has no numeric metrics besides "step"')
  keys = sorted(series, key=lambda k: ('loss' not in k, k))
  cols = min(3, len(keys))
  rows_n = math.ceil(len(keys) / cols)
  fig = Figure(figsize=(4.0 * cols, 2.8 * rows_n), dpi=_DPI,
               layout='constrained')
  for k, key in enumerate(keys):
    ax = fig.add_subplot(rows_n, cols, k + 1)
    steps, values = (np.asarray(v) for v in series[key])
    order = np.argsort(steps, kind='stable')
    ax.plot(steps[order], values[order], linewidth=1.5,
            marker='o' if len(values) <= 30 else None, markersize=3)
    if 'loss' in key and np.all(values > 0):
      ax.set_yscale('log')
    ax.set_title(key, fontsize=10)
    ax.set_xlabel('step', fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(True, which='major', alpha=0.3)
  return _save(fig, path)
