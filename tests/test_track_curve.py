"""Scaling-curve fit and plot (magdi_dist.study.curve): recovery of known laws, degenerate inputs, PNG."""

from __future__ import annotations

import json

import numpy as np
import pytest

from magdi_dist.study.curve import fit_power_law, fit_scaling, plot_scaling

SIZES = np.geomspace(1e6, 1e9, 6)


def _json_ok(obj) -> None:
    json.dumps(obj, allow_nan=False)  # what log_dict / a JSON file needs: no NaN, no numpy types


def test_fit_recovers_power_law_with_noise():
    rng = np.random.default_rng(0)
    a, b = 40.0, 0.12
    loss = a * SIZES ** (-b) * np.exp(rng.normal(0, 0.005, SIZES.size))  # 0.5% multiplicative noise
    fit = fit_power_law(SIZES, loss)
    _json_ok(fit)
    assert fit["ok"] and fit["c"] is None
    assert fit["b"] == pytest.approx(b, abs=0.01)
    assert fit["a"] == pytest.approx(a, rel=0.15)
    assert fit["r2"] > 0.98 and len(fit["residuals"]) == SIZES.size and fit["dof"] == 4


def test_fit_recovers_irreducible_loss():
    a, b, c = 400.0, 0.3, 1.2
    loss = a * SIZES ** (-b) + c
    fit = fit_power_law(SIZES, loss, offset=True)
    assert fit["ok"], fit
    assert fit["b"] == pytest.approx(b, rel=0.02)
    assert fit["a"] == pytest.approx(a, rel=0.1)
    assert fit["c"] == pytest.approx(c, rel=0.02)
    assert fit["r2"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(
    ("x", "y", "offset", "needle"),
    [
        ([1e6], [2.0], False, "at least 2 points"),
        ([1e6, 1e7], [2.0, 1.0], True, "at least 4 points"),
        ([1e6, -1e7, 0], [2.0, 1.0, 1.0], False, "2 dropped"),
        ([1e6, 1e7], [2.0, 0.0], False, "1 dropped"),
        ([1e6, 1e6, 1e6], [2.0, 1.9, 1.8], False, "same size"),
        ([None, 1e7, float("nan")], [2.0, None, 1.0], False, "at least 2 points"),
    ],
)
def test_degenerate_inputs_give_messages(x, y, offset, needle):
    fit = fit_power_law(x, y, offset=offset)
    _json_ok({k: v for k, v in fit.items() if k != "dropped"})
    assert fit["ok"] is False and needle in fit["message"]


def test_fit_scaling_per_variant_and_empty():
    rows = [
        {"cell": f"c{i}", "variant": v, "params": n, "flops": 6 * n * 1e6, "eval_ntp_loss": k * n**-0.1,
         "accuracy": 0.5}
        for i, n in enumerate(SIZES[:3])
        for v, k in (("magdi", 5.0), ("ntp", 6.0))
    ]
    rows.append({"cell": "one", "variant": "lonely", "params": 1e6, "flops": 1e12, "eval_ntp_loss": 3.0,
                 "accuracy": None})
    summary = fit_scaling(rows)
    _json_ok(summary)
    assert set(summary["variants"]) == {"magdi", "ntp", "lonely"}
    assert summary["variants"]["magdi"]["vs_params"]["b"] == pytest.approx(0.1, abs=1e-9)
    assert summary["variants"]["ntp"]["vs_flops"]["b"] == pytest.approx(0.1, abs=1e-9)
    assert summary["variants"]["lonely"]["vs_params"]["ok"] is False
    empty = fit_scaling([])
    assert empty["variants"] == {} and "no rows" in empty["message"]


def test_plot_is_a_png(tmp_path):
    import matplotlib.image as mpimg

    rows = [
        {"cell": f"c{i}", "variant": v, "params": n, "flops": 6 * n * 1e6, "eval_ntp_loss": k * n**-0.1,
         "accuracy": i / 4}
        for i, n in enumerate(SIZES[:4])
        for v, k in (("magdi", 5.0), ("ntp", 6.0))
    ]
    rows.append({"cell": "bad", "variant": "magdi", "params": 0, "flops": None, "eval_ntp_loss": None,
                 "accuracy": None})
    path = plot_scaling(rows, tmp_path / "sub" / "curve.png", fits=fit_scaling(rows), title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 300
    # No data at all still draws (empty panels say so) instead of raising.
    assert plot_scaling([], tmp_path / "empty.png").read_bytes()[:4] == b"\x89PNG"
