"""The ahead-of-time compile tier: every Triton kernel compiles for sm_80 and sm_90, within its budgets.

It runs ``effplug kernels --compile sm_80 sm_90`` in a subprocess without ``TRITON_INTERPRET`` (the interpreter
cannot build GPU binaries) over the covering set of variants: each dtype, bit width, rounding mode, scale dtype
and output form at least once.
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")


@pytest.fixture(scope="module")
def tier(tmp_path_factory):
    out = tmp_path_factory.mktemp("tier") / "tier.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "effplug", "kernels", "--compile", "sm_80", "sm_90", "--json",
                           str(out), "--no-progress"], capture_output=True, text=True, env=env, timeout=900)
    if "cuobjdump" in done.stderr and "No such file" in done.stderr:
        pytest.skip("this triton wheel ships no NVIDIA tools")
    assert out.exists(), done.stderr[-3000:]
    return done, json.loads(out.read_text())


def test_every_kernel_variant_compiles_for_sm80_and_sm90(tier):
    import effplug.kernels.triton_kernels as kernels

    done, report = tier
    rows = report["rows"]
    assert done.returncode == 0 and not [r for r in rows if r["error"]], done.stdout[-3000:]
    launched = {name for name in dir(kernels) if name.endswith("_kernel")}
    assert {r["variant"]["kernel"] for r in rows} == launched
    assert {r["target"] for r in rows} == {"sm_80", "sm_90"}
    quantize = [r["variant"]["constexprs"] for r in rows if r["variant"]["kernel"] == "_quantize_pack_kernel"]
    assert {q["BITS"] for q in quantize} == {"1", "2", "4", "8"} and {q["STOCHASTIC"] for q in quantize} == {"True", "False"}


def test_no_variant_spills_or_exceeds_the_register_budget(tier):
    from effplug.kernels.compile_tier import KNOWN_SPILLS

    _, report = tier
    budget = report["register_budget"]

    def allowed(r):  # a declared exception, within its declared bytes
        known = KNOWN_SPILLS.get((r["variant"]["kernel"], r["target"]))
        return known is not None and r["spill_bytes"] <= known[0]

    over = [(r["variant"]["kernel"], r["variant"]["label"], r["target"], r["registers"], r["spill_bytes"])
            for r in report["rows"] if (r["spill_bytes"] and not allowed(r)) or r["registers"] > budget]
    assert not over, over


def test_gpu_suite_refuses_without_a_gpu_and_its_parts_run_on_cpu():
    import importlib.util
    from pathlib import Path

    import torch

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.py"
    spec = importlib.util.spec_from_file_location("gpu_suite", path)
    suite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite)
    if not torch.cuda.is_available():
        assert suite.main(["--no-docs"]) == 2  # says what to do instead of measuring a CPU as a GPU
    cpu = torch.device("cpu")
    bandwidth = suite.kernel_bandwidth(cpu, suite.CHECK)
    assert [r["kernel"] for r in bandwidth] == ["quantize_pack 4-bit nearest", "quantize_pack 4-bit SR"]
    assert all(r["gbs"] > 0 and r["copy_gbs"] > 0 for r in bandwidth)
    steps = suite.step_overhead_and_peak(cpu, suite.CHECK)
    assert [r["config"] for r in steps] == ["baseline", "actnn 4-bit"] and steps[1]["saved_ratio"] > 2
    fused = suite.fused_ops(cpu, suite.CHECK)
    assert [r["op"] for r in fused] == ["rms_norm", "layer_norm", "swiglu", "rope", "softmax", "linear + cross-entropy"]
    assert all(r["effplug_error"] < 1e-4 and r["effplug_ms"] > 0 for r in fused), fused
    syncs = suite.host_syncs(cpu, suite.CHECK)  # runs every method and compressor; counts need a GPU
    assert [r["what"] for r in syncs] == ["actnn step", "division step", "mesa step", "comet step", "gact step",
                                          "topk average", "natural average", "cgx average", "dither average"]
    assert all(r["syncs"] is None and r["tensors"] >= 1 for r in syncs)
    text = suite.tables("CPU", bandwidth + steps + fused + syncs)
    assert "| quantize_pack 4-bit SR |" in text and "| rope | float32 |" in text and "| gact step | n/a (CPU) |" in text
