"""Shared settings of the Human3.6M experiments (imported by the h36m_*.py configs).

Protocol 1 of the paper: train S1 S5 S6 S7 S8, test S9 S11 every 64th frame,
MPJPE after aligning the thorax. Hypotheses: c = 1.0 and l = 5..15 (11 in all;
no truncation indoors, so the crop scale stays 1.0); the base (w/o Mul-Hyp)
hypothesis is l = 10. All h36m_* configs must share one --workdir, since the
evaluation reads every stage's checkpoint from it.

Loss scales (docs/deviations.md, "Loss scales"; tests/loss_scales_test.py
measures them): every SGD stage trains the paper's Caffe loss with the paper's
rate and weight decay (the base config's defaults), so nothing is rescaled:

- SkeletonMapNet (`skeleton_net.loss='caffe'`): one SigmoidCrossEntropyLoss
  layer per supervision head (loss_weight 1), each the sum over its pixels
  and channels divided by the batch size B (Caffe's normalisation of that
  layer: `loss / num` before 2017, `normalization` defaulting to BATCH_SIZE
  after), summed over the 4 heads; rate 1e-5 (the paper's), weight decay
  2e-4, 1e-5 x 2e-4 = 2e-9 per step. The project's 'mean' loss would give
  each logit of a head with P_k pixels 1 / (4 heads x P_k x 6 channels) of
  that gradient: 1/75,264 at 56x56, 1/18,816 at 28x28, 1/4,704 at 14x14, so
  no single rate could match the paper with it.
- Regressors, Direct RGB, Ensemble (`loss='euclidean'`): Caffe's
  EuclideanLoss, sum over 16 joints x 3 coordinates of squared differences
  / 2B, on root-relative poses minus the training mean divided by the
  training pose std (a scalar; the paper does not state its target units, and
  in millimetres rate 1e-2 would diverge); rate 1e-2, weight decay 2e-4. The
  project's 'distance' loss (mean unsquared per-joint distance) has the
  gradient (p - t) / (16 B ||p - t||) per joint, 1 / (16 ||p - t||) of
  Caffe's: it changes with the error, so no constant rate is equivalent.
- Lifting (h36m_lifting.py) and the hourglass are not the paper's networks:
  Adam, whose updates do not depend on a loss's global scale.
"""

from deepskeleton_jax.experiment import config_lib

WIDTHS = tuple(float(w) for w in range(5, 16))
PAPER_SKELETON_NET_LR = 1e-5    # Section 5.1, for Caffe's summed loss
PAPER_REGRESSOR_LR = 1e-2       # Section 5.1, for Caffe's EuclideanLoss
PAPER_WEIGHT_DECAY = 2e-4


def get_base():
  """The Human3.6M base config: full-size ResNet-50 stages at 224 px."""
  c = config_lib.base_config()
  c.data.name = 'human36m'
  c.data.builder_kwargs = {'train_every': 5, 'test_every': 64, 'crop_size': 256}
  c.hypotheses.crop_scales = (1.0,)
  c.hypotheses.stick_widths = WIDTHS
  c.hypotheses.base = WIDTHS.index(10.0)
  set_paper_losses(c)
  for name in ('skeleton_net', 'regressor', 'direct_rgb', 'ensemble'):
    c[name].train.schedule = 'plateau'
    c[name].train.plateau_every = 5000
  c.parallel.hyp_axis = 1
  return c


def set_paper_losses(c):
  """The paper's Caffe losses, rates and weight decay on every SGD stage (see above)."""
  c.skeleton_net.loss = 'caffe'
  c.skeleton_net.train.update(optimizer='sgd', learning_rate=PAPER_SKELETON_NET_LR,
                              weight_decay=PAPER_WEIGHT_DECAY)
  for name in ('regressor', 'direct_rgb', 'ensemble'):
    c[name].loss = 'euclidean'
    c[name].train.update(optimizer='sgd', learning_rate=PAPER_REGRESSOR_LR,
                         weight_decay=PAPER_WEIGHT_DECAY)
