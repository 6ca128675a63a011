"""Renders synthetic person crops: shaded capsule bodies over cluttered scenes.

The body is a set of capsules (limbs, torso pieces, neck, hands, feet) and a
sphere (head) in the body frame of `pose_sampler`. Each is projected with the
pinhole camera into a tapered 2D capsule; for every pixel of its bounding box
the renderer computes the front-surface depth and normal of the capsule and
writes the pixel where it is nearer than the depth buffer, so self-occlusion
follows depth. Shading is Lambertian under a random light; clothing gives
each body part a per-person colour or texture (stripes, checks), the head
shows hair on top and at the back (so front and back views differ), and the
scene behind the person is random clutter (shapes, limb-like sticks, blur).

All of it is vectorised NumPy over each primitive's bounding box, about a few
milliseconds per 144 px crop on one core.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from . import pose_sampler
from deepskeleton_jax.geometry import skeleton

J = skeleton.JOINT_INDEX

_SKIN_TONES = np.array([[255, 224, 196], [241, 194, 160], [224, 172, 130],
                        [198, 134, 96], [160, 104, 70], [110, 70, 45],
                        [80, 52, 35]], np.float32)
_HAIR_COLORS = np.array([[20, 15, 10], [60, 40, 25], [110, 75, 40],
                         [200, 170, 110], [140, 60, 30], [170, 170, 170]],
                        np.float32)


@dataclasses.dataclass(frozen=True)
class Appearance:
  """A person's clothing and colouring (RGB in [0, 255])."""
  skin: np.ndarray
  hair: np.ndarray
  shirt: tuple[np.ndarray, np.ndarray]
  shirt_pattern: str   # 'plain', 'stripes', 'vstripes' or 'checks'
  shirt_period: float  # mm
  pants: np.ndarray
  shoes: np.ndarray
  long_sleeves: bool
  long_pants: bool


def sample_appearance(rng: np.random.Generator) -> Appearance:
  """Samples skin, hair and clothing colours and patterns."""
  def colour():
    return rng.uniform(10, 245, size=3).astype(np.float32)
  return Appearance(
      skin=_SKIN_TONES[rng.integers(len(_SKIN_TONES))] * rng.uniform(0.9, 1.05),
      hair=_HAIR_COLORS[rng.integers(len(_HAIR_COLORS))],
      shirt=(colour(), colour()),
      shirt_pattern=str(rng.choice(['plain', 'stripes', 'vstripes', 'checks'],
                                   p=[0.4, 0.25, 0.15, 0.2])),
      shirt_period=float(rng.uniform(25.0, 80.0)),
      pants=colour(), shoes=colour() * 0.5,
      long_sleeves=bool(rng.random() < 0.6),
      long_pants=bool(rng.random() < 0.7))


def random_background(rng: np.random.Generator, size: int) -> np.ndarray:
  """A cluttered random scene: wall/floor gradients, shapes, sticks, blur.

  Args:
    rng: numpy random generator.
    size: image side.

  Returns:
    [size, size, 3] float32 RGB in [0, 255].
  """
  wall, floor = rng.uniform(0, 255, size=(2, 3))
  wall, floor = (0.5 * (c + c.mean()) for c in (wall, floor))
  horizon = rng.uniform(0.3, 0.9) * size
  rows = np.arange(size, dtype=np.float32)[:, None]
  grad = rng.uniform(-0.4, 0.4)
  base = np.where(rows < horizon, wall * (1 + grad * rows / size),
                  floor * (1 - grad * (rows - horizon) / size))
  img = np.ascontiguousarray(np.broadcast_to(
      np.clip(base, 0, 255)[:, None, :], (size, size, 3))).astype(np.uint8)
  saturation = rng.uniform(0.2, 1.0)
  for _ in range(int(rng.integers(8, 28))):
    kind = rng.integers(5)
    col = rng.uniform(0, 255, size=3)
    col = tuple(float(c) for c in col.mean() + saturation * (col - col.mean()))
    pts = rng.uniform(-0.2, 1.2, size=(2, 2)) * size
    p0, p1 = tuple(int(v) for v in pts[0]), tuple(int(v) for v in pts[1])
    if kind == 0:
      cv2.rectangle(img, p0, p1, col, -1)
    elif kind == 1:
      cv2.circle(img, p0, int(rng.uniform(0.03, 0.25) * size), col, -1,
                 cv2.LINE_AA)
    elif kind == 2:
      poly = (rng.uniform(-0.1, 1.1, size=(int(rng.integers(3, 7)), 2))
              * size).astype(np.int32)
      cv2.fillPoly(img, [poly], col, cv2.LINE_AA)
    else:  # Limb-like sticks, the hardest distractors.
      thick = max(1, int(rng.uniform(0.01, 0.08) * size))
      cv2.line(img, p0, p1, col, thick, cv2.LINE_AA)
  img = img.astype(np.float32)
  if rng.random() < 0.5:
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 2.0))
  return img


def body_primitives(person: pose_sampler.Person, joints: np.ndarray,
                    extras: dict[str, np.ndarray], appearance: Appearance
                    ) -> list[tuple[np.ndarray, np.ndarray, float, float, str]]:
  """The capsules of a posed body.

  Args:
    person: the body (limb radii).
    joints: [16, 3] body-frame joints.
    extras: extra points from `pose_sampler.forward_kinematics`.
    appearance: decides which parts are clothed.

  Returns:
    List of (start [3], end [3], start radius, end radius, material) in the
    body frame, mm; material in 'shirt', 'pants', 'skin', 'shoes', 'head'.
    A sphere has start == end.
  """
  r = person.radii
  sleeve = 'shirt' if appearance.long_sleeves else 'skin'
  leg = 'pants' if appearance.long_pants else 'skin'
  pelvis, thorax = joints[J['pelvis']], joints[J['thorax']]
  spine = thorax - pelvis
  prims = [
      (joints[J['l_hip']], joints[J['r_hip']], r['pelvis'], r['pelvis'], 'pants'),
      (pelvis + 0.3 * spine, thorax - 0.1 * spine, r['torso'], r['torso'], 'shirt'),
      (joints[J['upper_neck']], thorax, r['neck'], r['neck'], 'skin'),
      (extras['head_center'], extras['head_center'], r['head'], r['head'], 'head'),
  ]
  for s in 'lr':
    def jt(name, s=s):
      return joints[J[f'{s}_{name}']]
    prims += [
        (jt('hip'), jt('knee'), r['thigh'], 0.85 * r['thigh'], 'pants'),
        (jt('knee'), jt('ankle'), r['shin'], 0.8 * r['shin'], leg),
        (jt('ankle'), extras[f'{s}_toe'], r['foot'], r['foot'], 'shoes'),
        (extras[f'{s}_flank_lo'], extras[f'{s}_flank_hi'], r['flank'],
         r['flank'], 'shirt'),
        (thorax, jt('shoulder'), r['clavicle'], r['clavicle'], 'shirt'),
        (jt('shoulder'), jt('elbow'), r['upper_arm'], 0.9 * r['upper_arm'],
         'shirt'),
        (jt('elbow'), jt('wrist'), r['forearm'], 0.85 * r['forearm'], sleeve),
        (jt('wrist'), extras[f'{s}_hand'], 0.8 * r['hand'], r['hand'], 'skin'),
    ]
  return prims


def _albedo(material, appearance, t, v, length, normal, head_axes):
  """Per-pixel base colour [n, 3] of a primitive's covered pixels."""
  n = t.shape[0]
  if material == 'shirt':
    u = np.floor(t * length / appearance.shirt_period)
    w = np.floor((v + 1.0) * 2.0)
    pattern = appearance.shirt_pattern
    if pattern == 'plain':
      second = np.zeros(n, bool)
    elif pattern == 'stripes':
      second = u % 2 == 1
    elif pattern == 'vstripes':
      second = w % 2 == 1
    else:
      second = (u + w) % 2 == 1
    return np.where(second[:, None], appearance.shirt[1], appearance.shirt[0])
  if material == 'head':
    up, forward = head_axes
    hair = (normal @ up > 0.35) | (normal @ forward < -0.05)
    return np.where(hair[:, None], appearance.hair, appearance.skin)
  colour = {'pants': appearance.pants, 'skin': appearance.skin,
            'shoes': appearance.shoes}[material]
  return np.broadcast_to(colour, (n, 3))


def render_person(image: np.ndarray, depth: np.ndarray, camera: pose_sampler.Camera,
                  primitives, appearance: Appearance, light: np.ndarray,
                  ambient: np.ndarray, diffuse: np.ndarray,
                  head_axes: tuple[np.ndarray, np.ndarray]
                  ) -> None:
  """Draws body primitives into `image` and `depth` in place (depth test).

  Args:
    image: [S, S, 3] float32 RGB, modified in place.
    depth: [S, S] float32 depth buffer (inf where empty), modified in place.
    camera: body-to-camera transform and intrinsics (crop pixels).
    primitives: from `body_primitives`.
    appearance: clothing colours.
    light: [3] unit vector towards the light, camera frame.
    ambient: [3] ambient light intensity per colour channel.
    diffuse: [3] directional light intensity per colour channel.
    head_axes: (up, forward) unit vectors of the head in the camera frame.
  """
  size = image.shape[0]
  fx, fy, cx, cy = camera.intrinsics
  for start, end, ra_mm, rb_mm, material in primitives:
    a3, b3 = camera.to_camera(np.stack([start, end]))
    za, zb = a3[2], b3[2]
    ax, ay = fx * a3[0] / za + cx, fy * a3[1] / za + cy
    bx, by = fx * b3[0] / zb + cx, fy * b3[1] / zb + cy
    ra, rb = fx * ra_mm / za, fx * rb_mm / zb
    x0 = max(int(np.floor(min(ax - ra, bx - rb))), 0)
    x1 = min(int(np.ceil(max(ax + ra, bx + rb))), size)
    y0 = max(int(np.floor(min(ay - ra, by - rb))), 0)
    y1 = min(int(np.ceil(max(ay + ra, by + rb))), size)
    if x0 >= x1 or y0 >= y1:
      continue
    px = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5
    py = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5
    abx, aby = bx - ax, by - ay
    len2 = abx * abx + aby * aby
    if len2 > 1e-9:
      t = np.clip(((px - ax) * abx + (py - ay) * aby) / len2, 0.0, 1.0)
    else:
      t = np.zeros((y1 - y0, x1 - x0), np.float32)
    ox = px - (ax + t * abx)
    oy = py - (ay + t * aby)
    radius = ra + t * (rb - ra)
    q2 = (ox * ox + oy * oy) / (radius * radius)
    nz = np.sqrt(np.maximum(1.0 - q2, 0.0))
    z = za + t * (zb - za) - (ra_mm + t * (rb_mm - ra_mm)) * nz
    region = depth[y0:y1, x0:x1]
    mask = (q2 < 1.0) & (z < region)
    if not mask.any():
      continue
    t_m, nz_m = t[mask], nz[mask]
    r_m = radius[mask]
    normal = np.stack([ox[mask] / r_m, oy[mask] / r_m, -nz_m], axis=-1)
    inv_len = 1.0 / np.sqrt(len2) if len2 > 1e-9 else 0.0
    v = (abx * oy[mask] - aby * ox[mask]) * inv_len / r_m
    length = float(np.linalg.norm(end - start))
    albedo = _albedo(material, appearance, t_m, v, length, normal, head_axes)
    lambert = np.maximum(normal @ light, 0.0)[:, None]
    region[mask] = z[mask]
    image[y0:y1, x0:x1][mask] = albedo * (ambient + lambert * diffuse)


@dataclasses.dataclass(frozen=True)
class Sample:
  """One rendered synthetic example (crop pixels, camera frame)."""
  image: np.ndarray | None  # [S, S, 3] uint8 (None: an image-free example)
  joints_3d: np.ndarray   # [16, 3] mm, camera frame
  joints_2d: np.ndarray   # [16, 2] crop pixels
  intrinsics: np.ndarray  # [4] crop pixels
  head_size: float        # crop pixels
  action: str
  view: str


def render_sample(rng: np.random.Generator, person: pose_sampler.Person,
                  appearance: Appearance, crop_size: int, crop_scale: float,
                  draw_person: bool = True, camera_yaw_deg: float = 180.0,
                  camera_pitch_deg: tuple[float, float] = (-10.0, 35.0)) -> Sample:
  """Samples a pose, a camera and a scene and renders one crop.

  The random draws do not depend on `draw_person`, so the same rng state
  with `draw_person=False` gives exactly the scene behind the person.

  Args:
    rng: numpy random generator (consumed).
    person: the body.
    appearance: its clothing.
    crop_size: output side in pixels.
    crop_scale: crop side / person box side.
    draw_person: False renders the background only.
    camera_yaw_deg: yaw range of the camera (`pose_sampler.sample_camera`).
    camera_pitch_deg: pitch range of the camera.

  Returns:
    A `Sample`. The head size is 0.6 x the diagonal of a square head box
    whose side is the projected neck-to-head-top length (MPII's convention).
  """
  view = pose_sampler.sample_view(rng, person, crop_size, crop_scale,
                                  camera_yaw_deg, camera_pitch_deg)
  joints, extras, cam = view.joints_body, view.extras, view.camera
  light = np.array([rng.uniform(-1, 1), rng.uniform(-1.2, 0.2), -rng.uniform(0.6, 1.5)])
  light /= np.linalg.norm(light)
  tint = rng.normal(1.0, 0.05, size=3)
  ambient = rng.uniform(0.3, 0.55) * tint
  diffuse = tint - ambient
  image = random_background(rng, crop_size)
  blur = rng.uniform(0.3, 0.8)
  noise = rng.standard_normal(image.shape, dtype=np.float32)
  noise *= rng.uniform(1.0, 5.0)

  if draw_person:
    depth = np.full((crop_size, crop_size), np.inf, np.float32)
    head_axes = (cam.rotation @ (joints[J['head_top']] - joints[J['upper_neck']]),
                 cam.rotation @ extras['head_forward'])
    head_axes = tuple(h / np.linalg.norm(h) for h in head_axes)
    prims = body_primitives(person, joints, extras, appearance)
    render_person(image, depth, cam, prims, appearance, light, ambient,
                  diffuse, head_axes)
  image = cv2.GaussianBlur(image, (0, 0), blur) + noise
  return sample_of_view(view, np.clip(image, 0, 255).astype(np.uint8))


def sample_of_view(view: pose_sampler.View, image: np.ndarray | None) -> Sample:
  """The `Sample` of a sampled view and its crop (None: an image-free example)."""
  return Sample(image=image, joints_3d=view.joints_3d, joints_2d=view.joints_2d,
                intrinsics=view.camera.intrinsics.astype(np.float32),
                head_size=view.head_size, action=view.family, view=view.camera.view)
