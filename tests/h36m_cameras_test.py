"""Tests of deepskeleton_jax.h36m_cameras (published Human3.6M cameras)."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from deepskeleton_jax.data import registry

h36m_cameras = registry.load_module('human36m', 'h36m_cameras')


@pytest.mark.parametrize('subject', h36m_cameras.SUBJECTS)
def test_cameras_look_at_the_capture_area_upright(subject):
  centres = []
  for cam_id in h36m_cameras.CAMERA_IDS:
    cam = h36m_cameras.get_camera(subject, cam_id)
    q = np.asarray(h36m_cameras.EXTRINSICS[subject][
        h36m_cameras.CAMERA_IDS.index(cam_id)][0])
    np.testing.assert_allclose(np.linalg.norm(q), 1.0, atol=1e-6)
    # Independent conversion: scipy takes (x, y, z, w).
    r_c2w = Rotation.from_quat(np.roll(q, -1)).as_matrix()
    np.testing.assert_allclose(cam.rotation, r_c2w.T, atol=1e-6)
    np.testing.assert_allclose(cam.translation, -cam.rotation @ cam.center_world,
                               atol=1e-6)
    # A person standing at the world origin (z up, mm): feet and head are in
    # front of the camera, inside the frame, head above feet.
    person = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1800.0]])
    cam_pts = cam.world_to_camera(person)
    assert np.all((cam_pts[:, 2] > 3500) & (cam_pts[:, 2] < 6500))
    uv = cam.project(cam_pts)
    assert np.all((uv >= 0) & (uv <= [cam.width, cam.height]))
    assert uv[1, 1] < uv[0, 1] - 300
    centres.append(cam.center_world)
  # The four cameras stand around the capture area at 1.4-1.7 m height.
  centres = np.array(centres)
  assert np.all((centres[:, 2] > 1400) & (centres[:, 2] < 1700))
  assert np.all(np.linalg.norm(centres[:, :2], axis=1) > 4000)


def test_intrinsics_and_bad_ids():
  cam = h36m_cameras.get_camera('S9', '55011271')
  np.testing.assert_allclose(cam.intrinsics, [1149.6756591796875,
                                              1147.5916748046875,
                                              508.8486328125, 508.0649108886719])
  assert (cam.width, cam.height) == (1000, 1000)
  with pytest.raises(ValueError, match='subject'):
    h36m_cameras.get_camera('S2', '55011271')
  with pytest.raises(ValueError, match='camera_id'):
    h36m_cameras.get_camera('S9', '123')
