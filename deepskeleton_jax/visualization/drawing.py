"""Drawing primitives: skeletons in 2D and 3D on matplotlib axes, shared by the figures.

Conventions (docs/DESIGN.md): 2D joints are continuous pixels, pixel (row i,
col j) covering [j, j+1) x [i, i+1), so images are shown with extent
(0, W, H, 0). 3D joints are millimetres in the camera frame (x right, y down,
z forward); 3D axes plot (x, z, -y), a proper rotation that puts "up" on the
plot's z axis so people stand upright, and the camera's own view is elev=0,
azim=-90. `figures.py` composes these into the saved figures; the video
overlay uses them too.
"""

from __future__ import annotations

from typing import Any, Sequence

from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from mpl_toolkits.mplot3d import Axes3D
import numpy as np

from deepskeleton_jax.geometry import skeleton

# Default novel viewpoint (elevation, azimuth) in degrees: 30 degrees around
# the vertical axis from the camera's own view (azim=-90), slightly above.
DEFAULT_VIEW: tuple[float, float] = (12.0, -60.0)

PANEL_3D_COLOR = '#1c1c1c'      # dark 3D background: the spine bone is white.
GRID_3D_COLOR = '#4a4a4a'
GT_COLOR = '0.75'
HIGHLIGHT_COLOR = '#2ca02c'
DPI = 100


# ----------------------------------------------------------------- checks ---


def check_array(name: str, x: Any, shape: Sequence[int | None]) -> np.ndarray:
  """Returns `x` as an array, raising ValueError unless it matches `shape`."""
  x = np.asarray(x)
  ok = x.ndim == len(shape) and all(
      s is None or s == d for s, d in zip(shape, x.shape))
  if not ok:
    want = ', '.join('n' if s is None else str(s) for s in shape)
    raise ValueError(f'{name} must have shape [{want}], got {x.shape}')
  return x


def as_rgb(name: str, image: Any) -> np.ndarray:
  """Checks an [H, W, 3] uint8 image or float map and returns it displayable.

  Floats (e.g. skeleton maps) are clipped to [0, 1]; uint8 passes unchanged.
  """
  image = check_array(name, image, (None, None, 3))
  if image.dtype == np.uint8:
    return image
  if not np.issubdtype(image.dtype, np.floating):
    raise ValueError(f'{name} must be uint8 or floating point, got {image.dtype}')
  return np.clip(np.nan_to_num(image), 0.0, 1.0)


def check_chosen(chosen_index: int, num: int) -> int:
  chosen_index = int(chosen_index)
  if not 0 <= chosen_index < num:
    raise ValueError(
        f'chosen_index must be in [0, {num}), got {chosen_index}')
  return chosen_index


def bone_mask(joints: np.ndarray, visible: np.ndarray | None) -> np.ndarray:
  """[15] bool: a bone is drawn when both ends are finite (and visible)."""
  ok = np.all(np.isfinite(joints), axis=-1)
  if visible is not None:
    visible = check_array('visible', visible, (skeleton.NUM_JOINTS,))
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
  joints_2d = check_array('joints_2d', joints_2d, (skeleton.NUM_JOINTS, 2))
  drawn = bone_mask(joints_2d, visible)
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
  joints_3d = check_array('joints_3d', joints_3d, (skeleton.NUM_JOINTS, 3))
  pts = camera_to_plot(joints_3d)
  drawn = bone_mask(joints_3d, None)
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


def show_image(ax: Axes, image: np.ndarray, title: str | None,
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


def style_3d(ax: Axes3D, title: str | None = None) -> None:
  """Dark panes, faint grid, no tick labels."""
  ax.set_facecolor(PANEL_3D_COLOR)
  for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
    axis.set_pane_color(PANEL_3D_COLOR)
    axis.pane.set_edgecolor(GRID_3D_COLOR)
    axis.line.set_color(GRID_3D_COLOR)
    axis.set_ticklabels([])
    axis._axinfo['grid']['color'] = GRID_3D_COLOR  # pylint: disable=protected-access
    axis._axinfo['grid']['linewidth'] = 0.5  # pylint: disable=protected-access
    axis._axinfo['tick']['inward_factor'] = 0.0  # pylint: disable=protected-access
    axis._axinfo['tick']['outward_factor'] = 0.0  # pylint: disable=protected-access
  if title:
    ax.set_title(title, fontsize=10)


def root_relative(joints_3d: np.ndarray) -> np.ndarray:
  return joints_3d - joints_3d[..., skeleton.ROOT:skeleton.ROOT + 1, :]


def draw_pose_set_3d(ax: Axes3D, hypotheses: np.ndarray, chosen_index: int,
                      gt_3d: np.ndarray | None, show_others: bool,
                      view: tuple[float, float]) -> None:
  """Root-relative chosen pose on top, others faded behind, GT dashed grey."""
  hyps = root_relative(hypotheses)
  everything = [hyps]
  if show_others:
    for k, hyp in enumerate(hyps):
      if k != chosen_index:
        draw_skeleton_3d(ax, hyp, alpha=0.25, linewidth=1.5, view=None,
                         set_limits=False, zorder=1)
  if gt_3d is not None:
    gt = root_relative(gt_3d)
    everything.append(gt[None])
    draw_skeleton_3d(ax, gt, color=GT_COLOR, linewidth=1.5, view=None,
                     set_limits=False, zorder=2, linestyle='--')
  draw_skeleton_3d(ax, hyps[chosen_index], linewidth=2.5, view=view,
                   set_limits=False, zorder=3)
  set_equal_limits_3d(ax, np.concatenate(everything, axis=0))


