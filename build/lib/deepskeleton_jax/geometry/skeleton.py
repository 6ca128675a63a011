"""The 16-joint skeleton used throughout DeepSkeleton-JAX.

Joints follow the MPII order with the thorax as root (the paper's choice), the
15 bones are the paper's body parts, and each bone has a distinct colour so a
skeleton-map pixel identifies its bone. Index maps convert the Human3.6M
32-joint order and the MPII annotation order to this skeleton.
"""

from __future__ import annotations

import numpy as np

JOINT_NAMES: tuple[str, ...] = (
    'r_ankle', 'r_knee', 'r_hip', 'l_hip', 'l_knee', 'l_ankle', 'pelvis',
    'thorax', 'upper_neck', 'head_top', 'r_wrist', 'r_elbow', 'r_shoulder',
    'l_shoulder', 'l_elbow', 'l_wrist')
NUM_JOINTS: int = len(JOINT_NAMES)
JOINT_INDEX: dict[str, int] = {name: i for i, name in enumerate(JOINT_NAMES)}

# The root joint: poses are made root-relative by subtracting the thorax.
ROOT: int = 7

# The 15 bones (parent-ish, child-ish) in the DESIGN order.
BONES: tuple[tuple[int, int], ...] = (
    (0, 1), (1, 2), (2, 6), (3, 6), (3, 4), (4, 5), (6, 7), (7, 8), (8, 9),
    (10, 11), (11, 12), (12, 7), (13, 7), (13, 14), (14, 15))
NUM_BONES: int = len(BONES)
BONE_NAMES: tuple[str, ...] = (
    'r_shin', 'r_thigh', 'r_hip', 'l_hip', 'l_thigh', 'l_shin', 'spine',
    'neck', 'head', 'r_forearm', 'r_upper_arm', 'r_clavicle', 'l_clavicle',
    'l_upper_arm', 'l_forearm')

# Distinct bone colours (RGB in [0, 1]); right side warm, left side cool,
# torso and head neutral. Pairwise Euclidean distance >= 0.5, none black.
BONE_COLORS: np.ndarray = np.array([
    [1.0, 0.0, 0.0],   # r_shin
    [1.0, 0.5, 0.0],   # r_thigh
    [1.0, 1.0, 0.0],   # r_hip
    [0.0, 1.0, 1.0],   # l_hip
    [0.0, 0.5, 1.0],   # l_thigh
    [0.0, 0.0, 1.0],   # l_shin
    [1.0, 1.0, 1.0],   # spine
    [0.5, 0.5, 0.5],   # neck
    [0.5, 1.0, 0.5],   # head
    [1.0, 0.0, 1.0],   # r_forearm
    [1.0, 0.5, 0.5],   # r_upper_arm
    [0.5, 0.0, 0.0],   # r_clavicle
    [0.0, 0.0, 0.5],   # l_clavicle
    [0.5, 0.0, 1.0],   # l_upper_arm
    [0.0, 1.0, 0.0],   # l_forearm
], dtype=np.float32)

# Left/right joint pairs swapped by a horizontal flip.
FLIP_PAIRS: tuple[tuple[int, int], ...] = ((0, 5), (1, 4), (2, 3), (10, 15),
                                           (11, 14), (12, 13))


def flip_permutation() -> np.ndarray:
  """Returns the joint permutation applied by a horizontal flip.

  Returns:
    int array (16,): `flipped[j] = original[perm[j]]`.
  """
  perm = np.arange(NUM_JOINTS)
  for a, b in FLIP_PAIRS:
    perm[a], perm[b] = b, a
  return perm


# For each of the 16 joints, its index in the 32-joint Human3.6M order
# (the paper's authors' 16-joint set; the spine joint is dropped).
H36M32_TO_SKELETON: np.ndarray = np.array(
    [3, 2, 1, 6, 7, 8, 0, 13, 14, 15, 27, 26, 25, 17, 18, 19], dtype=np.int32)

# MPII annotations already use this order (ids 0-15); the identity map is
# spelled out so dataset code states its conversion explicitly.
MPII_TO_SKELETON: np.ndarray = np.arange(NUM_JOINTS, dtype=np.int32)

# Joint groups of the MPII evaluation tables (left/right averaged).
MPII_JOINT_GROUPS: dict[str, tuple[int, ...]] = {
    'Head': (9,),
    'Sho.': (12, 13),
    'Elb.': (11, 14),
    'Wri.': (10, 15),
    'Hip': (2, 3),
    'Knee': (1, 4),
    'Ank.': (0, 5),
}

# Bones whose length is anatomically fixed, as (left, right) pairs, for checks.
LIMB_PAIRS: dict[str, tuple[int, int]] = {
    'thigh': (4, 1),
    'shin': (5, 0),
    'upper_arm': (13, 10),
    'forearm': (14, 9),
}
