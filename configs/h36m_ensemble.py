r"""Human3.6M Ensemble baseline (Table 6): 11 regressors of the base map (l=10).

  python run.py --mode=train --config=configs/h36m_ensemble.py --workdir=workdir/h36m

Each run has its own initialisation and its own data order (one stacked
stage, one jitted step).
"""

from deepskeleton_jax.configs import h36m_common


def get_config(arg=None):
  del arg
  c = h36m_common.get_base()
  c.stages = 'ensemble'
  c.ensemble.num_runs = 11
  return c
