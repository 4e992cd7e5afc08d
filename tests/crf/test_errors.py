"""Bad input: one-line InputError."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryoparticle.config import check_group_overrides
from cryoparticle.crf.dense import DenseCRF, dense_crf
from cryoparticle.crf.meanfield import MeanFieldCRF, meanfield_crf
from cryoparticle.errors import InputError
from cryoparticle.models.segmenter import Segmenter


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("crf", [MeanFieldCRF(), DenseCRF()])
def test_module_input_errors(crf):
    logits, image = torch.zeros(1, 2, 16, 16), torch.zeros(1, 1, 16, 16)
    with pytest.raises(InputError) as exc:
        crf(logits, torch.zeros(1, 1, 16, 15))
    assert "does not match" in one_line(exc)
    bad = logits.clone()
    bad[0, 0, 3, 3] = float("nan")
    with pytest.raises(InputError) as exc:
        crf(bad, image)
    assert "non-finite" in one_line(exc)
    bad_image = image.clone()
    bad_image[0, 0, 0, 0] = float("inf")
    with pytest.raises(InputError) as exc:
        crf(logits, bad_image)
    assert "non-finite" in one_line(exc)
    with pytest.raises(InputError):
        crf(torch.zeros(1, 1, 16, 16), image)                 # one class
    with pytest.raises(InputError):
        crf(np.zeros((1, 2, 16, 16)), image)                   # not a tensor


@pytest.mark.parametrize("fn", [dense_crf, meanfield_crf])
def test_probability_errors(fn):
    prob = np.full((2, 16, 16), 0.5, dtype=np.float32)
    image = np.zeros((16, 16), dtype=np.float32)
    with pytest.raises(InputError) as exc:
        fn(prob * 1.2, image)
    assert "sum to one" in one_line(exc)
    with pytest.raises(InputError) as exc:
        fn(prob, np.zeros((16, 17), dtype=np.float32))
    assert "does not match" in one_line(exc)
    nan = prob.copy()
    nan[0, 1, 1] = np.nan
    with pytest.raises(InputError) as exc:
        fn(nan, image)
    assert "non-finite" in one_line(exc)
    with pytest.raises(InputError):
        fn(np.stack([prob[0] + 1, prob[1] - 1]), image)        # outside [0, 1]


def test_parameter_errors_and_unknown_options():
    for kwargs in ({"spatial_sxy": 0}, {"bilateral_srgb": -1}, {"n_iterations": -2},
                   {"bilateral_weight": float("nan")}, {"unary_clip": 2.0},
                   {"percentiles": [99, 1]}):
        with pytest.raises(InputError):
            MeanFieldCRF(**kwargs)
        with pytest.raises(InputError):
            DenseCRF(**kwargs)
    for kwargs in ({"feature_channels": 9}, {"feature_mode": "mix"}, {"num_classes": 1},
                   {"bilateral_cells_per_sigma": 0}):
        with pytest.raises(InputError):
            MeanFieldCRF(**kwargs)
    with pytest.raises(InputError) as exc:
        check_group_overrides("train", ["crf=bogus"])
    assert "unknown option" in one_line(exc)
    with pytest.raises(InputError):
        Segmenter({"name": "fcn", "backbone": "resnet18"},
                  crf={"_target_": "cryoparticle.crf.meanfield.MeanFieldCRF", "bogus": 1})
    with pytest.raises(InputError) as exc:                      # frozen network, nothing to learn
        Segmenter({"name": "fcn", "backbone": "resnet18"}, freeze_network=True,
                  crf={"_target_": "cryoparticle.crf.meanfield.MeanFieldCRF"})
    assert "nothing left to train" in one_line(exc)


def test_learnable_crf_checks_the_number_of_classes():
    crf = MeanFieldCRF(learnable=True, num_classes=3)
    with pytest.raises(InputError) as exc:
        crf(torch.zeros(1, 2, 8, 8), torch.zeros(1, 1, 8, 8))
    assert "num_classes=3" in one_line(exc)
