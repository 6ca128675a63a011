r"""Human3.6M PoseRegressors, one per hypothesis, on skeleton maps.

  # trained on maps rendered from the labels (the GT-Ske setting; default):
  python run.py --mode=train --config=configs/h36m_regressor.py:gt --workdir=workdir/h36m
  # trained on the SkeletonMapNet's predicted maps (needs its checkpoint):
  python run.py --mode=train --config=configs/h36m_regressor.py:predicted --workdir=workdir/h36m

Paper: base learning rate 0.01, mini-batch 32, SGD momentum 0.9, weight decay
2e-4, decay x0.1 on plateau.
"""

from deepskeleton_jax.configs import h36m_common


def get_config(arg=None):
  c = h36m_common.get_base()
  c.stages = 'regressor'
  c.regressor.input = arg or 'gt'
  return c
