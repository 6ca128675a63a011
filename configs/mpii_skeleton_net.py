r"""MPII SkeletonMapNet: 18 stacked hypotheses (l=5..10 x c=1.0/1.25/1.5).

  python run.py --mode=prepare --config=configs/mpii_skeleton_net.py --config.data.manual_dir=/data/mpii
  python run.py --mode=train --config=configs/mpii_skeleton_net.py --workdir=workdir/mpii
"""

from deepskeleton_jax.configs import mpii_common


def get_config(arg=None):
  del arg
  c = mpii_common.get_base()
  c.stages = 'skeleton_net'
  return c
