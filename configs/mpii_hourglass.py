r"""Stacked Hourglass (2 stacks, 256 px) on MPII: the 2D detector used for matching.

  python run.py --mode=train --config=configs/mpii_hourglass.py --workdir=workdir/mpii
  python run.py --mode=eval --config=configs/mpii_hourglass.py --workdir=workdir/mpii

(Newell et al. used 8 stacks: --config.hourglass.model.num_stacks=8.)
"""

from deepskeleton_jax.configs import mpii_common


def get_config(arg=None):
  del arg
  c = mpii_common.get_base()
  c.stages = 'hourglass'
  c.data.input_size = 256
  c.hourglass.input_size = 256
  c.hypotheses.crop_scales = (1.0,)
  c.hypotheses.stick_widths = (10.0,)
  c.hypotheses.base = 0
  return c
