"""bf16 on the CPU: when `--dtype auto` picks it, and that it does not distort the geometry."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
from tiny import tiny_model

torch = pytest.importorskip("torch")


def _metrics(model, ids, layer: int) -> dict:
    from geowh.ingest.features.extract import extract_features
    from geowh.ingest.features.spectrum import Covariance
    from geowh.spectrum_math import compute_metrics, metrics_dict

    cov = Covariance(model.config.hidden_size)
    for batch in extract_features(model, ids, pad_id=0, layers=[layer]):
        cov.update(batch.features[(layer, "last")])
    return metrics_dict(compute_metrics(cov.eigenvalues()))


@pytest.fixture(scope="module")
def offset_model():
    """A d = 32 GPT-NeoX whose last hidden state sits far from the origin with a steep spectrum.

    Trained models look like this (dimensions whose mean is many standard deviations): bf16
    rounds such a value with an error relative to its mean, not to its spread, which flattens
    or zeroes the small directions of the spectrum's tail, where αReQ is fitted.
    """
    model = tiny_model(d=32, vocab=1000).base_model.eval()
    with torch.no_grad():
        model.final_layer_norm.bias[:] = 40.0 * torch.linspace(0.5, 1.5, 32)
        model.final_layer_norm.weight[:] = torch.logspace(0, -2, 32)
    g = torch.Generator().manual_seed(0)
    ids = [torch.randint(5, 1000, (int(n),), generator=g).tolist() for n in torch.randint(8, 40, (300,), generator=g)]
    return model, ids


def test_bf16_features_give_the_fp32_alpha_req_because_the_final_norm_runs_in_fp32(offset_model):
    model, ids = offset_model
    fp32 = _metrics(model, ids, 2)
    bf16 = _metrics(copy.deepcopy(model).to(torch.bfloat16), ids, 2)
    # Without the fp32 final norm αReQ moves by 23 % here (9.76 → 7.53); with it, by 0.4 %.
    assert bf16["alpha_req"] == pytest.approx(fp32["alpha_req"], rel=0.02)
    assert bf16["rankme"] == pytest.approx(fp32["rankme"], rel=0.02)


def test_the_fp32_final_norm_leaves_the_bf16_model_as_it_was(offset_model):
    from geowh.ingest.features.extract import fp32_final_norm

    model, ids = offset_model
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    x = torch.tensor([ids[0]])
    with torch.no_grad(), fp32_final_norm(bf16):
        inside = bf16(input_ids=x).last_hidden_state
    with torch.no_grad():
        after = bf16(input_ids=x).last_hidden_state
    assert inside.dtype == torch.float32 and after.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())


def test_the_loss_head_reads_the_fp32_final_norm_of_a_bf16_model(offset_model):
    """The head is bf16, the last hidden state fp32: the probe's loss still comes out."""
    from geowh.ingest.features.extract import extract_features

    model, ids = offset_model
    causal = tiny_model(d=32, vocab=1000).to(torch.bfloat16)
    out = list(extract_features(causal.base_model, ids[:8], pad_id=0, layers=[2], head=causal.get_output_embeddings()))
    assert sum(b.predicted for b in out) > 0 and all(b.nll > 0 for b in out)


def test_auto_picks_bf16_on_the_cpu_exactly_when_the_cpu_has_native_bf16(monkeypatch):
    from geowh.ingest.sources.models import cpu_native_bf16, resolve_dtype

    cpu = torch.device("cpu")
    for value, expected in (("1", torch.bfloat16), ("0", torch.float32)):
        monkeypatch.setenv("GEOWH_CPU_BF16", value)
        assert resolve_dtype("auto", cpu) == expected
        assert resolve_dtype("float32", cpu) == torch.float32  # explicit dtypes are never changed
    monkeypatch.delenv("GEOWH_CPU_BF16")
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo to compare torch's capability query with")
    flags = set(cpuinfo.read_text().split())
    assert cpu_native_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})
    assert resolve_dtype("auto", cpu) == (torch.bfloat16 if cpu_native_bf16() else torch.float32)


def test_the_test_suite_pins_auto_to_fp32():
    assert os.environ.get("GEOWH_CPU_BF16") == "0"
