"""Dense CRFs after the network: the pydensecrf reference (:mod:`~cryoparticle.crf.dense`,
``crf=dense``), the fast PyTorch mean-field CRF and the CRF-as-RNN layer
(:mod:`~cryoparticle.crf.meanfield`, ``crf=meanfield`` / ``crf=rnn``), and the grid filters they
use (:mod:`~cryoparticle.crf.filtering`). Every CRF is called ``crf(logits (N, C, H, W),
image (N, 1, H, W)) -> log-marginals (N, C, H, W)``."""

from cryoparticle.crf.dense import DenseCRF, dense_crf
from cryoparticle.crf.filtering import intensity_levels
from cryoparticle.crf.meanfield import MeanFieldCRF, exact_mean_field, meanfield_crf

__all__ = ["DenseCRF", "MeanFieldCRF", "dense_crf", "exact_mean_field", "intensity_levels",
           "meanfield_crf"]
