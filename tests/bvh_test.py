"""Tests of deepskeleton_jax.bvh: parsing and forward kinematics."""

import dataclasses

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from deepskeleton_jax.data import registry
from deepskeleton_jax.geometry import skeleton

bvh = registry.load_module('bvh_mocap', 'bvh')

_TINY = """HIERARCHY
ROOT Hips
{
  OFFSET 0 0 0
  CHANNELS 6 Xposition Yposition Zposition Zrotation Yrotation Xrotation
  JOINT Arm
  {
    OFFSET 1 0 0
    CHANNELS 3 Zrotation Xrotation Yrotation
    End Site
    {
      OFFSET 0 2 0
    }
  }
}
MOTION
Frames: 2
Frame Time: 0.01
1 2 3 90 0 0 0 0 0
0 0 0 10 20 30 40 50 60
"""


def test_tiny_hierarchy_matches_scipy_euler():
  motion = bvh.parse(_TINY)
  assert motion.names == ('Hips', 'Arm', 'Arm_End')
  assert list(motion.parents) == [-1, 0, 1]
  pos = bvh.forward_kinematics(motion)
  # Frame 0: root at (1, 2, 3) turned 90 degrees about z: x -> y.
  np.testing.assert_allclose(pos[0, 1], [1, 3, 3], atol=1e-12)
  np.testing.assert_allclose(pos[0, 2], [-1, 3, 3], atol=1e-12)
  # Frame 1: intrinsic rotations in the listed order (scipy: upper case).
  r_root = Rotation.from_euler('ZYX', [10, 20, 30], degrees=True).as_matrix()
  r_arm = Rotation.from_euler('ZXY', [40, 50, 60], degrees=True).as_matrix()
  np.testing.assert_allclose(pos[1, 1], r_root @ [1, 0, 0], atol=1e-12)
  np.testing.assert_allclose(pos[1, 2], r_root @ ([1, 0, 0] + r_arm @ [0, 2, 0]),
                             atol=1e-12)


@pytest.mark.parametrize('text, message', [
    ('HIERARCHY\nROOT A\n{\nOFFSET 0 0 0\n', 'MOTION'),
    (_TINY.replace('Frames: 2', 'Frames: 3'), 'frame lines'),
    (_TINY.replace('40 50 60', '40 50'), 'numbers'),
    (_TINY.replace('Zrotation Xrotation', 'Zrotation Wrotation'), 'channel'),
    (_TINY.replace('OFFSET 1 0 0', 'OFFSET 1 x 0'), 'number'),
])
def test_malformed_files_name_the_problem(text, message):
  with pytest.raises(ValueError, match=f'bad.bvh.*{message}'):
    bvh.parse(text, name='bad.bvh')


def test_select_joints_midpoints_and_missing_names():
  pos = np.arange(2 * 3 * 3, dtype=float).reshape(2, 3, 3)
  out = bvh.select_joints(pos, ('a', 'b', 'c'), ('c', 'a+b'))
  np.testing.assert_allclose(out[:, 0], pos[:, 2])
  np.testing.assert_allclose(out[:, 1], (pos[:, 0] + pos[:, 1]) / 2)
  with pytest.raises(ValueError, match='nope'):
    bvh.select_joints(pos, ('a', 'b', 'c'), ('a+nope',))


_LIMBS = {'thigh': ('hip', 'knee'), 'shin': ('knee', 'ankle'),
          'upper_arm': ('shoulder', 'elbow'), 'forearm': ('elbow', 'wrist')}


def test_cmu_limbs_rigid_symmetric_and_human_sized(shared_data):
  for path in sorted((shared_data / 'cmu_mocap').glob('*.bvh')):
    motion = bvh.load(path)
    pos = bvh.forward_kinematics(motion)
    joints = bvh.select_joints(pos, motion.names,
                               bvh.CMU_TO_SKELETON) * bvh.CMU_UNIT_MM
    assert joints.shape == (motion.num_frames, 16, 3)
    lengths = {}
    for side in ('l', 'r'):
      for limb, (a, b) in _LIMBS.items():
        a = skeleton.JOINT_INDEX[f'{side}_{a}']
        b = skeleton.JOINT_INDEX[f'{side}_{b}']
        length = np.linalg.norm(joints[:, a] - joints[:, b], axis=-1)
        assert np.ptp(length) < 1.0, (path.name, side, limb)  # rigid to 1 mm
        lengths[side, limb] = length.mean()
    for limb in _LIMBS:  # Left and right agree (mocap skeletons differ < 10%).
      assert abs(lengths['l', limb] / lengths['r', limb] - 1) < 0.1, limb
    assert 350 < lengths['l', 'thigh'] < 500
    assert 350 < lengths['r', 'thigh'] < 500
    # The readme's number: left thigh offset (2.49, -6.85, 0) units = 411 mm.
    np.testing.assert_allclose(lengths['l', 'thigh'], 411.5, atol=1.0)
    # `Left*` is the subject's left: left = up x forward, in the rest pose
    # (toes point forward) and in most frames (the feet move in a hop).
    rest = dataclasses.replace(motion, frames=np.zeros_like(motion.frames[:1]))
    for p in (bvh.forward_kinematics(rest), pos):
      idx = {n: i for i, n in enumerate(motion.names)}
      up = p[:, idx['Head']] - p[:, idx['Hips']]
      forward = sum(p[:, idx[f'{s}Toe']] - p[:, idx[f'{s}Ankle']]
                    for s in ('Left', 'Right'))
      left = p[:, idx['LeftHip']] - p[:, idx['RightHip']]
      assert np.mean(np.einsum('fi,fi->f', left, np.cross(up, forward)) > 0
                     ) > 0.9
