"""Predicted motion as BVH: our 16 joints as a hierarchy with one rotation per bone.

`write_bvh` turns a person's 3D poses over a clip (camera frame, mm) into a
BVH file that animation tools open:

- **World**: Y up, as BVH tools expect. Camera coordinates (x right, y down,
  z forward) become world coordinates by the fixed rotation diag(1, -1, -1)
  (180 degrees about x: the camera's up is the world's +Y, the person faces
  the world's -Z when facing the camera). A rotation, so nothing is mirrored.
- **Hierarchy**: rooted at the pelvis. Where several bones leave one joint
  (pelvis: both hips and the spine; thorax: the neck and both clavicles),
  one rotation cannot follow all of them, so each such bone starts at a
  zero-offset helper joint (`<Joint>To<Child>`, as CMU's `LHipJoint`) whose
  rotation orients that bone alone. Every bone thus has its own rotation.
- **Offsets**: the person's median bone lengths over the clip, along a T-pose
  rest direction per bone (legs and spine vertical, hips, clavicles and arms
  horizontal, the person's right at -X).
- **Rotations**: each bone's global rotation is the shortest-arc rotation
  taking its rest direction to its predicted direction (so the twist about
  the bone is zero relative to the rest pose: stated, consistent, and all a
  joint-position skeleton can determine); a joint's channels hold its rotation
  relative to its parent. Channels are `Zrotation Xrotation Yrotation`
  (degrees; the matrix is Rz @ Rx @ Ry, BVH's listed order); the root also
  has `Xposition Yposition Zposition`.
- **Root translation**: the pelvis from the camera-space trajectory of the
  root when one is given (`root_camera_mm`), else fixed at its median.
- **Frames**: one per video frame, `Frame Time` = 1 / fps.

Bone directions read back from the file (forward kinematics) equal the
predicted ones up to float rounding; bone lengths are the clip's medians.
"""

from __future__ import annotations

import os
from typing import Sequence

import chex
import numpy as np

from deepskeleton_jax import files
from deepskeleton_jax.geometry import skeleton

CAMERA_TO_WORLD = np.diag([1.0, -1.0, -1.0])
CHANNELS = ('Zrotation', 'Xrotation', 'Yrotation')
ROOT_JOINT = skeleton.JOINT_INDEX['pelvis']

# Joint names in the file (BVH-style CamelCase of skeleton.JOINT_NAMES).
_SIDES = {'r': 'Right', 'l': 'Left'}
BVH_NAMES = {i: ''.join(_SIDES.get(p, p.capitalize()) for p in name.split('_'))
             for i, name in enumerate(skeleton.JOINT_NAMES)}

# The kinematic tree rooted at the pelvis: (parent joint, child joint, rest direction).
_X, _Y = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
TREE_BONES: tuple[tuple[int, int, np.ndarray], ...] = tuple(
    (skeleton.JOINT_INDEX[a], skeleton.JOINT_INDEX[b], d) for a, b, d in (
        ('pelvis', 'r_hip', -_X), ('r_hip', 'r_knee', -_Y), ('r_knee', 'r_ankle', -_Y),
        ('pelvis', 'l_hip', _X), ('l_hip', 'l_knee', -_Y), ('l_knee', 'l_ankle', -_Y),
        ('pelvis', 'thorax', _Y), ('thorax', 'upper_neck', _Y), ('upper_neck', 'head_top', _Y),
        ('thorax', 'r_shoulder', -_X), ('r_shoulder', 'r_elbow', -_X),
        ('r_elbow', 'r_wrist', -_X),
        ('thorax', 'l_shoulder', _X), ('l_shoulder', 'l_elbow', _X),
        ('l_elbow', 'l_wrist', _X)))


def shortest_arc(rest: np.ndarray, target: np.ndarray) -> np.ndarray:
  """Rotations taking unit `rest` [3] to the directions `target` [F, 3].

  Args:
    rest: a unit vector.
    target: [F, 3] directions (any length > 0).

  Returns:
    [F, 3, 3] rotation matrices R with R @ rest = target / |target|; the
    rotation axis is rest x target (for opposite directions, any axis
    perpendicular to rest).
  """
  t = target / np.linalg.norm(target, axis=-1, keepdims=True)
  axis = np.cross(rest, t)
  sin, cos = np.linalg.norm(axis, axis=-1), np.einsum('i,fi->f', rest, t)
  helper = _X if abs(rest[0]) < 0.9 else _Y
  perpendicular = np.cross(rest, helper) / np.linalg.norm(np.cross(rest, helper))
  axis = np.where(sin[:, None] > 1e-9, axis / np.maximum(sin, 1e-12)[:, None], perpendicular)
  angle = np.arctan2(sin, cos)
  k = np.zeros(t.shape[:1] + (3, 3))  # the cross-product matrix of the axis
  k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
  k = k - np.swapaxes(k, 1, 2)
  s, c = np.sin(angle)[:, None, None], np.cos(angle)[:, None, None]
  return np.eye(3) + s * k + (1 - c) * (k @ k)


def euler_zxy(rotations: np.ndarray) -> np.ndarray:
  """[F, 3, 3] rotations -> [F, 3] degrees (z, x, y) with R = Rz(z) @ Rx(x) @ Ry(y)."""
  r = rotations
  x = np.arcsin(np.clip(r[:, 2, 1], -1.0, 1.0))
  y = np.arctan2(-r[:, 2, 0], r[:, 2, 2])
  z = np.arctan2(-r[:, 0, 1], r[:, 1, 1])
  return np.degrees(np.stack([z, x, y], axis=-1))


def _nodes() -> list[tuple[str, int, int | None, int | None]]:
  """BVH joints in file order: (name, parent node, bone ending here, bone it orients).

  A joint with one outgoing bone carries that bone's rotation itself; a joint
  with several (pelvis, thorax) gets one zero-offset helper node per bone.
  Joints with no outgoing bone (ankles, wrists, head top) are End Sites.
  """
  children = {}
  for b, (p, c, _) in enumerate(TREE_BONES):
    children.setdefault(p, []).append((b, c))
  nodes = []

  def visit(joint, parent_node, bone_in):
    outgoing = children[joint]
    if len(outgoing) == 1:
      nodes.append((BVH_NAMES[joint], parent_node, bone_in, outgoing[0][0]))
      owners = [(len(nodes) - 1, *outgoing[0])]
    else:
      nodes.append((BVH_NAMES[joint], parent_node, bone_in, None))
      here, owners = len(nodes) - 1, []
      for b, c in outgoing:
        nodes.append((f'{BVH_NAMES[joint]}To{BVH_NAMES[c]}', here, None, b))
        owners.append((len(nodes) - 1, b, c))
        if c in children:
          visit(c, len(nodes) - 1, b)
      return
    node, b, c = owners[0]
    if c in children:
      visit(c, node, b)

  visit(ROOT_JOINT, -1, None)
  return nodes


def _check(poses_mm, fps, root_camera_mm):
  chex.assert_rank(poses_mm, 3)
  chex.assert_axis_dimension(poses_mm, 1, skeleton.NUM_JOINTS)
  chex.assert_axis_dimension(poses_mm, 2, 3)
  if poses_mm.shape[0] < 1 or not np.all(np.isfinite(poses_mm)):
    raise ValueError('write_bvh: poses must be finite, with at least one frame')
  if not fps > 0:
    raise ValueError(f'write_bvh: fps must be > 0, got {fps}')
  if root_camera_mm is not None:
    chex.assert_shape(root_camera_mm, (poses_mm.shape[0], 3))


def bvh_text(poses_mm: np.ndarray, fps: float,
             root_camera_mm: np.ndarray | None = None) -> str:
  """The BVH file of one person's motion (see the module docstring).

  Args:
    poses_mm: [F, 16, 3] joints in the camera frame (mm), root-relative or not.
    fps: frames per second of the clip.
    root_camera_mm: optional [F, 3] camera-frame position of the root joint
      (the thorax) per frame; without it the pelvis stays at its median.

  Returns:
    The file's text.
  """
  poses_mm = np.asarray(poses_mm, np.float64)
  _check(poses_mm, fps, root_camera_mm)
  world = poses_mm @ CAMERA_TO_WORLD.T
  if root_camera_mm is not None:
    root = np.asarray(root_camera_mm, np.float64) @ CAMERA_TO_WORLD.T
    world = world - world[:, skeleton.ROOT:skeleton.ROOT + 1] + root[:, None]
  vectors = np.stack([world[:, c] - world[:, p] for p, c, _ in TREE_BONES], axis=1)
  lengths = np.median(np.linalg.norm(vectors, axis=-1), axis=0)
  bone_rot = np.stack([shortest_arc(d, vectors[:, b])
                       for b, (_, _, d) in enumerate(TREE_BONES)], axis=1)
  pelvis = world[:, ROOT_JOINT]
  if root_camera_mm is None:
    pelvis = np.broadcast_to(np.median(pelvis, axis=0), pelvis.shape)
  nodes = _nodes()
  frames = len(poses_mm)
  global_rot = []
  columns = [pelvis]
  for _, parent, _, bone_out in nodes:
    rot = bone_rot[:, bone_out] if bone_out is not None else np.broadcast_to(
        np.eye(3), (frames, 3, 3))
    parent_rot = global_rot[parent] if parent >= 0 else np.broadcast_to(np.eye(3), rot.shape)
    global_rot.append(rot)
    columns.append(euler_zxy(np.swapaxes(parent_rot, 1, 2) @ rot))
  lines = ['HIERARCHY']
  _write_node(lines, nodes, lengths, 0, 0)
  lines += ['MOTION', f'Frames: {frames}', f'Frame Time: {1.0 / fps:.8f}']
  motion = np.concatenate(columns, axis=1)
  lines += [_numbers(row) for row in motion]
  return '\n'.join(lines) + '\n'


def _write_node(lines: list[str], nodes, lengths: np.ndarray, i: int, depth: int) -> None:
  """Appends node i and its subtree (offsets: bone lengths along rest directions)."""
  name, parent, bone_in, bone_out = nodes[i]
  pad = '  ' * depth
  offset = np.zeros(3) if bone_in is None else lengths[bone_in] * TREE_BONES[bone_in][2]
  if parent < 0:
    lines += [f'ROOT {name}', '{', f'  OFFSET {_numbers(offset)}',
              '  CHANNELS 6 Xposition Yposition Zposition ' + ' '.join(CHANNELS)]
  else:
    lines += [f'{pad}JOINT {name}', pad + '{', f'{pad}  OFFSET {_numbers(offset)}',
              f'{pad}  CHANNELS 3 ' + ' '.join(CHANNELS)]
  kids = [j for j, node in enumerate(nodes) if node[1] == i]
  for j in kids:
    _write_node(lines, nodes, lengths, j, depth + 1)
  if not kids and bone_out is not None:
    end = lengths[bone_out] * TREE_BONES[bone_out][2]
    lines += [f'{pad}  End Site', f'{pad}  {{', f'{pad}    OFFSET {_numbers(end)}',
              f'{pad}  }}']
  lines.append(pad + '}')


def _numbers(values) -> str:
  return ' '.join(f'{round(float(v), 6) + 0.0:.6f}' for v in values)  # no '-0.000000'


def write_bvh(path: str | os.PathLike, poses_mm: np.ndarray, fps: float,
              root_camera_mm: np.ndarray | None = None) -> None:
  """Writes `bvh_text(...)` to `path` atomically.

  Args:
    path: the output file (`<name>_<id>.bvh`).
    poses_mm: [F, 16, 3] joints in the camera frame (mm).
    fps: frames per second.
    root_camera_mm: optional [F, 3] root (thorax) trajectory in the camera frame.
  """
  files.write_text(str(path), bvh_text(poses_mm, fps, root_camera_mm))


def hold_gaps(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """Frames where `valid` is False take the nearest earlier valid frame (the first one before it).

  Args:
    values: [T, ...] per-frame values.
    valid: [T] bool, at least one True.

  Returns:
    [T, ...] with every frame valid (a person unseen for a while holds its pose).
  """
  t = np.arange(len(valid))
  last = np.maximum.accumulate(np.where(valid, t, -1))
  return values[np.where(last >= 0, last, np.argmax(valid))]


def joint_names() -> Sequence[str]:
  """Names of the BVH joints in file order (helpers included)."""
  return [n[0] for n in _nodes()]
