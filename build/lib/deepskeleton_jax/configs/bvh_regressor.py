r"""Regressor trained from skeleton maps rendered from BVH motion capture alone (no images).

  python run.py --mode=prepare --config=configs/bvh_regressor.py --config.data.manual_dir=/data/cmu_bvh
  python run.py --mode=train --config=configs/bvh_regressor.py --workdir=workdir/bvh
  python run.py --mode=eval --config=configs/bvh_regressor.py --workdir=workdir/bvh

The paper's central claim with unlimited mocap: 3D from maps rendered on the
device from virtual cameras around CMU poses; evaluated on held-out clips with
GT-rendered maps (the GT Ske rows of the report).
"""

from deepskeleton_jax.experiment import config_lib


def get_config(arg=None):
  del arg
  c = config_lib.base_config()
  c.data.name = 'bvh_mocap'
  c.data.builder_kwargs = {}
  c.hypotheses.crop_scales = (1.0,)
  c.hypotheses.stick_widths = (10.0,)
  c.stages = 'regressor'
  c.eval.detections = 'ground_truth'
  return c
