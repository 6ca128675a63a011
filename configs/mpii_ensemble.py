r"""MPII Ensemble baseline (Table 9): 18 regressors of the base map (c=1.0, l=10).

  python run.py --mode=train --config=configs/mpii_ensemble.py --workdir=workdir/mpii \
      --config.data.builder_kwargs.pseudo_3d_file=/data/mpii_pseudo3d.npz

Each run has its own initialisation and its own data order (one stacked
stage, one jitted step); the evaluation (configs/mpii_deepskeleton.py, same
--workdir) scores the mean of the 18 poses as the Ensemble row.
"""

from deepskeleton_jax.configs import mpii_common


def get_config(arg=None):
  del arg
  c = mpii_common.get_base()
  c.stages = 'ensemble'
  return c
