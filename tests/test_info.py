"""``Posterior.info`` records: typed fields that also read as a mapping."""

import pytest

from bayesmeta.info import FitInfo, NUTSInfo, VIInfo, info_from


def test_fields_read_as_attributes_and_keys():
    info = info_from({"timing": {"compiled": True}, "options": {"a": 1}, "note": 3}, NUTSInfo)
    assert isinstance(info, NUTSInfo)
    assert info.timing == {"compiled": True} and info["timing"] is info.timing
    assert info["note"] == 3 and info.extra == {"note": 3}
    assert "retried" not in info and info.get("retried") is None  # unfilled field: absent
    with pytest.raises(KeyError):
        info["retried"]
    assert set(info) == {"options", "timing", "note"} and len(info) == 3
    info["retried"] = {"divergences": 2}
    assert info.retried == {"divergences": 2} and "retried" in info
    assert dict(info)["retried"] == {"divergences": 2}


def test_plain_mapping_becomes_a_base_record():
    info = info_from({"elbo": [1.0]})
    assert type(info) is FitInfo and info["elbo"] == [1.0]
    vi = info_from({"elbo": [1.0]}, VIInfo)
    assert vi.elbo == [1.0] and vi.extra == {}
