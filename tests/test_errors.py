"""Bad input raises an error that says what to do: the audit of the public doors.

Each row is a call a user might make by mistake, the exception type, and a pattern its message must hold: the
class or field the user typed, and the valid choices or the fix. A bare AttributeError, KeyError or IndexError
from deep inside, or a call that succeeds, fails the row.
"""

import pytest
import torch
from torch import nn


def _mlp():
    return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))


def _core_rows():
    from effplug import codecs, kernels, optim, parallel, quant
    from effplug.comm import CGXCompressor, PowerSGDCompressor, TopKCompressor, make_compressor
    from effplug.compress import CompressionConfig, compressed_activations
    from effplug.quant import QATConfig, quantize_model
    from effplug.quant.binary import Binarizer
    from effplug.quant.lns import prepare_lns
    from effplug.quant.luq import prepare_luq

    return {
        # kernels and codecs
        "quantize_pack bits": (lambda: kernels.quantize_pack(torch.randn(8), bits=3), ValueError, "use one of 1, 2, 4, 8"),
        "quantize_pack int tensor": (lambda: kernels.quantize_pack(torch.arange(8), bits=4), ValueError,
                                     "use float32, float16 or bfloat16"),
        "quantize_pack list": (lambda: kernels.quantize_pack([1.0], bits=4), ValueError, "must be a torch.Tensor"),
        "unpack_dequantize str": (lambda: kernels.unpack_dequantize("x"), ValueError, "expects a QuantizedTensor"),
        "kernel_backend str": (lambda: kernels.kernel_backend("triton"), TypeError, "EFFPLUG_KERNELS=torch or triton"),
        "topk ratio 20": (lambda: kernels.topk_select(torch.randn(8), 20), ValueError, r"\(0, 1\]"),
        "log_quantize bits": (lambda: kernels.log_quantize(torch.randn(8), bits=0), ValueError, "from 2 to 8"),
        "Pow2Codec seed": (lambda: codecs.Pow2Codec(seed="x"), ValueError, "int or None"),
        # activation compression
        "CompressionConfig misspelled": (lambda: CompressionConfig(metod="actnn"), TypeError,
                                         r"CompressionConfig got unknown option\(s\) 'metod' \(did you mean 'method'\?\)"),
        "CompressionConfig method": (lambda: CompressionConfig(method="foo"), ValueError, "'actnn', 'gact'"),
        "CompressionConfig gact bits": (lambda: CompressionConfig(method="gact", bits=9), ValueError, "from 1 to 8"),
        "compressed_activations None": (lambda: compressed_activations(None, method="actnn").__enter__(), TypeError,
                                        "needs a torch.nn.Module"),
        "compressed_activations keyword": (lambda: compressed_activations(_mlp(), method="actnn", bitz=2).__enter__(), TypeError,
                                           "did you mean 'bits'"),
        # quantization
        "QATConfig misspelled": (lambda: QATConfig(bit=4), TypeError, r"QATConfig got unknown.*valid options: act_bits"),
        "QATConfig estimator": (lambda: QATConfig(weight_estimator="foo"), ValueError, "minmax, percentile"),
        "QATConfig bits": (lambda: QATConfig(weight_bits=16), ValueError, "from 2 to 8"),
        "QATConfig exclude int": (lambda: QATConfig(exclude=3), TypeError, "fnmatch patterns"),
        "quantize_model str": (lambda: quantize_model(_mlp(), "int4"), TypeError, "takes a QATConfig"),
        "quantize_model None": (lambda: quantize_model(None, QATConfig()), ValueError, "needs an nn.Module"),
        "set_bits on float": (lambda: quant.set_bits(_mlp(), 4), ValueError, "bit_widths="),
        "export float": (lambda: quant.export_quantized(_mlp()), ValueError, "quantize_model"),
        "octav_clip empty": (lambda: quant.octav_clip(torch.empty(0), 4), ValueError, "non-empty tensor"),
        "prepare_luq None": (lambda: prepare_luq(None), TypeError, "LUQ needs a torch.nn.Module"),
        "prepare_luq misspelled": (lambda: prepare_luq(_mlp(), bitz=4), TypeError, "prepare_luq got unknown"),
        "prepare_lns None": (lambda: prepare_lns(None), TypeError, "LNS needs a torch.nn.Module"),
        "prepare_lns bits": (lambda: prepare_lns(_mlp(), bits=2), ValueError, "from 3 to 16"),
        "prepare_lns misspelled": (lambda: prepare_lns(_mlp(), gama=8), TypeError,
                                   r"prepare_lns got unknown option\(s\) 'gama' \(did you mean 'gamma'\?\)"),
        "prepare_lns nothing": (lambda: prepare_lns(_mlp(), weights=False), ValueError, "nothing to quantize"),
        "Binarizer None": (lambda: Binarizer(None), TypeError, "Binarizer needs a torch.nn.Module"),
        "Binarizer exclude int": (lambda: Binarizer(_mlp(), exclude=3), TypeError, "fnmatch patterns"),
        # optimizers
        "Madam lr": (lambda: optim.Madam(_mlp().parameters(), lr=-1), ValueError, "must be > 0"),
        "LNSMadam misspelled": (lambda: optim.LNSMadam(_mlp().parameters(), base_factor=1), TypeError,
                                r"LNSMadam got unknown option\(s\) 'base_factor'; valid options: beta, bits"),
        # gradient compression
        "make_compressor name": (lambda: make_compressor("randomk"), ValueError, "choose one of"),
        "make_compressor misspelled": (lambda: make_compressor("topk", ratoi=0.1), TypeError, "did you mean 'ratio'"),
        "TopK ratio str": (lambda: TopKCompressor(ratio="0.1"), ValueError, r"\(0, 1\]"),
        "CGX bits": (lambda: CGXCompressor(bits=9), ValueError, "1, 2, 4 or 8"),
        "CGX bucket_size": (lambda: CGXCompressor(bucket_size=1000), ValueError, "bucket_size=1000"),
        "PowerSGD rank": (lambda: PowerSGDCompressor(rank=0), ValueError, ">= 1"),
        # ZeRO, planner and pipeline schedules
        "deepspeed_config stage": (lambda: parallel.deepspeed_config(5), ValueError, "0, 1, 2, 3"),
        "estimate_memory nan": (lambda: parallel.estimate_memory(float("nan"), 8, 3), ValueError, "positive finite"),
        "estimate_memory offload": (lambda: parallel.estimate_memory(1e9, 8, 3, offload="nvme"), ValueError,
                                    "'optimizer' or 'all'"),
        "plan headroom": (lambda: parallel.plan(1e9, 8, 80, headroom=1.5), ValueError, r"\(0, 1\]"),
        "split_sequential stages": (lambda: parallel.split_sequential(_mlp(), 9), ValueError, "use 2 to 5"),
        "chimera odd": (lambda: parallel.chimera(3, 4), ValueError, "even number of stages"),
        "simulate str": (lambda: parallel.simulate("gpipe"), TypeError, r"as gpipe\(depth, microbatches\) returns"),
    }


CORE_ROWS = list(_core_rows())


@pytest.mark.parametrize("row", CORE_ROWS)
def test_bad_input_says_what_to_do(row):
    call, kind, pattern = _core_rows()[row]
    with pytest.raises(kind, match=pattern):
        call()


def _door_rows():
    from effplug.callbacks import ActivationCompression, Binarization, QuantizationAwareTraining
    from effplug.precision import LNSPrecision, LUQPrecision
    from effplug.strategies import CompressedDDPStrategy, FSDP2Strategy, PipelineStrategy

    return {
        "ActivationCompression misspelled": (lambda: ActivationCompression(metod="actnn"), TypeError,
                                             "did you mean 'method'"),
        "ActivationCompression config and bits": (
            lambda: ActivationCompression(config={"method": "gact"}, bits=2), ValueError, "not both"),
        "QuantizationAwareTraining misspelled": (lambda: QuantizationAwareTraining(weight_bit=4), TypeError,
                                                 r"QuantizationAwareTraining got unknown.*'weight_bits'"),
        "Binarization misspelled": (lambda: Binarization(distil_weight=1.0), TypeError, "did you mean 'distill_weight'"),
        "Binarization exclude int": (lambda: Binarization(exclude=3), TypeError, "fnmatch patterns"),
        "LUQPrecision misspelled": (lambda: LUQPrecision(smpl=2), TypeError, r"LUQPrecision got unknown.*'smp'"),
        "LNSPrecision misspelled": (lambda: LNSPrecision(gama=8), TypeError, "did you mean 'gamma'"),
        "CompressedDDPStrategy misplaced": (lambda: CompressedDDPStrategy("topk", bits=4), ValueError,
                                            r"bits \(an option of cgx\)"),
        "CompressedDDPStrategy misspelled": (lambda: CompressedDDPStrategy("topk", ratoi=0.01), TypeError,
                                             "did you mean 'ratio'"),
        "PipelineStrategy misspelled": (lambda: PipelineStrategy(microbatch=4), TypeError,
                                        "did you mean 'microbatches'"),
        "PipelineStrategy module_attr": (lambda: PipelineStrategy(module_attr=3), TypeError, "module_attr='model'"),
        "FSDP2Strategy misspelled": (lambda: FSDP2Strategy(data_parallel=2), TypeError,
                                     "did you mean 'data_parallel_size'"),
    }


@pytest.mark.parametrize("row", ["ActivationCompression misspelled", "ActivationCompression config and bits",
                                 "QuantizationAwareTraining misspelled", "Binarization misspelled",
                                 "Binarization exclude int", "LUQPrecision misspelled", "LNSPrecision misspelled",
                                 "CompressedDDPStrategy misplaced", "CompressedDDPStrategy misspelled",
                                 "PipelineStrategy misspelled", "PipelineStrategy module_attr",
                                 "FSDP2Strategy misspelled"])
def test_lightning_doors_say_what_to_do(row):
    pytest.importorskip("pytorch_lightning")
    call, kind, pattern = _door_rows()[row]
    with pytest.raises(kind, match=pattern):
        call()


def test_hf_doors_say_what_to_do(tmp_path):
    transformers = pytest.importorskip("transformers")
    from effplug import hf

    args = transformers.TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    rows = [
        (lambda: hf.EffTrainer(model=_mlp(), args=args, activaton_compression="actnn"), TypeError,
         r"EffTrainer got unknown option\(s\) 'activaton_compression' \(did you mean 'activation_compression'\?\)"),
        (lambda: hf.EffTrainer(model=_mlp(), args=args, quantization="int4"), TypeError, "takes a QATConfig"),
        (lambda: hf.EffTrainer(model=_mlp(), args=args, comm="topk_ef"), ValueError, "choose one of"),
        (lambda: hf.ActivationCompressionCallback(metod="actnn"), TypeError, "did you mean 'method'"),
        (lambda: hf.BinarizationCallback(foo=1), TypeError, "valid options: binarize_activations"),
        (lambda: hf.compress_gradients(None), TypeError, "compress_gradients"),
    ]
    for call, kind, pattern in rows:
        with pytest.raises(kind, match=pattern):
            call()


def test_checked_constructors_keep_their_signatures():
    # LightningCLI (jsonargparse) reads the signature: the keyword check must not hide it
    import inspect

    from effplug.compress import CompressionConfig
    from effplug.quant import QATConfig

    assert "weight_bits" in inspect.signature(QATConfig).parameters
    assert "method" in inspect.signature(CompressionConfig).parameters
    assert QATConfig(weight_bits=3) == QATConfig(weight_bits=3)
