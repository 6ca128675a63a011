"""The skeleton's contract (docs/DESIGN.md): joints, bones, colours, flips, index maps."""

import numpy as np

from deepskeleton_jax.geometry import skeleton


def test_bones_form_a_tree_over_all_joints():
  assert len(skeleton.JOINT_NAMES) == 16 and skeleton.ROOT == 7
  assert skeleton.JOINT_NAMES[skeleton.ROOT] == 'thorax'
  assert len(skeleton.BONES) == 15
  # 15 edges over 16 nodes, connected from the root = a spanning tree.
  reached, frontier = {skeleton.ROOT}, [skeleton.ROOT]
  while frontier:
    j = frontier.pop()
    for a, b in skeleton.BONES:
      for u, v in ((a, b), (b, a)):
        if u == j and v not in reached:
          reached.add(v)
          frontier.append(v)
  assert reached == set(range(16))


def test_bone_colours_identify_their_bone():
  colors = skeleton.BONE_COLORS
  assert colors.shape == (15, 3) and colors.dtype == np.float32
  assert colors.min() >= 0 and colors.max() <= 1
  assert np.all(colors.sum(-1) > 0)  # none black
  d = np.linalg.norm(colors[:, None] - colors[None], axis=-1)
  np.fill_diagonal(d, np.inf)
  assert d.min() >= 0.4


def test_flip_swaps_left_and_right_names():
  perm = skeleton.flip_permutation()
  np.testing.assert_array_equal(perm[perm], np.arange(16))  # an involution
  for i, j in enumerate(perm):
    a, b = skeleton.JOINT_NAMES[i], skeleton.JOINT_NAMES[j]
    if a.startswith(('l_', 'r_')):
      assert a[2:] == b[2:] and a[0] != b[0]
    else:
      assert i == j


def test_h36m_index_map_is_the_design_one():
  design = {'pelvis': 0, 'r_hip': 1, 'r_knee': 2, 'r_ankle': 3, 'l_hip': 6, 'l_knee': 7,
            'l_ankle': 8, 'thorax': 13, 'upper_neck': 14, 'head_top': 15, 'l_shoulder': 17,
            'l_elbow': 18, 'l_wrist': 19, 'r_shoulder': 25, 'r_elbow': 26, 'r_wrist': 27}
  for name, h36m in design.items():
    assert skeleton.H36M32_TO_SKELETON[skeleton.JOINT_INDEX[name]] == h36m


def test_mpii_groups_pair_left_and_right():
  for group, joints in skeleton.MPII_JOINT_GROUPS.items():
    names = [skeleton.JOINT_NAMES[j] for j in joints]
    if len(joints) == 2:
      assert {n[:2] for n in names} == {'l_', 'r_'}, group
