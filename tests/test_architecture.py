"""docs/architecture.md, held: every engine that stores or sends a tensor in fewer bits goes through a codec.

Only ``effplug/kernels`` and ``effplug/codecs`` call the encoding formulas. The QAT forward (fake quantization)
and compute ops produce tensors, not payloads, and call their kernels directly (``fake_quantize`` is not listed).
"""

import ast
from pathlib import Path

import effplug

PACKAGE = Path(effplug.__file__).parent
ENCODERS = {"quantize_pack", "unpack_dequantize", "pow2_encode", "pow2_encode_many", "pow2_decode", "topk_select",
            "log_quantize", "quantize_affine", "dequantize_affine", "uniform24", "random_words"}
CORE = ("kernels", "codecs")


def _uses(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.Name):
            names.add(node.id)
    return names & ENCODERS


def test_only_kernels_and_codecs_call_the_encoding_formulas():
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] in CORE:
            continue
        used = _uses(path)
        if used:
            offenders[str(relative)] = sorted(used)
    assert not offenders, f"call a codec (effplug.codecs) instead: {offenders}"


def test_every_codec_keeps_the_contract():
    import torch

    from effplug.codecs import Codec, Pow2Codec, TopKCodec, UniformCodec
    from effplug.codecs.affine import AffineCodec

    x = torch.randn(3, 40)
    for codec, kwargs in ((UniformCodec(4, 32, seed=0), {}), (Pow2Codec(seed=0), {}), (TopKCodec(0.1), {}),
                          (AffineCodec(4, seed=0), {"low": x.amin(0) - 1, "step": torch.full((40,), 0.5), "axis": 1})):
        assert isinstance(codec, Codec)
        payload = codec.encode(x, "w", **kwargs)
        out = codec.decode(payload)
        assert out.shape == x.shape and out.dtype == x.dtype
        assert codec.nbytes(payload) == payload.nbytes > 0


def test_every_forward_quantizer_shares_one_base_and_one_switch():
    import torch
    from torch import nn

    from effplug.quant import QATConfig, quantize_model, set_quantization_enabled
    from effplug.quant.binary import SignQuantizer
    from effplug.quant.fake_quantizer import FakeQuantize
    from effplug.quant.lns import LNSQuantizer
    from effplug.quant.luq import SAWBQuantizer
    from effplug.quant.nested import NestedWeightQuantizer
    from effplug.quant.quantizer import Quantizer

    for kind in (FakeQuantize, NestedWeightQuantizer, SAWBQuantizer, LNSQuantizer, SignQuantizer):
        assert issubclass(kind, Quantizer), kind
    model = quantize_model(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)),
                           QATConfig(weight_bits=2, act_bits=2))
    x = torch.randn(4, 8)
    quantized = model(x)
    set_quantization_enabled(model, False)
    assert all(not q.enabled for q in model.modules() if isinstance(q, Quantizer))
    float_out = model(x)
    assert not torch.equal(quantized, float_out)
    set_quantization_enabled(model, True)
    assert torch.equal(model.eval()(x), model(x))


def test_renamed_modules_keep_their_old_names_with_a_warning():
    import importlib
    import sys

    import pytest

    for old, new, name in (("effplug.kernels.quant", "effplug.kernels.pack", "quantize_pack"),
                           ("effplug.quant.fake_quant", "effplug.quant.fake_quantizer", "FakeQuantize"),
                           ("effplug.comm.acsgd", "effplug.parallel.pipeline.acsgd", "ACSGDCodec"),
                           ("effplug.parallel.chimera", "effplug.parallel.pipeline.chimera", "ChimeraRunner"),
                           ("effplug.parallel.acsgd_stage", "effplug.parallel.pipeline.acsgd_stage", "ACSGDStages")):
        sys.modules.pop(old, None)
        with pytest.warns(FutureWarning, match=new):
            module = importlib.import_module(old)
        assert getattr(module, name) is getattr(importlib.import_module(new), name)


def test_every_activation_method_is_a_compression_method():
    from effplug.compress.engine import METHOD_CLASSES
    from effplug.compress.method import CompressionMethod

    assert set(METHOD_CLASSES) == {"actnn", "gact", "mesa", "comet", "division"}
    for name, cls in METHOD_CLASSES.items():
        assert issubclass(cls, CompressionMethod) and cls.name == name


def test_demo_rows_come_from_their_families():
    import inspect

    from effplug import demo

    source = inspect.getsource(demo)
    for row in ("ActivationCompression", "QuantizationAwareTraining", "LUQPrecision", "CompressedDDPStrategy"):
        assert row not in source, row  # registered by the family's demo_rows module, not in the loop
    families = {c.trainer_kwargs.__module__ for c in demo.DEMO_CONFIGS.values() if c.name != "fp32 baseline"}
    assert families == set(demo.FAMILY_ROWS)


def test_the_pipeline_doors_build_their_runner_through_one_builder():
    import inspect

    import effplug.strategies.pipeline as strategy

    recipe = (PACKAGE.parent / "recipes" / "hf_pipeline_gpt2.py").read_text()
    for source in (inspect.getsource(strategy), recipe):
        assert "build_pipeline(" in source and ".run(" in source
        assert 'schedule == "chimera"' not in source and "ChimeraRunner(" not in source
