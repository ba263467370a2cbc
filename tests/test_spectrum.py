"""The spectrum and its metrics (METHOD.md §2–3): known spectra, invariances, agreement with
the authors' path (PCA as a full SVD of the centred M×d matrix), edge cases, feature files."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geowh import spectrum_math
from geowh.errors import InputError
from geowh.ingest.features import spectrum
from geowh.ingest.features.spectrum import Covariance, load_features, metrics_of_file
from geowh.spectrum_math import REGISTRY, MetricValue, compute_metrics, gram_eigenvalues, metric, metrics_dict

EPS = 1e-7  # the authors' RankMe epsilon, geowh's default


# ---- helpers --------------------------------------------------------------------------


def power_law_features(m: int, d: int, alpha: float = 1.0, seed: int = 0) -> np.ndarray:
    """(m, d) rows with covariance Q diag(k^-alpha) Qᵀ and a few columns far from mean 0."""
    rng = np.random.default_rng(seed)
    lam = np.arange(1, d + 1, dtype=np.float64) ** -alpha
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    mean = rng.normal(0.0, 1.0, d)
    mean[:3] = (300.0, -120.0, 80.0)[:d]  # like the massive activations of LLM hidden states
    return rng.standard_normal((m, d)) @ (np.sqrt(lam)[:, None] * q.T) + mean


def authors_spectrum(f: np.ndarray) -> np.ndarray:
    """The authors' path: centre the M×d matrix, full SVD, eigenvalues s²/M."""
    fc = f - f.mean(axis=0)
    _, s, _ = np.linalg.svd(fc, full_matrices=False)
    return s**2 / f.shape[0]


def streamed(f, chunk: int = 64) -> Covariance:
    cov = Covariance(f.shape[1])
    for i in range(0, f.shape[0], chunk):
        cov.update(f[i : i + chunk])
    return cov


def assert_spectra_agree(lam: np.ndarray, ref: np.ndarray) -> None:
    assert lam.shape == ref.shape
    big = ref > 1e-10 * ref[0]
    np.testing.assert_allclose(lam[big], ref[big], rtol=1e-8, atol=0)
    assert np.all(lam[~big] <= 1e-10 * ref[0])


def assert_metrics_agree(a: dict[str, float], b: dict[str, float], rel: float = 1e-8) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if math.isnan(b[k]):
            assert math.isnan(a[k]), k
        else:
            assert a[k] == pytest.approx(b[k], rel=rel, abs=1e-12), k


def metrics_of(lam, **overrides) -> dict[str, float]:
    return metrics_dict(compute_metrics(lam, **overrides))


def by_name(values: list[MetricValue]) -> dict[str, MetricValue]:
    return {v.metric: v for v in values}


@pytest.fixture
def torch():
    """torch, single-threaded for the test: these matrices are tiny, and on a busy machine
    OpenMP's spinning threads make them hundreds of times slower. Restored afterwards."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(threads)


# ---- known spectra ----------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(alpha=st.floats(0.1, 3.0), d=st.integers(112, 3000), scale=st.floats(1e-6, 1e6))
def test_an_exact_power_law_gives_its_alpha_back(alpha, d, scale):
    lam = scale * np.arange(1, d + 1, dtype=np.float64) ** -alpha
    values = by_name(compute_metrics(lam, names=["alpha_req"]))
    assert values["alpha_req"].value == pytest.approx(alpha, abs=1e-9)
    assert values["alpha_req_r2"].value == pytest.approx(1.0, abs=1e-12)
    assert values["alpha_req"].params["fit_range"] == [12, 100]
    assert values["alpha_req"].params["r2_range"] == [12, 500 if d >= 512 else d - 10]
    assert "reason" not in values["alpha_req"].params


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_a_diagonal_feature_matrix_has_the_power_law_spectrum_it_was_built_from(alpha):
    d = 200
    lam = np.arange(1, d + 1, dtype=np.float64) ** -alpha
    # Rows ±a_k e_k: mean 0, covariance diag(2 a_k² / M) = diag(λ_k) with M = 2d.
    a = np.diag(np.sqrt(d * lam))
    f = np.vstack([a, -a])  # (2d, d)
    cov = streamed(f, chunk=48)
    np.testing.assert_allclose(cov.eigenvalues(), lam, rtol=1e-12)
    values = metrics_of(cov.eigenvalues())
    assert values["alpha_req"] == pytest.approx(alpha, abs=1e-9)
    assert values["alpha_req_r2"] == pytest.approx(1.0, abs=1e-12)


def test_the_weighted_fit_and_r2_match_an_independent_least_squares():
    rng = np.random.default_rng(3)
    k = np.arange(1, 801, dtype=np.float64)
    lam = np.sort(k**-1.3 * np.exp(rng.normal(0, 0.2, k.size)))[::-1]
    values = metrics_of(lam)
    fit = np.arange(12, 101)
    # polyfit weights multiply residuals, so weights 1/k on squares are sqrt(1/k) here.
    slope, intercept = np.polyfit(np.log(fit), np.log(lam[fit - 1]), 1, w=np.sqrt(1.0 / fit))
    assert values["alpha_req"] == pytest.approx(-slope, rel=1e-10)
    r2 = np.arange(12, 501)
    y = np.log(lam[r2 - 1])
    resid = y - (intercept + slope * np.log(r2))
    assert values["alpha_req_r2"] == pytest.approx(1 - resid @ resid / ((y - y.mean()) @ (y - y.mean())), rel=1e-10)


@pytest.mark.parametrize("d", [2, 10, 300, 2048, 3000])
def test_a_flat_spectrum_has_rankme_d_up_to_the_eps_effect(d):
    values = by_name(compute_metrics(np.full(d, 3.7), max_components=None))
    # With pᵢ = 1/d + eps: RankMe = exp(−(1 + d·eps)·log(1/d + eps)) exactly, which is
    # d·(1 + O(d·eps·log d)): within d·eps·log(d) relative of d (3e-3 at d = 3000).
    exact = math.exp(-(1 + d * EPS) * math.log(1 / d + EPS))
    assert values["rankme"].value == pytest.approx(exact, rel=1e-12)
    assert abs(values["rankme"].value / d - 1) <= d * EPS * max(math.log(d), 1)
    assert values["rankme_sv"].value == pytest.approx(exact, rel=1e-12)
    assert values["spectral_entropy"].value == pytest.approx(math.log(exact), rel=1e-12)
    assert values["participation_ratio"].value == pytest.approx(d, rel=1e-12)
    assert values["stable_rank"].value == pytest.approx(d, rel=1e-12)
    assert values["top_eig_share"].value == pytest.approx(1 / d, rel=1e-12)


def test_isotropic_features_have_rankme_d():
    d = 64
    f = np.vstack([np.eye(d), -np.eye(d)]) @ np.linalg.qr(np.random.default_rng(1).standard_normal((d, d)))[0]
    values = metrics_of(streamed(f).eigenvalues())
    assert values["rankme"] == pytest.approx(math.exp(-(1 + d * EPS) * math.log(1 / d + EPS)), rel=1e-10)


@pytest.mark.parametrize("d", [1, 5, 2048])
def test_one_nonzero_eigenvalue_has_rankme_one(d):
    lam = np.zeros(d)
    lam[0] = 42.0
    values = metrics_of(lam)
    # p₁ = 1 + eps, the others eps: RankMe − 1 ≈ (d − 1)·eps·|log eps| (3.3e-3 at d = 2048).
    assert 1 - 2 * EPS <= values["rankme"] <= 1 + 1.01 * d * EPS * -math.log(EPS)
    assert metrics_of(lam, max_components=1)["rankme"] == pytest.approx(1.0, abs=1e-6)
    assert values["participation_ratio"] == values["stable_rank"] == values["top_eig_share"] == 1.0


def test_rank_one_features_give_one_nonzero_eigenvalue():
    rng = np.random.default_rng(2)
    f = np.outer(rng.standard_normal(300), rng.standard_normal(40)) + 5.0
    lam = streamed(f).eigenvalues()
    assert lam[0] > 0 and np.all(lam[1:] == 0)
    assert metrics_of(lam)["rankme"] == pytest.approx(1.0, abs=40 * EPS * 17)


def test_companion_metrics_have_their_textbook_values():
    values = metrics_of([1.0, 4.0, 1.0, 2.0])  # any order: sorted here
    assert values["participation_ratio"] == pytest.approx(64 / 22)
    assert values["stable_rank"] == pytest.approx(2.0)
    assert values["top_eig_share"] == pytest.approx(0.5)
    assert values["spectral_entropy"] == pytest.approx(math.log(values["rankme"]), rel=1e-12)


def test_rankme_sv_is_rankme_of_the_singular_values():
    lam = np.arange(1, 301, dtype=np.float64) ** -1.2
    assert metrics_of(lam)["rankme_sv"] == pytest.approx(metrics_of(np.sqrt(lam))["rankme"], rel=1e-12)


def test_max_components_keeps_the_top_eigenvalues_and_is_recorded():
    lam = np.arange(1, 3001, dtype=np.float64) ** -0.8
    top = by_name(compute_metrics(lam))["rankme"]
    full = by_name(compute_metrics(lam, max_components=None))["rankme"]
    assert top.params == {"eps": EPS, "max_components": 2048, "n_components": 2048}
    assert full.params == {"eps": EPS, "max_components": None, "n_components": 3000}
    assert top.value == pytest.approx(metrics_of(lam[:2048], max_components=None)["rankme"], rel=1e-12)
    assert full.value > top.value


# ---- invariances --------------------------------------------------------------------------

spectra = st.lists(st.floats(1e-6, 1.0), min_size=3, max_size=400).map(np.array)


@settings(max_examples=60, deadline=None)
@given(lam=spectra, scale=st.floats(1e-8, 1e8))
def test_metrics_are_scale_invariant(lam, scale):
    assert_metrics_agree(metrics_of(lam * scale), metrics_of(lam), rel=1e-9)


@settings(max_examples=60, deadline=None)
@given(lam=spectra, seed=st.integers(0, 2**32 - 1))
def test_metrics_do_not_depend_on_the_order_of_the_eigenvalues(lam, seed):
    shuffled = np.random.default_rng(seed).permutation(lam)
    assert_metrics_agree(metrics_of(shuffled), metrics_of(np.sort(lam)[::-1]), rel=0)


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    m=st.integers(20, 300),
    d=st.integers(2, 130),
    scale=st.sampled_from([1e-3, 0.37, 1.0, 2.5e4]),
)
def test_scaling_rotating_and_permuting_features_changes_no_metric(seed, m, d, scale):
    rng = np.random.default_rng(seed)
    f = power_law_features(m, d, alpha=1.0, seed=seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    base = metrics_of(streamed(f).eigenvalues())
    assert_metrics_agree(metrics_of(streamed(f * scale).eigenvalues()), base, rel=1e-8)
    assert_metrics_agree(metrics_of(streamed(f @ q).eigenvalues()), base, rel=1e-8)
    assert_metrics_agree(metrics_of(streamed(f[rng.permutation(m)][:, rng.permutation(d)]).eigenvalues()), base)


# ---- the streaming path agrees with the authors' path ----------------------------------


@pytest.mark.parametrize("m, d", [(600, 160), (2000, 120), (60, 160)], ids=["M>d", "M>>d", "M<d"])
def test_streaming_numpy_blocks_agree_with_the_authors_svd(m, d):
    f = power_law_features(m, d)
    lam = streamed(f, chunk=97).eigenvalues()
    ref = authors_spectrum(f)
    assert_spectra_agree(lam, ref)
    assert_metrics_agree(metrics_of(lam), metrics_of(ref))
    assert_metrics_agree(metrics_of(lam, max_components=None), metrics_of(ref, max_components=None))


def test_fewer_rows_than_dimensions_keeps_min_n_d_eigenvalues_and_leaves_out_the_zero():
    f = power_law_features(60, 160)
    values = by_name(compute_metrics(streamed(f).eigenvalues()))
    assert len(streamed(f).eigenvalues()) == 60
    alpha = values["alpha_req"]
    assert alpha.params["fit_range"] == [12, 60] and alpha.params["n_zero_excluded"] == 1
    assert "zero eigenvalue" in alpha.params["reason"] and "clipped" in alpha.params["reason"]
    assert math.isfinite(alpha.value)


def test_merged_accumulators_agree_with_the_authors_svd():
    f = power_law_features(900, 140, seed=5)
    a, b, c = streamed(f[:250]), streamed(f[250:700], chunk=200), streamed(f[700:] * 1.0 + 0.0)
    ref = authors_spectrum(f)
    for merged in (a + b + c, sum([c, a, b]), a.copy().merge(b).merge(c)):
        assert merged.n == 900
        assert_spectra_agree(merged.eigenvalues(), ref)
        assert_metrics_agree(metrics_of(merged.eigenvalues()), metrics_of(ref))
    assert a.n == 250  # `+` leaves its operands alone
    np.testing.assert_allclose((a + b + c).covariance(), np.cov(f.T, bias=True), rtol=1e-9, atol=1e-12)


def test_torch_blocks_agree_with_the_authors_svd(torch):
    f = power_law_features(700, 130, seed=7)
    ref = authors_spectrum(f)
    t = torch.from_numpy(f)
    cov = streamed(t, chunk=128)
    assert cov.device == "cpu"  # a tensor's sums stay with the tensor (on the GPU in an ingest)
    assert_spectra_agree(cov.eigenvalues(), ref)
    assert_metrics_agree(metrics_of(cov.eigenvalues()), metrics_of(ref))
    assert torch.equal(t, torch.from_numpy(f))  # the input is not modified
    # numpy and torch accumulators merge, either way round.
    mixed = (streamed(f[:300]) + streamed(t[300:])).eigenvalues()
    assert_spectra_agree(mixed, ref)
    assert_spectra_agree((streamed(t[:300]) + streamed(f[300:])).eigenvalues(), ref)


@pytest.mark.gpu
def test_cuda_blocks_accumulate_on_the_gpu_and_agree_with_the_authors_svd(torch):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    f = torch.from_numpy(power_law_features(700, 130, seed=7)).to("cuda", torch.float32)
    ref = authors_spectrum(f.double().cpu().numpy())
    cov = streamed(f, chunk=128)
    assert cov.device.startswith("cuda")
    assert_spectra_agree(cov.eigenvalues(), ref)
    assert_metrics_agree(metrics_of(cov.eigenvalues()), metrics_of(ref))
    on_cpu = streamed(f[300:].cpu().numpy())
    assert_spectra_agree((streamed(f[:300]) + on_cpu).eigenvalues(), ref)
    assert_spectra_agree((on_cpu + streamed(f[:300])).eigenvalues(), ref)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_low_precision_tensors_accumulate_in_float64(dtype, torch):
    f = torch.from_numpy(power_law_features(500, 120, seed=11)).to(getattr(torch, dtype))
    exact = f.to(torch.float64).numpy()  # the values the tensor holds, exactly
    ref = authors_spectrum(exact)
    lam = streamed(f, chunk=100).eigenvalues()
    assert_spectra_agree(lam, ref)
    assert_metrics_agree(metrics_of(lam), metrics_of(ref))
    if dtype != "bfloat16":  # numpy has no bf16
        assert_spectra_agree(streamed(f.numpy(), chunk=100).eigenvalues(), ref)


def test_covariance_and_mean_match_numpy():
    f = power_law_features(400, 30, seed=4)
    cov = streamed(f, chunk=33)
    np.testing.assert_allclose(cov.mean(), f.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(cov.covariance(), np.cov(f.T, bias=True), rtol=1e-9, atol=1e-12)
    assert cov.covariance().dtype == np.float64 and np.array_equal(cov.covariance(), cov.covariance().T)


# ---- edge cases ----------------------------------------------------------------------------


def authors_stringer_fit(lam: np.ndarray) -> tuple[float, float]:
    """The authors' fit, re-typed: normal equations with float32 weights 1/k on ranks
    12..100, R² (unweighted) from rank 13 to 500, or to len−10 under 512 eigenvalues."""
    ranks = np.arange(12, 101)
    x = np.column_stack([-np.log(ranks), np.ones(ranks.size)])
    w = (1.0 / ranks.astype(np.float32))[:, None]
    y = np.log(lam[ranks - 1])[:, None]
    alpha, intercept = np.linalg.solve(x.T @ (x * w), (w * x).T @ y).ravel()
    end = 500 if lam.size >= 512 else lam.size - 10
    r = np.arange(13, end + 1)
    y_true, y_pred = np.log(lam[r - 1]), intercept - alpha * np.log(r)
    return alpha, 1 - ((y_true - y_pred) ** 2).sum() / ((y_true - y_true.mean()) ** 2).sum()


@pytest.mark.parametrize("d", [150, 511, 512, 2048])
def test_alpha_req_matches_the_authors_stringer_fit(d):
    rng = np.random.default_rng(d)
    lam = np.sort(np.arange(1, d + 1) ** -1.1 * np.exp(rng.normal(0, 0.3, d)))[::-1]
    alpha, r2 = authors_stringer_fit(lam)
    values = metrics_of(lam, r2_start=13)
    # Their float32 weights move α by ~1e-10 relative.
    assert values["alpha_req"] == pytest.approx(alpha, rel=1e-8)
    assert values["alpha_req_r2"] == pytest.approx(r2, rel=1e-8)


@pytest.mark.parametrize("d", [50, 80, 99])
def test_a_spectrum_shorter_than_the_fit_range_clips_it_and_says_so(d):
    lam = np.arange(1, d + 1, dtype=np.float64) ** -1.5
    alpha = by_name(compute_metrics(lam))["alpha_req"]
    assert alpha.value == pytest.approx(1.5, abs=1e-9)
    assert alpha.params["fit_range"] == [12, d] and alpha.params["r2_range"] == [12, d - 10]
    assert f"clipped to ranks 12..{d}" in alpha.params["reason"]


@pytest.mark.parametrize("d", [1, 5, 13])
def test_too_short_a_spectrum_gives_nan_alpha_with_a_reason(d):
    values = by_name(compute_metrics(np.arange(1, d + 1, dtype=np.float64) ** -1.0))
    assert math.isnan(values["alpha_req"].value) and math.isnan(values["alpha_req_r2"].value)
    assert "need 3" in values["alpha_req"].params["reason"]
    assert math.isfinite(values["rankme"].value)


def test_zero_eigenvalues_in_the_fit_range_are_left_out_and_recorded():
    lam = np.zeros(300)
    lam[:60] = np.arange(1, 61, dtype=np.float64) ** -0.9
    alpha = by_name(compute_metrics(lam))["alpha_req"]
    assert alpha.value == pytest.approx(0.9, abs=1e-9)
    assert alpha.params["n_zero_excluded"] == 40 and alpha.params["n_fit_points"] == 49
    assert "zero eigenvalue" in alpha.params["reason"]


def test_fit_range_overrides_reach_alpha_req_and_are_recorded():
    k = np.arange(1, 401, dtype=np.float64)
    lam = np.where(k <= 50, k**-0.5, 50**-0.5 * (k / 50) ** -2.0)  # a kink at rank 50
    alpha = by_name(compute_metrics(lam, fit_start=60, fit_end=200))["alpha_req"]
    assert alpha.value == pytest.approx(2.0, abs=1e-9)
    assert alpha.params["fit_start"] == 60 and alpha.params["fit_range"] == [60, 200]
    assert alpha.params["r2_start"] == 60
    with pytest.raises(InputError, match="at least 3 ranks"):
        compute_metrics(lam, fit_start=10, fit_end=11)


def test_zero_variance_columns_give_zero_eigenvalues():
    f = power_law_features(500, 40, seed=8)
    with_constants = np.hstack([f, np.full((500, 3), 7.0), np.zeros((500, 1))])
    lam = streamed(with_constants).eigenvalues()
    assert np.all(lam[-4:] == 0.0)
    np.testing.assert_allclose(lam[:-4], streamed(f).eigenvalues(), rtol=1e-10)
    assert all(math.isfinite(v) for v in metrics_of(lam).values())


def test_constant_features_give_nan_metrics_with_a_reason_not_a_crash():
    lam = streamed(np.full((100, 20), 3.0)).eigenvalues()
    assert np.all(lam == 0)
    for v in compute_metrics(lam):
        assert math.isnan(v.value), v.metric
        assert "zero" in v.params["reason"] or "need 3" in v.params["reason"]
    assert all(math.isnan(v) for v in metrics_of([]).values())


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_in_a_block_is_rejected_and_the_accumulator_unchanged(bad):
    f = power_law_features(200, 10)
    cov = streamed(f[:100])
    before = cov.eigenvalues()
    block = f[100:].copy()
    block[17, 3] = bad
    with pytest.raises(InputError, match="NaN or infinite.*row 17"):
        cov.update(block)
    assert cov.n == 100
    np.testing.assert_array_equal(cov.eigenvalues(), before)
    with pytest.raises(InputError, match="NaN or infinite"):
        Covariance(10).update(block)  # also as the first block


def test_nan_in_a_torch_block_is_rejected(torch):
    block = torch.ones(5, 4, dtype=torch.bfloat16)
    block[2, 1] = float("nan")
    cov = Covariance(4).update(torch.randn(8, 4))
    with pytest.raises(InputError, match="row 2"):
        cov.update(block)
    assert cov.n == 8


def test_blocks_of_the_wrong_shape_and_too_few_rows_are_rejected():
    cov = Covariance(6)
    with pytest.raises(InputError, match="columns but this Covariance has d=6"):
        cov.update(np.zeros((3, 5)))
    with pytest.raises(InputError, match="2-D"):
        cov.update(np.zeros(6))
    with pytest.raises(InputError, match="at least 2 rows"):
        cov.eigenvalues()
    cov.update(np.ones((1, 6)))
    with pytest.raises(InputError, match="at least 2 rows"):
        cov.eigenvalues()
    cov.update(np.zeros((0, 6)))  # an empty block is fine
    assert cov.n == 1
    with pytest.raises(InputError):
        Covariance(0)
    with pytest.raises(InputError, match="width 6 and 7"):
        cov.merge(Covariance(7))


def test_bad_eigenvalues_names_and_parameters_are_rejected():
    with pytest.raises(InputError, match="NaN"):
        compute_metrics([1.0, np.nan])
    with pytest.raises(InputError, match="negative"):
        compute_metrics([1.0, -0.5])
    with pytest.raises(InputError, match="unknown metric 'rankmee'.*rankme"):
        compute_metrics([1.0], names=["rankmee"])
    with pytest.raises(InputError, match="unknown metric parameter.*max_component"):
        compute_metrics([1.0], max_component=5)
    with pytest.raises(InputError, match="max_components"):
        compute_metrics([1.0], max_components=0)


def test_tiny_negative_eigenvalues_are_clipped_to_zero():
    values = metrics_of([2.0, 1.0, -1e-17])
    assert values == metrics_of([2.0, 1.0, 0.0])


def test_every_registered_metric_appears_in_compute_metrics_with_json_params():
    values = compute_metrics(power_law_features(300, 120).var(axis=0))
    names = [v.metric for v in values]
    expected = [o for m in REGISTRY.values() for o in m.outputs]
    assert names == expected
    assert {"rankme", "rankme_sv", "alpha_req", "alpha_req_r2", "participation_ratio", "stable_rank",
            "top_eig_share", "spectral_entropy"} <= set(names)
    for v in values:
        json.dumps(v.params, allow_nan=False)
        assert isinstance(v.value, float)
    assert list(metrics_dict(values)) == expected


def test_a_new_metric_is_one_decorated_function(monkeypatch):
    monkeypatch.setattr(spectrum_math, "REGISTRY", dict(REGISTRY))

    @metric
    def top2_share(lam, *, k: int = 2):
        """Share of the top k eigenvalues."""
        return float(lam[:k].sum() / lam.sum()), {}

    values = by_name(compute_metrics([3.0, 1.0, 1.0, 0.0], k=1))
    assert values["top2_share"].value == 0.6 and values["top2_share"].params == {"k": 1}
    assert spectrum_math.REGISTRY["top2_share"].doc == "Share of the top k eigenvalues."
    assert "top2_share" not in REGISTRY


# ---- feature files ---------------------------------------------------------------------------


@pytest.fixture
def features() -> np.ndarray:
    return power_law_features(300, 24, seed=9).astype(np.float32)


def test_npy_round_trips(tmp_path, features):
    np.save(tmp_path / "f.npy", features)
    loaded = load_features(tmp_path / "f.npy")
    np.testing.assert_array_equal(loaded, features)
    assert loaded.dtype == np.float32


def test_safetensors_round_trips_and_names_its_tensors(tmp_path, features):
    from safetensors.numpy import save_file

    save_file({"features": features}, tmp_path / "one.safetensors")
    np.testing.assert_array_equal(load_features(tmp_path / "one.safetensors"), features)
    save_file({"layer_12": features, "layer_6": np.ascontiguousarray(features[:, :10])}, tmp_path / "two.safetensors")
    np.testing.assert_array_equal(load_features(tmp_path / "two.safetensors", key="layer_6"), features[:, :10])
    with pytest.raises(InputError, match="2 tensors.*layer_12.*layer_6"):
        load_features(tmp_path / "two.safetensors")
    with pytest.raises(InputError, match="no tensor 'layer_7'"):
        load_features(tmp_path / "two.safetensors", key="layer_7")


def test_bf16_safetensors_are_read_as_float32(tmp_path, features, torch):
    from safetensors.torch import save_file

    t = torch.from_numpy(features).to(torch.bfloat16)
    save_file({"h": t}, tmp_path / "bf16.safetensors")
    loaded = load_features(tmp_path / "bf16.safetensors")
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, t.float().numpy())


def test_parquet_round_trips_numeric_columns_and_vector_columns(tmp_path, features):
    import polars as pl

    wide = pl.DataFrame({f"f{j}": features[:, j] for j in range(features.shape[1])}).with_columns(
        pl.lit("text").alias("note")
    )
    wide.write_parquet(tmp_path / "wide.parquet")
    np.testing.assert_array_equal(load_features(tmp_path / "wide.parquet"), features)

    lists = pl.DataFrame({"id": range(len(features)), "h": [list(map(float, r)) for r in features]})
    lists.write_parquet(tmp_path / "list.parquet")
    np.testing.assert_allclose(load_features(tmp_path / "list.parquet"), features, rtol=0)

    arrays = pl.DataFrame({"h": features}, schema={"h": pl.Array(pl.Float32, features.shape[1])})
    arrays.write_parquet(tmp_path / "array.parquet")
    np.testing.assert_array_equal(load_features(tmp_path / "array.parquet"), features)

    ragged = pl.DataFrame({"h": [[1.0, 2.0], [3.0]]})
    ragged.write_parquet(tmp_path / "ragged.parquet")
    with pytest.raises(InputError, match="different lengths"):
        load_features(tmp_path / "ragged.parquet")


def test_unusable_feature_files_are_rejected_with_a_clear_message(tmp_path, features):
    with pytest.raises(InputError, match="does not exist"):
        load_features(tmp_path / "missing.npy")
    (tmp_path / "f.csv").write_text("1,2\n")
    with pytest.raises(InputError, match=r"use one of \.npy, \.safetensors, \.parquet"):
        load_features(tmp_path / "f.csv")
    np.save(tmp_path / "vector.npy", features[0])
    with pytest.raises(InputError, match=r"shape \(24,\); need 2-D"):
        load_features(tmp_path / "vector.npy")
    np.save(tmp_path / "cube.npy", np.stack([features, features]))
    with pytest.raises(InputError, match="need 2-D"):
        load_features(tmp_path / "cube.npy")
    bad = features.copy()
    bad[123, 4] = np.inf
    np.save(tmp_path / "inf.npy", bad)
    with pytest.raises(InputError, match="row 123"):
        load_features(tmp_path / "inf.npy")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="cannot read junk.safetensors"):
        load_features(tmp_path / "junk.safetensors")


def test_metrics_of_file_is_the_streamed_spectrum_of_the_file(tmp_path, features):
    np.save(tmp_path / "f.npy", features)
    values = metrics_of_file(tmp_path / "f.npy", chunk_rows=50, max_components=None, fit_start=3, fit_end=14)
    ref = authors_spectrum(features.astype(np.float64))
    assert_metrics_agree(values, metrics_of(ref, max_components=None, fit_start=3, fit_end=14))
    assert list(values) == [o for m in REGISTRY.values() for o in m.outputs]


def test_importing_the_spectrum_module_does_not_import_torch():
    code = "import sys, geowh.ingest.features.spectrum, geowh.spectrum_math; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("shape", [(30, 200), (64, 65), (5, 3000)])
def test_the_gram_path_gives_the_covariance_spectrum_of_a_wide_matrix(shape):
    m, d = shape
    f = power_law_features(m, d, seed=m) if d <= 200 else np.random.default_rng(1).standard_normal((m, d)) * 3 + 50
    lam = gram_eigenvalues(f, chunk_rows=7)
    assert_spectra_agree(lam, streamed(f).eigenvalues())
    assert_spectra_agree(lam, authors_spectrum(f))
    assert np.count_nonzero(lam) == m - 1  # centring removes one dimension


def test_a_wide_file_goes_through_the_gram_matrix_and_gives_the_covariance_metrics(tmp_path, monkeypatch):
    f = power_law_features(40, 300, seed=3)
    np.save(tmp_path / "wide.npy", f)
    via_gram = metrics_of_file(tmp_path / "wide.npy", max_components=None, fit_start=3, fit_end=30)
    assert_metrics_agree(via_gram, metrics_of(streamed(f).eigenvalues(), max_components=None, fit_start=3, fit_end=30))
    monkeypatch.setattr(spectrum, "Covariance", None)  # the wide file must not touch the d x d path at all
    assert metrics_of_file(tmp_path / "wide.npy", max_components=None, fit_start=3, fit_end=30) == via_gram


def test_a_10_by_40000_matrix_takes_megabytes_not_12_gib(tmp_path):
    np.save(tmp_path / "wide.npy", np.random.default_rng(0).standard_normal((10, 40_000)).astype(np.float32))
    how, needed = spectrum.spectrum_bytes(10, 40_000)
    assert how == "gram" and needed < 4e6
    assert spectrum.spectrum_bytes(40_000, 10)[0] == "covariance"
    assert metrics_of_file(tmp_path / "wide.npy")["rankme"] == pytest.approx(9, rel=0.05)


def test_a_spectrum_that_does_not_fit_in_memory_is_refused_with_the_estimate(tmp_path, monkeypatch):
    np.save(tmp_path / "f.npy", np.ones((50, 40)))
    monkeypatch.setattr(spectrum, "available_bytes", lambda: 1000)
    with pytest.raises(InputError, match=r"needs about 0\.0 GiB .*d x d covariance.*more than 80% of the 0\.0 GiB"):
        metrics_of_file(tmp_path / "f.npy")


def test_alpha_req_of_a_short_spectrum_says_how_many_eigenvalues_it_needs():
    values = {v.metric: v for v in compute_metrics(np.arange(10, 0, -1.0))}
    assert math.isnan(values["alpha_req"].value)
    assert "at least 14 eigenvalues above the numerical floor (10 here)" in values["alpha_req"].params["reason"]


def test_small_blocks_are_gathered_into_few_rank_k_updates(monkeypatch):
    calls = []
    real = spectrum.dsyrk

    def counting(*args, **kwargs):
        calls.append(args[1].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(spectrum, "dsyrk", counting)
    f = power_law_features(3000, 40, seed=11)
    cov = streamed(f, chunk=30)  # 100 blocks of 30 rows
    lam = cov.eigenvalues()
    assert calls == [(40, 2070), (40, 930)]  # one update once CHUNK_ROWS rows are gathered, one for the rest
    assert_spectra_agree(lam, authors_spectrum(f))
    part = streamed(f[:600], chunk=30)
    early = part.copy()  # a copy taken mid-gathering holds every row so far
    part.update(f[600:])
    assert_spectra_agree(early.eigenvalues(), authors_spectrum(f[:600]))
    assert_spectra_agree(part.eigenvalues(), lam)
