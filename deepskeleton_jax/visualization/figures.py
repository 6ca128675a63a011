"""Figures: skeletons in 2D and 3D, skeleton maps, predictions, training curves.

Everything here takes NumPy arrays and uses matplotlib's object-oriented API
(`matplotlib.figure.Figure` rendered by the Agg canvas), so no display, no
pyplot global state and no backend switch are involved (importing this module
leaves a notebook's backend alone) and figures are freed when they go out of
scope. Each `*_figure` function saves a PNG atomically (a temporary file in the
target folder, then `os.replace`) and returns its path, or returns the
`Figure` itself when `path` is None.

The drawing primitives and their conventions (continuous pixels; 3D plotted
as (x, z, -y) so people stand upright) are in `drawing.py`.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from matplotlib import patches
from matplotlib import transforms
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np

from deepskeleton_jax import files
from deepskeleton_jax.visualization import drawing
from deepskeleton_jax.geometry import skeleton

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
  panels = [] if image is None else [('input', drawing.as_rgb('image', image))]
  panels += [('foreground map', drawing.as_rgb('fg', fg)),
             ('background map', drawing.as_rgb('bg', bg))]
  fig = Figure(figsize=(3.0 * len(panels), 3.3 if title else 3.0), dpi=drawing.DPI,
               layout='constrained')
  for k, (name, img) in enumerate(panels):
    ax = fig.add_subplot(1, len(panels), k + 1)
    drawing.show_image(ax, img, name, 'antialiased' if k == 0 and image is not None
                else 'nearest')
  if title:
    fig.suptitle(title, fontsize=11)
  return _save(fig, path)


def render_compare_figure(path: str | None,
                          predicted: np.ndarray,
                          before: np.ndarray,
                          after: np.ndarray | None = None,
                          title: str | None = None) -> str | Figure:
  """A hypothesis' predicted maps beside its renders before and after refinement.

  Args:
    path: PNG to write, or None to return the figure.
    predicted: [h, w, 6] the SkeletonMapNet's maps (fg RGB, bg RGB in [0, 1]).
    before: [h, w, 6] the selected hypothesis rendered (soft rasterizer).
    after: [h, w, 6] the refined pose rendered, or None (no refinement).
    title: optional figure title.

  Returns:
    `path`, or the Figure when `path` is None.
  """
  rows = [('predicted', predicted), ('rendered', before)]
  if after is not None:
    rows.append(('refined', after))
  fig = Figure(figsize=(5.0, 2.4 * len(rows) + (0.3 if title else 0.0)), dpi=drawing.DPI,
               layout='constrained')
  for r, (name, maps) in enumerate(rows):
    maps = drawing.check_array(name, np.asarray(maps, np.float32), (None, None, 6))
    for c, (side, channels) in enumerate((('fg', slice(0, 3)), ('bg', slice(3, 6)))):
      ax = fig.add_subplot(len(rows), 2, 2 * r + c + 1)
      drawing.show_image(ax, drawing.as_rgb(side, maps[..., channels]),
                         f'{name} {side}', 'nearest')
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
                      view: tuple[float, float] = drawing.DEFAULT_VIEW) -> str | Figure:
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
  image = drawing.as_rgb('image', image)
  hypotheses = drawing.check_array('hypotheses', hypotheses,
                            (None, skeleton.NUM_JOINTS, 3))
  chosen_index = drawing.check_chosen(chosen_index, hypotheses.shape[0])
  if gt_3d is not None:
    gt_3d = drawing.check_array('gt_3d', gt_3d, (skeleton.NUM_JOINTS, 3))
  fig = Figure(figsize=(13.0, 3.6 if title else 3.3), dpi=drawing.DPI,
               layout='constrained')
  ax = fig.add_subplot(1, 4, 1)
  drawing.show_image(ax, image, 'input + 2D pose')
  drawing.draw_skeleton_2d(ax, joints_2d, visible=visible)
  ax.set_xlim(0, image.shape[1])
  ax.set_ylim(image.shape[0], 0)
  drawing.show_image(fig.add_subplot(1, 4, 2), drawing.as_rgb('fg', fg), 'foreground map',
              'nearest')
  drawing.show_image(fig.add_subplot(1, 4, 3), drawing.as_rgb('bg', bg), 'background map',
              'nearest')
  ax3 = fig.add_subplot(1, 4, 4, projection='3d')
  n = hypotheses.shape[0]
  label = f'3D, hypothesis {chosen_index + 1}/{n}'
  notes = (['others faded'] if n > 1 else []) + (
      ['GT dashed'] if gt_3d is not None else [])
  if notes:
    label += f' ({", ".join(notes)})'
  drawing.style_3d(ax3, label)
  drawing.draw_pose_set_3d(ax3, hypotheses, chosen_index, gt_3d, show_others=True,
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
                      view: tuple[float, float] = drawing.DEFAULT_VIEW) -> str | Figure:
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
  image = drawing.as_rgb('image', image)
  hypotheses = drawing.check_array('hypotheses', hypotheses,
                            (None, skeleton.NUM_JOINTS, 3))
  n = hypotheses.shape[0]
  projections = drawing.check_array('projections', projections,
                             (n, skeleton.NUM_JOINTS, 2))
  chosen_index = drawing.check_chosen(chosen_index, n)
  if gt_3d is not None:
    gt_3d = drawing.check_array('gt_3d', gt_3d, (skeleton.NUM_JOINTS, 3))
  # Every 3D panel shares one cube so that the poses compare at one scale.
  everything = drawing.root_relative(hypotheses)
  if gt_3d is not None:
    everything = np.concatenate([everything, drawing.root_relative(gt_3d)[None]])
  col_w = 2.6
  height = 2 * col_w + (0.75 if title else 0.35)
  fig = Figure(figsize=(col_w * n, height), dpi=drawing.DPI)
  grid = fig.add_gridspec(2, n, left=0.02, right=0.98, bottom=0.02,
                          top=1 - (0.7 if title else 0.3) / height,
                          wspace=0.08, hspace=0.1)
  for k in range(n):
    chosen = k == chosen_index
    ax = fig.add_subplot(grid[0, k])
    drawing.show_image(ax, image, None)
    drawing.draw_skeleton_2d(ax, projections[k], linewidth=2.0)
    ax.set_xlim(0, image.shape[1])
    ax.set_ylim(image.shape[0], 0)
    ax.set_title(f'hypothesis {k + 1}' + (' (chosen)' if chosen else ''),
                 fontsize=10, color=drawing.HIGHLIGHT_COLOR if chosen else 'black',
                 fontweight='bold' if chosen else 'normal')
    ax3 = fig.add_subplot(grid[1, k], projection='3d')
    drawing.style_3d(ax3)
    drawing.draw_pose_set_3d(ax3, hypotheses[k:k + 1], 0,
                      gt_3d, show_others=False, view=view)
    drawing.set_equal_limits_3d(ax3, everything)
    if chosen:
      box = transforms.Bbox.union(
          [grid[0, k].get_position(fig), grid[1, k].get_position(fig)])
      pad_x, pad_y = 0.04 / (col_w * n), 0.04 / height
      title_h = 0.25 / height  # room for the column's title, in figure units
      fig.add_artist(patches.Rectangle(
          (box.x0 - pad_x, box.y0 - pad_y), box.width + 2 * pad_x,
          box.height + 2 * pad_y + title_h, transform=fig.transFigure,
          fill=False, edgecolor=drawing.HIGHLIGHT_COLOR, linewidth=2.5))
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
  fig = Figure(figsize=(4.0 * cols, 2.8 * rows_n), dpi=drawing.DPI,
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
