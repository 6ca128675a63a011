r"""MPII regressors (18 hypotheses) trained on pseudo-3D labels.

  python run.py --mode=train --config=configs/mpii_regressor.py --workdir=workdir/mpii \
      --config.data.builder_kwargs.pseudo_3d_file=/data/mpii_pseudo3d.npz

The pseudo-3D file: per person a 16x3 pose in mm (see datasets/mpii); make it
with the lifting stage (configs/h36m_lifting.py) or bring your own.
"""

from deepskeleton_jax.configs import mpii_common


def get_config(arg=None):
  c = mpii_common.get_base()
  c.stages = 'regressor'
  c.regressor.input = arg or 'gt'
  return c
