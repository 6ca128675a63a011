r"""Human3.6M SkeletonMapNet: 11 stacked hypotheses (c=1.0, l=5..15), one jitted step.

  python run.py --mode=train --config=configs/h36m_skeleton_net.py \
      --workdir=workdir/h36m --config.data.manual_dir=/data/human36m

(prepare first: python run.py --mode=prepare --config=configs/h36m_skeleton_net.py
 --config.data.manual_dir=/data/human36m). Paper: base learning rate 1e-5
(Caffe sum loss, see h36m_common), mini-batch 12, decay x0.1 on plateau.
Pass an ImageNet ResNet-50 you have with --config.skeleton_net.model.pretrained=PATH.
"""

from deepskeleton_jax.configs import h36m_common


def get_config(arg=None):
  del arg
  c = h36m_common.get_base()
  c.stages = 'skeleton_net'
  return c
