import numpy as np
import pytest
from scipy.stats import pearsonr

from minbert.tasks.metrics import DivergedError, accuracy, overall_score, pearson


def test_accuracy_against_numpy():
    p, y = [0, 1, 2, 3, 4, 4], [0, 1, 2, 0, 0, 4]
    assert accuracy(p, y) == pytest.approx(np.mean(np.array(p) == np.array(y)))


def test_pearson_against_scipy():
    rng = np.random.default_rng(0)
    y = rng.uniform(0, 5, 200)
    p = y + rng.normal(0, 1, 200)
    assert pearson(p, y) == pytest.approx(pearsonr(p, y)[0], abs=1e-12)
    assert pearson(-p, y) == pytest.approx(-pearsonr(p, y)[0], abs=1e-12)


def test_pearson_of_constant_is_zero():
    assert pearson([1.0, 1.0, 1.0], [0.0, 1.0, 2.0]) == 0.0


def test_overall_score_formula():
    # The seed report's test scores: SST 0.533, Para 0.82, STS 0.726 -> 0.738 (rounded).
    assert overall_score(0.533, 0.82, 0.726) == pytest.approx((0.533 + 0.82 + 0.863) / 3)
    assert round(overall_score(0.533, 0.82, 0.726), 3) == 0.739


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        accuracy([1, 2], [1])
    with pytest.raises(ValueError):
        pearson([1.0], [1.0])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_diverged_model_gets_no_score(bad):
    """pearson used to return 0.0 for NaN predictions, so a diverged run scored a finite overall."""
    with pytest.raises(DivergedError, match="pearson: 1 of 3 predictions are NaN or infinite: the model has diverged"):
        pearson([1.0, bad, 3.0], [1.0, 2.0, 3.0])
    with pytest.raises(DivergedError, match="accuracy: 1 of 3 predictions"):
        accuracy([1.0, bad, 3.0], [1.0, 2.0, 3.0])
    assert issubclass(DivergedError, ValueError)  # the CLI prints it as one error line
