"""Shared settings of the MPII experiments (imported by the mpii_*.py configs).

Hypotheses (Table 9): stick widths l = 5..10 x crop scales c = 1.0/1.25/1.5
(18 in all); base (w/o Mul-Hyp) = (1.0, 10); the Ensemble baseline is 18 runs of
the base regressor. MPII has no 3D labels: the
regressors need pseudo-3D labels (--config.data.builder_kwargs.pseudo_3d_file=FILE,
e.g. from the lifting stage); PCKh@0.5 on the 2958-person validation split.
"""

from deepskeleton_jax.configs import h36m_common
from deepskeleton_jax.experiment import config_lib

CROPS = (1.0, 1.25, 1.5)
WIDTHS = (5.0, 6.0, 7.0, 8.0, 9.0, 10.0)


def get_base():
  c = config_lib.base_config()
  c.data.name = 'mpii'
  c.data.builder_kwargs = {'crop_size': 256, 'pseudo_3d_file': ''}
  c.data.eval_split = 'validation'
  c.hypotheses.crop_scales = tuple(cs for cs in CROPS for _ in WIDTHS)
  c.hypotheses.stick_widths = tuple(w for _ in CROPS for w in WIDTHS)
  c.hypotheses.base = WIDTHS.index(10.0)
  # The paper's Caffe losses with its rates (the arithmetic: configs/h36m_common.py).
  h36m_common.set_paper_losses(c)
  c.ensemble.num_runs = 18  # Table 9: 18 runs of the base regressor
  for name in ('skeleton_net', 'regressor', 'direct_rgb', 'ensemble'):
    c[name].train.schedule = 'plateau'
    c[name].train.plateau_every = 2000
  return c
