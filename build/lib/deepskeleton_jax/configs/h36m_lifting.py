r"""2D->3D lifting MLP on Human3.6M (Martinez et al. style): pseudo-3D labels for MPII.

  python run.py --mode=train --config=configs/h36m_lifting.py --workdir=workdir/h36m
"""

from deepskeleton_jax.configs import h36m_common


def get_config(arg=None):
  del arg
  c = h36m_common.get_base()
  c.stages = 'lifting'
  return c
