"""Procedural people, poses and cameras for the synthetic dataset.

A person is a set of anthropometric proportions (segment lengths and limb
radii as fractions of a sampled body height, each varied per person); a pose
is a set of joint angles drawn from a named pose family ('Walk', 'Sit', ...)
and clipped to joint-angle limits; forward kinematics over the kinematic tree
turns both into the 16 joints of `deepskeleton_jax.skeleton` plus the extra
points the renderer needs (hands, toes, head centre). A camera is a viewpoint
(yaw around the person, pitch, roll, distance) whose focal length and
principal point are chosen so that the person's box fills a square crop.

Body frame: x = the person's left, y = up, z = the direction the person faces
(right-handed), millimetres, origin at the pelvis. Camera frame as in
docs/DESIGN.md: x right, y down, z forward.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from deepskeleton_jax.geometry import skeleton

J = skeleton.JOINT_INDEX

POSE_FAMILIES: tuple[str, ...] = ('Stand', 'Walk', 'Sit', 'Squat', 'Reach',
                                  'Wave', 'Bend', 'Kick')

# Joint-angle limits in degrees (every sampled pose is clipped to these).
ANGLE_LIMITS: dict[str, tuple[float, float]] = {
    'pelvis_tilt': (-10.0, 20.0),
    'spine_flex': (-25.0, 90.0), 'spine_lat': (-30.0, 30.0),
    'spine_twist': (-35.0, 35.0),
    'neck_flex': (-40.0, 60.0), 'neck_lat': (-30.0, 30.0),
    'neck_twist': (-60.0, 60.0),
    'hip_flex': (-30.0, 130.0), 'hip_abd': (-10.0, 60.0),
    'hip_rot': (-35.0, 35.0), 'knee': (0.0, 150.0),
    'sh_flex': (-60.0, 180.0), 'sh_abd': (8.0, 170.0), 'sh_rot': (-60.0, 90.0),
    'elbow': (0.0, 150.0),
}
_SIDED = ('hip_flex', 'hip_abd', 'hip_rot', 'knee', 'sh_flex', 'sh_abd',
          'sh_rot', 'elbow')

# Mean segment lengths as fractions of body height (after Drillis & Contini's
# segment proportions, adapted to the 16-joint skeleton's joint centres).
_LENGTHS = {
    'shin': 0.246, 'thigh': 0.245, 'hip_half': 0.075, 'spine': 0.29,
    'neck': 0.06, 'head': 0.12, 'shoulder_half': 0.105, 'shoulder_drop': 0.02,
    'upper_arm': 0.172, 'forearm': 0.15, 'hand': 0.045, 'foot': 0.11,
    'ankle_height': 0.035,
}
# Limb radii as fractions of body height (scaled by a per-person build).
_RADII = {
    'shin': 0.032, 'thigh': 0.044, 'upper_arm': 0.028, 'forearm': 0.023,
    'torso': 0.07, 'flank': 0.06, 'pelvis': 0.065, 'clavicle': 0.036,
    'neck': 0.03, 'head': 0.057, 'hand': 0.024, 'foot': 0.024,
}
HEIGHT_RANGE_MM = (1450.0, 1950.0)
PROPORTION_RANGE = (0.9, 1.1)
BUILD_RANGE = (0.85, 1.25)


@dataclasses.dataclass(frozen=True)
class Person:
  """One person's body: segment lengths and limb radii in mm."""
  height: float
  lengths: dict[str, float]
  radii: dict[str, float]


def sample_person(rng: np.random.Generator) -> Person:
  """Samples a body height, per-segment proportions and a build.

  Args:
    rng: numpy random generator.

  Returns:
    A `Person` whose segment lengths are height x proportion x a per-segment
    factor in `PROPORTION_RANGE` (left and right sides equal).
  """
  height = _clip(rng.normal(1700.0, 90.0), *HEIGHT_RANGE_MM)
  lengths = {
      k: height * v * _clip(1.0 + 0.035 * rng.normal(), *PROPORTION_RANGE)
      for k, v in _LENGTHS.items()}
  build = float(rng.uniform(*BUILD_RANGE))
  radii = {k: height * v * build for k, v in _RADII.items()}
  radii['head'] = min(radii['head'] / build, 0.5 * lengths['head'])
  return Person(height=height, lengths=lengths, radii=radii)


def _clip(value: float, lo: float, hi: float) -> float:
  """float(np.clip(value, lo, hi)) for a scalar, without numpy's call overhead."""
  return float(min(max(value, lo), hi))


def _u(rng, lo, hi):
  return float(rng.uniform(lo, hi))


def sample_angles(rng: np.random.Generator, family: str) -> dict[str, float]:
  """Samples joint angles (degrees) for a pose family, clipped to the limits.

  Sided angles are keyed 'l_<name>' and 'r_<name>'; abduction and rotation
  are positive outwards on both sides.

  Args:
    rng: numpy random generator.
    family: one of `POSE_FAMILIES`.

  Returns:
    Dict of angle name -> degrees.
  """
  if family not in POSE_FAMILIES:
    raise ValueError(f'family must be one of {POSE_FAMILIES}, got {family!r}')
  a = _neutral_angles(rng)
  # The active side (which arm reaches, which leg kicks).
  m, o = ('l', 'r') if rng.random() < 0.5 else ('r', 'l')
  _family_angles(rng, a, family, m, o)
  out = {}
  for name, value in a.items():
    base = name[2:] if name[:2] in ('l_', 'r_') and name[2:] in _SIDED else name
    lo, hi = ANGLE_LIMITS[base]
    out[name] = _clip(value + rng.normal(0.0, 4.0), lo, hi)
  return out


def _neutral_angles(rng: np.random.Generator) -> dict[str, float]:
  """A relaxed standing pose with small random variations (degrees)."""
  a = {'pelvis_tilt': _u(rng, -3, 8), 'spine_flex': _u(rng, -5, 12),
       'spine_lat': rng.normal(0, 5), 'spine_twist': rng.normal(0, 8),
       'neck_flex': _u(rng, -15, 25), 'neck_lat': rng.normal(0, 8),
       'neck_twist': rng.normal(0, 20)}
  for s in 'lr':
    a.update({f'{s}_hip_flex': _u(rng, -5, 10), f'{s}_hip_abd': _u(rng, 0, 12),
              f'{s}_hip_rot': rng.normal(0, 8), f'{s}_knee': _u(rng, 0, 12),
              f'{s}_sh_flex': _u(rng, -15, 25), f'{s}_sh_abd': _u(rng, 8, 35),
              f'{s}_sh_rot': rng.normal(0, 15), f'{s}_elbow': _u(rng, 0, 40)})
  return a


def _family_angles(rng: np.random.Generator, a: dict[str, float], family: str,
                   m: str, o: str) -> None:
  """Overwrites the angles of `a` that pose family `family` sets.

  Args:
    rng: numpy random generator.
    a: angles (degrees) to update in place.
    family: one of `POSE_FAMILIES`.
    m, o: the active side ('l' or 'r') and the other side.
  """
  if family == 'Walk':
    phase, amp = _u(rng, 0, 2 * np.pi), _u(rng, 15, 35)
    for s, sign in (('l', 1.0), ('r', -1.0)):
      swing = sign * np.sin(phase)
      a[f'{s}_hip_flex'] = amp * swing
      a[f'{s}_knee'] = 5 + 55 * max(0.0, np.sin(phase * sign + 1.2)) ** 2
      a[f'{s}_sh_flex'] = -0.8 * amp * swing
      a[f'{s}_elbow'] = _u(rng, 10, 45)
      a[f'{s}_sh_abd'] = _u(rng, 8, 20)
  elif family == 'Sit':
    a['spine_flex'] = _u(rng, -10, 25)
    for s in 'lr':
      a[f'{s}_hip_flex'] = _u(rng, 70, 105)
      a[f'{s}_knee'] = _u(rng, 70, 115)
      a[f'{s}_hip_abd'] = _u(rng, 0, 25)
      a[f'{s}_sh_flex'] = _u(rng, 0, 50)
      a[f'{s}_elbow'] = _u(rng, 30, 110)
  elif family == 'Squat':
    a['spine_flex'] = _u(rng, 20, 55)
    for s in 'lr':
      a[f'{s}_hip_flex'] = _u(rng, 90, 125)
      a[f'{s}_knee'] = _u(rng, 100, 145)
      a[f'{s}_hip_abd'] = _u(rng, 10, 35)
      a[f'{s}_sh_flex'] = _u(rng, 30, 100)
      a[f'{s}_elbow'] = _u(rng, 0, 70)
  elif family == 'Reach':
    a['spine_flex'] = _u(rng, -10, 30)
    a['spine_twist'] = _u(rng, -30, 30)
    a[f'{m}_hip_flex'] = _u(rng, -10, 30)
    for s in ((m, o) if rng.random() < 0.4 else (m,)):
      a[f'{s}_sh_flex'] = _u(rng, 60, 175)
      a[f'{s}_sh_abd'] = _u(rng, 8, 60)
      a[f'{s}_elbow'] = _u(rng, 0, 30)
  elif family == 'Wave':
    a[f'{m}_sh_abd'] = _u(rng, 70, 150)
    a[f'{m}_sh_flex'] = _u(rng, 0, 60)
    a[f'{m}_sh_rot'] = _u(rng, 40, 90)
    a[f'{m}_elbow'] = _u(rng, 40, 120)
  elif family == 'Bend':
    a['spine_flex'] = _u(rng, 40, 90)
    a['neck_flex'] = _u(rng, -30, 20)
    for s in 'lr':
      a[f'{s}_hip_flex'] = _u(rng, 0, 30)
      a[f'{s}_sh_flex'] = a['spine_flex'] + _u(rng, -20, 30)
      a[f'{s}_elbow'] = _u(rng, 0, 40)
  elif family == 'Kick':
    a['spine_flex'] = _u(rng, -15, 10)
    a[f'{m}_hip_flex'] = _u(rng, 40, 100)
    a[f'{m}_knee'] = _u(rng, 0, 45)
    a[f'{o}_knee'] = _u(rng, 0, 20)
    for s in 'lr':
      a[f'{s}_sh_abd'] = _u(rng, 20, 75)


def _rx(deg):
  c, s = np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))
  return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _ry(deg):
  c, s = np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))
  return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rz(deg):
  c, s = np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))
  return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def forward_kinematics(person: Person, angles: dict[str, float]
                       ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """Joint positions of a posed person in the body frame.

  Args:
    person: the body.
    angles: joint angles from `sample_angles`.

  Returns:
    (joints [16, 3] mm in skeleton order, extras) where extras holds the
    points the renderer needs: 'l_hand', 'r_hand', 'l_toe', 'r_toe',
    'head_center', 'head_forward' (unit vector), 'l_flank_lo', 'l_flank_hi',
    'r_flank_lo', 'r_flank_hi'.
  """
  ln = person.lengths
  down = np.array([0.0, -1.0, 0.0])
  up = -down
  joints = np.zeros((skeleton.NUM_JOINTS, 3))
  extras = {}
  r_pelvis = _rx(angles['pelvis_tilt'])
  r_torso = (r_pelvis @ _ry(angles['spine_twist']) @ _rx(angles['spine_flex'])
             @ _rz(angles['spine_lat']))
  pelvis = np.zeros(3)
  thorax = pelvis + r_torso @ (ln['spine'] * up)
  joints[J['pelvis']], joints[J['thorax']] = pelvis, thorax
  r_neck = (r_torso @ _ry(angles['neck_twist']) @ _rx(angles['neck_flex'])
            @ _rz(angles['neck_lat']))
  neck = thorax + r_neck @ np.array([0.0, ln['neck'], 0.1 * ln['neck']])
  head_top = neck + r_neck @ (ln['head'] * up)
  joints[J['upper_neck']], joints[J['head_top']] = neck, head_top
  extras['head_center'] = neck + 0.55 * (head_top - neck)
  extras['head_forward'] = r_neck @ np.array([0.0, 0.0, 1.0])
  for s, side in (('l', 1.0), ('r', -1.0)):
    hip = pelvis + r_pelvis @ np.array([side * ln['hip_half'], 0.0, 0.0])
    r_leg = (r_pelvis @ _rx(-angles[f'{s}_hip_flex'])
             @ _rz(side * angles[f'{s}_hip_abd'])
             @ _ry(side * angles[f'{s}_hip_rot']))
    knee = hip + r_leg @ (ln['thigh'] * down)
    r_shank = r_leg @ _rx(angles[f'{s}_knee'])
    ankle = knee + r_shank @ (ln['shin'] * down)
    extras[f'{s}_toe'] = ankle + r_shank @ np.array(
        [0.0, -ln['ankle_height'], ln['foot']])
    shoulder = thorax + r_torso @ np.array(
        [side * ln['shoulder_half'], -ln['shoulder_drop'], 0.0])
    r_arm = (r_torso @ _rx(-angles[f'{s}_sh_flex'])
             @ _rz(side * angles[f'{s}_sh_abd'])
             @ _ry(side * angles[f'{s}_sh_rot']))
    elbow = shoulder + r_arm @ (ln['upper_arm'] * down)
    r_fore = r_arm @ _rx(-angles[f'{s}_elbow'])
    wrist = elbow + r_fore @ (ln['forearm'] * down)
    extras[f'{s}_hand'] = wrist + r_fore @ (ln['hand'] * down)
    extras[f'{s}_flank_lo'] = pelvis + r_pelvis @ np.array(
        [0.6 * side * ln['hip_half'], 0.1 * ln['spine'], 0.0])
    extras[f'{s}_flank_hi'] = thorax + r_torso @ np.array(
        [0.55 * side * ln['shoulder_half'], -0.2 * ln['spine'], 0.0])
    prefix = 'l_' if s == 'l' else 'r_'
    for joint, p in (('hip', hip), ('knee', knee), ('ankle', ankle),
                     ('shoulder', shoulder), ('elbow', elbow), ('wrist', wrist)):
      joints[J[prefix + joint]] = p
  return joints, extras


# Viewpoint sectors named by where the camera stands relative to the person.
VIEW_NAMES: tuple[str, ...] = ('front', 'front_left', 'left', 'back_left',
                               'back', 'back_right', 'right', 'front_right')


@dataclasses.dataclass(frozen=True)
class Camera:
  """A body-frame-to-camera transform and pinhole intrinsics in crop pixels."""
  rotation: np.ndarray     # [3, 3] body -> camera
  translation: np.ndarray  # [3] mm
  intrinsics: np.ndarray   # [4] (f_x, f_y, c_x, c_y) crop pixels
  view: str                # one of VIEW_NAMES

  def to_camera(self, points: np.ndarray) -> np.ndarray:
    """Maps [..., 3] body-frame points to the camera frame."""
    return points @ self.rotation.T + self.translation


def sample_camera(rng: np.random.Generator, joints: np.ndarray,
                  margin_mm: float, crop_size: int, crop_scale: float,
                  yaw_deg: float = 180.0,
                  pitch_deg: tuple[float, float] = (-10.0, 35.0)) -> Camera:
  """Samples a viewpoint and fits the intrinsics so the person fills the box.

  The person box (crop scale 1.0) is the square around the projected joints'
  bounding box widened by `margin_mm` at the person's depth, with a mild
  random scale (0.92-1.1) and centre shift (+-4%) as a person detector
  would give; the stored crop of side `crop_size` covers `crop_scale` times
  that box, centred on it.

  Args:
    rng: numpy random generator.
    joints: [16, 3] body-frame joints.
    margin_mm: extra margin around the joints (body thickness).
    crop_size: stored crop side in pixels.
    crop_scale: stored crop side / person box side.
    yaw_deg: the camera's yaw around the person is uniform in
      [-yaw_deg, yaw_deg] (0: in front of the person); 180 (or more): all
      around.
    pitch_deg: (min, max) of the uniform camera pitch (positive: looking down).

  Returns:
    A `Camera`.
  """
  if yaw_deg >= 180.0:
    yaw = rng.uniform(0.0, 360.0)
  else:
    yaw = rng.uniform(-yaw_deg, yaw_deg) % 360.0
  pitch = rng.uniform(*pitch_deg)
  roll = rng.normal(0.0, 4.0)
  distance = rng.uniform(2500.0, 7000.0)
  # Yaw rotates the camera around the person: the camera at yaw 90 stands on
  # the person's left. Frontal camera: x_cam = x_body, y_cam = -y_body, z_cam = -z_body.
  rotation = (_rz(roll) @ _rx(pitch) @ np.diag([1.0, -1.0, -1.0]) @ _ry(-yaw))
  center = 0.5 * (joints.min(axis=0) + joints.max(axis=0))
  translation = np.array([0.0, 0.0, distance]) - rotation @ center
  cam = joints @ rotation.T + translation
  uv = cam[:, :2] / cam[:, 2:3]
  lo, hi = uv.min(axis=0), uv.max(axis=0)
  side = float(np.max(hi - lo)) + 2.0 * margin_mm / distance
  side *= rng.uniform(0.92, 1.1)
  box_center = 0.5 * (lo + hi) + rng.uniform(-0.04, 0.04, size=2) * side
  focal = (crop_size / crop_scale) / side
  principal = crop_size / 2.0 - focal * box_center
  sector = int(((yaw + 22.5) % 360.0) // 45.0)
  return Camera(rotation=rotation, translation=translation,
                intrinsics=np.array([focal, focal, *principal]),
                view=VIEW_NAMES[sector])


@dataclasses.dataclass(frozen=True)
class View:
  """A sampled pose seen by a sampled camera, with its labels.

  Attributes:
    family: the pose family (the example's `action`).
    joints_body: [16, 3] body-frame joints (mm).
    extras: the renderer's extra body-frame points (`forward_kinematics`).
    camera: the `Camera`.
    joints_3d: [16, 3] float32 camera-frame joints (mm).
    joints_2d: [16, 2] float32 projections in crop pixels.
    head_size: 0.6 x the diagonal of a square head box whose side is the
      projected neck-to-head-top length (MPII's convention), crop pixels.
  """
  family: str
  joints_body: np.ndarray
  extras: dict[str, np.ndarray]
  camera: Camera
  joints_3d: np.ndarray
  joints_2d: np.ndarray
  head_size: float


def sample_view(rng: np.random.Generator, person: Person, crop_size: int,
                crop_scale: float, yaw_deg: float = 180.0,
                pitch_deg: tuple[float, float] = (-10.0, 35.0)) -> View:
  """Samples a pose family, its joint angles and a camera; projects the joints.

  The draws (and so the dataset's examples) are those the renderer makes
  before it draws the scene; image-free examples (the 'poses' split) use
  this alone.

  Args:
    rng: numpy random generator (consumed).
    person: the body.
    crop_size: stored crop side in pixels.
    crop_scale: stored crop side / person box side.
    yaw_deg: camera yaw range (`sample_camera`).
    pitch_deg: camera pitch range (`sample_camera`).

  Returns:
    A `View`.
  """
  family = POSE_FAMILIES[rng.integers(len(POSE_FAMILIES))]
  joints, extras = forward_kinematics(person, sample_angles(rng, family))
  cam = sample_camera(rng, joints, margin_mm=1.2 * person.radii['head'],
                      crop_size=crop_size, crop_scale=crop_scale,
                      yaw_deg=yaw_deg, pitch_deg=pitch_deg)
  joints_cam = cam.to_camera(joints)
  fx, fy, cx, cy = cam.intrinsics
  joints_2d = joints_cam[:, :2] / joints_cam[:, 2:3] * [fx, fy] + [cx, cy]
  head_len = np.linalg.norm(joints[J['head_top']] - joints[J['upper_neck']])
  head_depth = 0.5 * (joints_cam[J['head_top'], 2] + joints_cam[J['upper_neck'], 2])
  head_size = 0.6 * np.sqrt(2.0) * fx * head_len / head_depth
  return View(family=family, joints_body=joints, extras=extras, camera=cam,
              joints_3d=joints_cam.astype(np.float32),
              joints_2d=joints_2d.astype(np.float32), head_size=float(head_size))
