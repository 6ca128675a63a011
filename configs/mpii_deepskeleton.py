r"""MPII full evaluation (Tables 8, 9): PCKh@0.5 per joint group on the 2958-person split.

  python run.py --mode=eval --config=configs/mpii_deepskeleton.py --workdir=workdir/mpii

Detections for matching: the hourglass checkpoint in the workdir, or e.g.
--config.eval.detections=../shared/data/mpii_eval/bearpaw-hg_s8_b1.mat.
"""

from deepskeleton_jax.configs import mpii_common


def get_config(arg=None):
  del arg
  c = mpii_common.get_base()
  c.stages = 'skeleton_net,regressor,direct_rgb,ensemble'
  return c
