"""Tests of inference/bvh_writer.py: bone directions survive the round trip through BVH.

Three readers check each file: the project's BVH parser and forward kinematics
(datasets/bvh_mocap/bvh.py), an independent forward kinematics written here
with scipy's rotations, and the `bvh` package from PyPI.
"""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from deepskeleton_jax.data import registry
from deepskeleton_jax.geometry import skeleton
from deepskeleton_jax.inference import bvh_writer

bvh_lib = registry.load_module('bvh_mocap', 'bvh')


def _walking_poses(frames: int = 24, seed: int = 0) -> np.ndarray:
  """[F, 16, 3] camera-frame poses (mm): a person turning, bending and swinging limbs."""
  rng = np.random.default_rng(seed)
  rest = np.array([  # camera frame (y down), person facing the camera
      [-100, 900, 0], [-100, 480, 20], [-100, 0, 0], [100, 0, 0], [100, 480, 20],
      [100, 900, 0], [0, 0, 0], [0, -500, 0], [0, -600, 0], [0, -800, 0],
      [-560, -500, 0], [-350, -500, 0], [-150, -500, 0], [150, -500, 0],
      [350, -500, 0], [560, -500, 0]], np.float64)
  poses = []
  for t in range(frames):
    pose = rest + rng.normal(scale=60.0, size=rest.shape)  # every bone moves
    turn = Rotation.from_euler('yx', [25.0 * np.sin(t / 4), 10.0 * t / frames],
                               degrees=True)
    poses.append(turn.apply(pose - pose[skeleton.ROOT]) + [0, 0, 4000])
  return np.array(poses)


def _directions(positions: np.ndarray) -> np.ndarray:
  """[F, bones, 3] unit directions of the tree's bones from [F, 16, 3] joints."""
  vec = np.stack([positions[:, c] - positions[:, p] for p, c, _ in bvh_writer.TREE_BONES], 1)
  return vec / np.linalg.norm(vec, axis=-1, keepdims=True)


def _angles_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  return np.degrees(np.arccos(np.clip(np.sum(a * b, axis=-1), -1.0, 1.0)))


def _joint_positions(motion, fk: np.ndarray) -> np.ndarray:
  """[F, 16, 3] our joints from FK of the file: joints by name, end sites by parent."""
  names = list(motion.names)
  out = np.zeros((fk.shape[0], skeleton.NUM_JOINTS, 3))
  for j, bvh_name in bvh_writer.BVH_NAMES.items():
    if bvh_name in names:
      out[:, j] = fk[:, names.index(bvh_name)]
  for _, c, _ in bvh_writer.TREE_BONES:  # leaves: the End Site below their parent's node
    if bvh_writer.BVH_NAMES[c] not in names:
      parent = next(p for p, cc, _ in bvh_writer.TREE_BONES if cc == c)
      node = names.index(bvh_writer.BVH_NAMES[parent])
      out[:, c] = fk[:, [i for i, p in enumerate(motion.parents) if p == node][0]]
  return out


def _scipy_fk(motion) -> np.ndarray:
  """Forward kinematics from the parsed file with scipy's intrinsic 'ZXY' Euler angles."""
  frames = motion.frames
  num = len(motion.names)
  pos = np.zeros((frames.shape[0], num, 3))
  rot = [None] * num
  for j in range(num):
    start, chans = motion.channel_start[j], motion.channels[j]
    translation = np.broadcast_to(motion.offsets[j], (frames.shape[0], 3)).copy()
    if chans:
      assert chans[-3:] == ('Zrotation', 'Xrotation', 'Yrotation')
      local = Rotation.from_euler('ZXY', frames[:, start + len(chans) - 3:start + len(chans)],
                                  degrees=True)
      if len(chans) == 6:
        translation += frames[:, start:start + 3]
    else:
      local = Rotation.identity(frames.shape[0])
    p = motion.parents[j]
    if p < 0:
      pos[:, j], rot[j] = translation, local
    else:
      pos[:, j] = pos[:, p] + rot[p].apply(translation)
      rot[j] = rot[p] * local
  return pos


@pytest.mark.parametrize('with_root', [False, True])
def test_bone_directions_round_trip_within_half_a_degree(tmp_path, with_root):
  poses = _walking_poses()
  root = poses[:, skeleton.ROOT] if with_root else None
  path = tmp_path / 'clip_0.bvh'
  bvh_writer.write_bvh(path, poses - poses[:, skeleton.ROOT:skeleton.ROOT + 1], 25.0, root)
  motion = bvh_lib.load(path)
  assert motion.num_frames == len(poses) and abs(motion.frame_time - 0.04) < 1e-9
  want = _directions(poses @ bvh_writer.CAMERA_TO_WORLD.T)  # camera -> Y-up world
  for fk in (bvh_lib.forward_kinematics(motion), _scipy_fk(motion)):
    got = _directions(_joint_positions(motion, fk))
    assert _angles_deg(got, want).max() < 0.5
  if with_root:  # the root follows the trajectory
    thorax = _joint_positions(motion, _scipy_fk(motion))[:, skeleton.ROOT]
    pelvis_offset = poses[:, skeleton.JOINT_INDEX['pelvis']] - poses[:, skeleton.ROOT]
    world_pelvis = (root + pelvis_offset) @ bvh_writer.CAMERA_TO_WORLD.T
    pelvis = _joint_positions(motion, _scipy_fk(motion))[:, skeleton.JOINT_INDEX['pelvis']]
    np.testing.assert_allclose(pelvis, world_pelvis, atol=1e-3)
    assert np.all(thorax[:, 1] > pelvis[:, 1])  # Y up: the thorax above the pelvis


def test_y_is_up_and_nothing_is_mirrored(tmp_path):
  poses = _walking_poses(frames=2)
  path = tmp_path / 'p.bvh'
  bvh_writer.write_bvh(path, poses, 30.0)
  motion = bvh_lib.load(path)
  joints = _joint_positions(motion, bvh_lib.forward_kinematics(motion))
  head, ankle = joints[:, 9], joints[:, 0]
  assert np.all(head[:, 1] > ankle[:, 1])
  # Handedness: (right hip -> left hip) x (pelvis -> thorax) keeps its sign (a rotation).
  def handedness(p):
    return np.einsum('fi,fi->f', np.cross(p[:, 3] - p[:, 2], p[:, 7] - p[:, 6]),
                     p[:, 7] - p[:, 9] + p[:, 9] - p[:, 0])
  assert np.all(np.sign(handedness(joints)) == np.sign(handedness(poses)))


def test_every_bone_has_its_own_rotation_and_offsets_are_median_lengths(tmp_path):
  poses = _walking_poses()
  path = tmp_path / 'p.bvh'
  bvh_writer.write_bvh(path, poses, 30.0)
  motion = bvh_lib.load(path)
  lengths = np.median(np.linalg.norm(np.stack(
      [poses[:, c] - poses[:, p] for p, c, _ in bvh_writer.TREE_BONES], 1), axis=-1), axis=0)
  joints = _joint_positions(motion, bvh_lib.forward_kinematics(motion))
  got = np.linalg.norm(np.stack([joints[:, c] - joints[:, p]
                                 for p, c, _ in bvh_writer.TREE_BONES], 1), axis=-1)
  np.testing.assert_allclose(got, np.broadcast_to(lengths, got.shape), rtol=1e-5)
  for helper in ('PelvisToRightHip', 'PelvisToLeftHip', 'PelvisToThorax',
                 'ThoraxToUpperNeck', 'ThoraxToRightShoulder', 'ThoraxToLeftShoulder'):
    np.testing.assert_array_equal(motion.offsets[motion.names.index(helper)], 0.0)


def test_shortest_arc_and_euler_against_scipy():
  rng = np.random.default_rng(1)
  rest = np.array([0.0, -1.0, 0.0])
  target = rng.normal(size=(50, 3))
  target[0] = -rest  # antiparallel
  rot = bvh_writer.shortest_arc(rest, target)
  np.testing.assert_allclose(np.einsum('fij,j->fi', rot, rest),
                             target / np.linalg.norm(target, axis=-1, keepdims=True),
                             atol=1e-9)
  np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-9)
  want = Rotation.random(20, random_state=2).as_matrix()
  zxy = bvh_writer.euler_zxy(want)
  np.testing.assert_allclose(Rotation.from_euler('ZXY', zxy, degrees=True).as_matrix(), want,
                             atol=1e-9)


def test_file_opens_in_the_bvh_package(tmp_path):
  bvh = pytest.importorskip('bvh')
  poses = _walking_poses(frames=5)
  path = tmp_path / 'p.bvh'
  bvh_writer.write_bvh(path, poses, 50.0)
  mocap = bvh.Bvh(path.read_text())
  assert mocap.nframes == 5 and abs(mocap.frame_time - 0.02) < 1e-9
  assert mocap.get_joints_names() == bvh_writer.joint_names()
  assert mocap.joint_channels('RightKnee') == ['Zrotation', 'Xrotation', 'Yrotation']
  assert len(mocap.frame_joint_channels(0, 'Pelvis', mocap.joint_channels('Pelvis'))) == 6


def test_bad_input_is_refused():
  with pytest.raises(ValueError, match='fps'):
    bvh_writer.bvh_text(np.zeros((2, 16, 3)), 0.0)
  with pytest.raises(ValueError, match='finite'):
    bvh_writer.bvh_text(np.full((2, 16, 3), np.nan), 30.0)
