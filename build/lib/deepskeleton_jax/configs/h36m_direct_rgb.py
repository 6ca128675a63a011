r"""Human3.6M Direct RGB baseline: the same ResNet-50 regressor on the RGB crop.

  python run.py --mode=train --config=configs/h36m_direct_rgb.py --workdir=workdir/h36m
"""

from deepskeleton_jax.configs import h36m_common


def get_config(arg=None):
  del arg
  c = h36m_common.get_base()
  c.stages = 'direct_rgb'
  return c
