"""Quantile recalibration (bm.meta.recalibrate) against known miscalibrated predictives:
the reference intervals are the truth's own quantiles (scipy), independent of the code."""

import numpy as np
import pytest
from scipy import stats

import bayesmeta as bm


@pytest.mark.parametrize("level", [0.5, 0.9])
def test_recalibrated_intervals_cover_at_the_nominal_level(level):
    # the model says t(5) with scale 1; the truth is N(0.3, 1.7^2): wrong shape, scale, centre
    rng = np.random.default_rng(1)
    model = stats.t(5)
    truth = stats.norm(0.3, 1.7)
    recal = bm.meta.recalibrate(model.cdf(truth.rvs(size=20000, random_state=rng)))
    lo, hi = recal.interval(level)
    # the recalibrated bounds are the truth's quantiles: F^-1(R^-1(p)) = G^-1(p)
    want = truth.ppf([(1 - level) / 2, (1 + level) / 2])
    np.testing.assert_allclose(model.ppf([lo, hi]), want, atol=0.05)
    y = truth.rvs(size=20000, random_state=rng)
    cover = np.mean((y >= model.ppf(lo)) & (y <= model.ppf(hi)))
    # binomial sd at n = 20,000 is at most 0.0035; allow 4 sd
    assert abs(cover - level) < 0.014
    raw = np.mean(np.abs(y) <= model.ppf(0.5 + level / 2))
    assert abs(raw - level) > 0.05  # the model itself was miscalibrated


def test_cdf_is_the_empirical_pit_distribution():
    recal = bm.meta.recalibrate([0.1, 0.2, 0.2, 0.9, 0.5, 0.3, 0.7, 0.6, 0.4, 0.8])
    np.testing.assert_allclose(recal.cdf([0.0, 0.2, 0.55, 1.0]), [0.0, 0.3, 0.6, 1.0])


@pytest.mark.parametrize(
    "pit,match",
    [
        (np.full(5, 0.5), "at least 10"),
        (np.r_[np.full(10, 0.5), 1.5], "position 10"),
        (np.r_[np.nan, np.full(10, 0.5)], "position 0"),
    ],
)
def test_bad_pit_values_are_rejected(pit, match):
    with pytest.raises(ValueError, match=match):
        bm.meta.recalibrate(pit)


def test_bad_level_is_rejected():
    with pytest.raises(ValueError, match="level"):
        bm.meta.recalibrate(np.linspace(0, 1, 20)).interval(1.0)
