r"""Human3.6M full DeepSkeleton evaluation (Tables 1, 2, 5, 6): every trained stage.

  python run.py --mode=eval --config=configs/h36m_deepskeleton.py --workdir=workdir/h36m \
      --config.eval.detections=/path/to/data_2d_h36m_cpn_ft_h36m_dbb.npz

Matching uses 2D detections: a Stacked Hourglass checkpoint in the workdir
(train it with configs/mpii_hourglass.py and the same --workdir), or
VideoPose3D's detection file (data_2d_h36m_cpn_ft_h36m_dbb.npz and the other
variants, joined by subject, action, camera and frame; docs/evaluation.md), or
'ground_truth' for an upper bound on matching.
"""

from deepskeleton_jax.configs import h36m_common


def get_config(arg=None):
  del arg
  c = h36m_common.get_base()
  c.stages = 'skeleton_net,regressor,direct_rgb,ensemble'
  c.eval.detections = 'hourglass'
  return c
