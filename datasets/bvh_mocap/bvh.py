"""BVH motion-capture files: parsing and forward kinematics.

A BVH file has a `HIERARCHY` of joints (each with an `OFFSET` from its parent
and a list of `CHANNELS`; leaf `End Site`s carry an offset only), then a
`MOTION` section: `Frames: F`, `Frame Time: dt` and F lines of channel values
in the order the channels appear in the hierarchy.

Forward kinematics (the usual BVH semantics): a joint's world transform is
its parent's transform x translate(offset + its position channels) x the
rotation channels in the listed order (degrees, intrinsic), e.g.
`Zrotation Yrotation Xrotation` gives R = Rz Ry Rx. Positions come out in the
file's unit and frame (e.g. CMU: 1/0.45 inch, Y up); the caller scales them.

End sites are named `<parent>_End` (e.g. `Head_End`, the top of the head in
the CMU hierarchy). `select_joints` maps a hierarchy onto another joint set,
where a target joint may be the midpoint of several joints (`'A+B'`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np

# CMU BVH (cgspeed conversion, e.g. shared/data/cmu_mocap) -> the 16 joints of
# `skeleton.JOINT_NAMES`. Pelvis and thorax are midpoints (hip joints,
# shoulder joints) because CMU's `Hips` sits ~9 cm above the hip joints and
# `lowerneck` ~8 cm below the shoulders; the upper neck is `Head` (the top of
# the neck, base of the skull) and the head top its end site. Checked on the
# data: left/right limb lengths agree and the `Left*` joints lie on the
# subject's left (see tests/bvh_test.py).
CMU_TO_SKELETON: tuple[str, ...] = (
    'RightAnkle', 'RightKnee', 'RightHip', 'LeftHip', 'LeftKnee', 'LeftAnkle',
    'LeftHip+RightHip', 'LeftShoulder+RightShoulder', 'Head', 'Head_End',
    'RightWrist', 'RightElbow', 'RightShoulder', 'LeftShoulder', 'LeftElbow',
    'LeftWrist')

# Millimetres per CMU BVH unit (1/0.45 inch).
CMU_UNIT_MM: float = 25.4 / 0.45

_AXES = {'X': 0, 'Y': 1, 'Z': 2}


@dataclasses.dataclass(frozen=True)
class Motion:
  """A parsed BVH file.

  Attributes:
    names: [J] joint names in file order (parents first), end sites included.
    parents: [J] int parent index, -1 for the root.
    offsets: [J, 3] offsets from the parent, file units.
    channels: per joint, its channel names (empty for end sites).
    channel_start: [J] index of the joint's first channel in a frame vector.
    frames: [F, C] channel values.
    frame_time: seconds per frame.
  """
  names: tuple[str, ...]
  parents: np.ndarray
  offsets: np.ndarray
  channels: tuple[tuple[str, ...], ...]
  channel_start: np.ndarray
  frames: np.ndarray
  frame_time: float

  @property
  def num_frames(self) -> int:
    return self.frames.shape[0]


def _error(name: str, msg: str) -> ValueError:
  return ValueError(f'{name}: not a valid BVH file: {msg}')


def _number(token: str, name: str) -> float:
  try:
    return float(token)
  except ValueError:
    raise _error(name, f'expected a number, got {token!r}') from None


def parse(text: str, name: str = '<string>') -> Motion:
  """Parses the text of a BVH file.

  Args:
    text: the whole file.
    name: used in error messages (e.g. the path).

  Returns:
    A `Motion`.

  Raises:
    ValueError: naming `name` and what was expected, on malformed input.
  """
  lines = text.splitlines()
  try:
    motion_line = next(i for i, l in enumerate(lines)
                       if l.strip().upper() == 'MOTION')
  except StopIteration:
    raise _error(name, 'no MOTION section') from None
  names, parents, offsets, channels = _parse_hierarchy(
      ' '.join(lines[:motion_line]).split(), name)
  sizes = [len(c) for c in channels]
  frames, frame_time = _parse_motion(lines[motion_line + 1:], sum(sizes), name)
  return Motion(
      names=tuple(names), parents=np.asarray(parents, np.int32),
      offsets=np.asarray(offsets, np.float64), channels=tuple(channels),
      channel_start=np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32),
      frames=frames, frame_time=frame_time)


def _parse_hierarchy(tokens: list[str], name: str
                     ) -> tuple[list[str], list[int], list, list[tuple[str, ...]]]:
  """(names, parents, offsets, channels) of the HIERARCHY tokens."""
  if not tokens or tokens[0] != 'HIERARCHY':
    raise _error(name, 'expected HIERARCHY at the start')
  names, parents, offsets, channels = [], [], [], []
  stack = []  # Indices of the joints whose braces are open.
  pos = 1
  pending = None  # The name of a joint whose '{' comes next.
  tokens = tokens + ['<end of HIERARCHY>']  # Reading past the end hits a bad token.
  try:
    while pos < len(tokens) - 1:
      tok = tokens[pos]
      if tok in ('ROOT', 'JOINT'):
        if (tok == 'ROOT') != (not stack):
          raise _error(name, f'{tok} at the wrong nesting level')
        pending = tokens[pos + 1]
        pos += 2
      elif tok == 'End':
        if tokens[pos + 1] != 'Site' or not stack:
          raise _error(name, 'malformed End Site')
        pending = f'{names[stack[-1]]}_End'
        pos += 2
      elif tok == '{':
        if pending is None:
          raise _error(name, 'unexpected "{"')
        names.append(pending)
        parents.append(stack[-1] if stack else -1)
        offsets.append(None)
        channels.append(())
        stack.append(len(names) - 1)
        pending = None
        pos += 1
      elif tok == '}':
        if not stack:
          raise _error(name, 'unbalanced "}"')
        stack.pop()
        pos += 1
      elif tok == 'OFFSET':
        offsets[stack[-1]] = [_number(t, name) for t in tokens[pos + 1:pos + 4]]
        pos += 4
      elif tok == 'CHANNELS':
        channels[stack[-1]], pos = _parse_channels(tokens, pos, name)
      else:
        raise _error(name, f'unexpected token {tok!r} in HIERARCHY')
  except IndexError:
    raise _error(name, 'malformed HIERARCHY') from None
  if stack or not names:
    raise _error(name, 'unbalanced braces or no joints in HIERARCHY')
  if any(o is None or len(o) != 3 for o in offsets):
    raise _error(name, 'a joint lacks a 3-value OFFSET')
  return names, parents, offsets, channels


def _parse_channels(tokens: list[str], pos: int, name: str
                    ) -> tuple[tuple[str, ...], int]:
  """The channels of `CHANNELS n c1 .. cn` at `pos`, and the next position."""
  count = _number(tokens[pos + 1], name)
  if not (count.is_integer() and 0 <= count <= 6):
    raise _error(name, f'CHANNELS {tokens[pos + 1]}: expected a count from 0 to 6')
  n = int(count)
  chans = tuple(tokens[pos + 2:pos + 2 + n])
  if len(chans) != n:
    raise _error(name, f'CHANNELS {n} lists {len(chans)} channels')
  for c in chans:
    if c[0] not in _AXES or c[1:] not in ('position', 'rotation'):
      raise _error(name, f'unknown channel {c!r}')
  return chans, pos + 2 + n


def _parse_motion(lines: list[str], num_channels: int, name: str
                  ) -> tuple[np.ndarray, float]:
  """([F, C] frames, frame time) of the lines after MOTION."""
  header = lines[:2]
  try:
    key0, n_frames = header[0].split(':')
    key1, frame_time = header[1].split(':')
    if key0.strip() != 'Frames' or key1.strip() != 'Frame Time':
      raise ValueError
    n_frames, frame_time = int(n_frames), float(frame_time)
  except (IndexError, ValueError):
    raise _error(name, 'expected "Frames: F" and "Frame Time: dt" after '
                 'MOTION') from None
  rows = [l for l in lines[2:] if l.strip()]
  if n_frames < 1:
    raise _error(name, f'Frames: {n_frames}; expected at least one frame')
  if len(rows) < n_frames:
    raise _error(name, f'Frames: {n_frames} but {len(rows)} frame lines')
  try:
    frames = np.array([np.array(r.split(), np.float64)
                       for r in rows[:n_frames]]).reshape(n_frames, -1)
  except ValueError:
    raise _error(name, f'every frame line must hold {num_channels} numbers'
                 ) from None
  if frames.shape[1] != num_channels:
    raise _error(name, f'frame lines hold {frames.shape[1]} values, the '
                 f'hierarchy has {num_channels} channels')
  return frames, frame_time


def load(path: str | os.PathLike) -> Motion:
  """Reads and parses a BVH file (errors name the file)."""
  try:
    with open(path, 'r', encoding='utf-8', errors='replace') as f:
      text = f.read()
  except OSError as e:
    raise ValueError(f'{path}: cannot read BVH file ({e})') from e
  return parse(text, name=str(path))


def axis_rotation(axis: int, degrees: np.ndarray) -> np.ndarray:
  """[F] angles about axis 0/1/2 (x/y/z) -> [F, 3, 3] rotation matrices."""
  t = np.deg2rad(np.asarray(degrees, np.float64))
  c, s = np.cos(t), np.sin(t)
  r = np.zeros(t.shape + (3, 3))
  i, j = (axis + 1) % 3, (axis + 2) % 3
  r[..., axis, axis] = 1.0
  r[..., i, i] = c
  r[..., j, j] = c
  r[..., i, j] = -s
  r[..., j, i] = s
  return r


def forward_kinematics(motion: Motion, frames: np.ndarray | None = None
                       ) -> np.ndarray:
  """World positions of every joint and end site.

  Args:
    motion: a parsed file.
    frames: optional frame indices to evaluate (all frames if None).

  Returns:
    [F, J, 3] positions in the file's unit and frame, J = len(motion.names).
  """
  values = motion.frames if frames is None else motion.frames[np.asarray(frames)]
  n = values.shape[0]
  num = len(motion.names)
  rot = np.zeros((n, num, 3, 3))
  pos = np.zeros((n, num, 3))
  for j in range(num):
    translation = np.broadcast_to(motion.offsets[j], (n, 3)).copy()
    local = np.broadcast_to(np.eye(3), (n, 3, 3))
    start = motion.channel_start[j]
    for k, chan in enumerate(motion.channels[j]):
      axis = _AXES[chan[0]]
      value = values[:, start + k]
      if chan.endswith('position'):
        translation[:, axis] += value
      else:
        local = local @ axis_rotation(axis, value)
    p = motion.parents[j]
    if p < 0:
      pos[:, j] = translation
      rot[:, j] = local
    else:
      pos[:, j] = pos[:, p] + np.einsum('fij,fj->fi', rot[:, p], translation)
      rot[:, j] = rot[:, p] @ local
  return pos


def select_joints(positions: np.ndarray, names: Sequence[str],
                  mapping: Sequence[str]) -> np.ndarray:
  """Picks (or averages) joints by name.

  Args:
    positions: [F, J, 3] from `forward_kinematics`.
    names: the J joint names (`Motion.names`).
    mapping: per target joint a name, or names joined by '+' (their mean).

  Returns:
    [F, len(mapping), 3].

  Raises:
    ValueError: naming the mapping entries not found in `names`.
  """
  index = {n: i for i, n in enumerate(names)}
  missing = [p for m in mapping for p in m.split('+') if p not in index]
  if missing:
    raise ValueError(f'mapping names joints {missing} that the hierarchy '
                     f'lacks; it has {list(names)}')
  return np.stack([
      np.mean([positions[:, index[p]] for p in m.split('+')], axis=0)
      for m in mapping], axis=1)
