"""Layer coverage: the share of weight-matrix parameters each technique converts, on models beyond our own.

    python benchmarks/coverage.py                 # Lightning's demo Transformer, HF GPT-2/Llama/Qwen2/Qwen3/Mistral/T5/DistilBERT/RoBERTa/ViT
    python benchmarks/coverage.py --json out.json

Models are built from tiny configs (no downloads). For each model and technique (QAT, LUQ, LNS) the table gives
the layers converted, the share of weight-matrix parameters (2-D and up) they hold, what is left in float by a
setting, and what is left because the technique does not support it (the conversion's WARNING).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tasks import write_report  # noqa: E402


def models() -> dict:
    import transformers
    from pytorch_lightning.demos import Transformer

    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=256)
    return {
        "lightning-demo-transformer": lambda: Transformer(),
        "gpt2": lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4,
                                                                             vocab_size=256)),
        "llama": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(**small)),
        "qwen2": lambda: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**small)),
        "qwen3": lambda: transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**small, head_dim=16)),
        "mistral": lambda: transformers.MistralForCausalLM(transformers.MistralConfig(**small)),
        "t5": lambda: transformers.T5ForConditionalGeneration(transformers.T5Config(
            vocab_size=256, d_model=64, d_ff=128, num_layers=2, num_heads=4, d_kv=16)),
        "distilbert": lambda: transformers.DistilBertForSequenceClassification(transformers.DistilBertConfig(
            vocab_size=256, dim=64, hidden_dim=128, n_layers=2, n_heads=4)),
        "roberta": lambda: transformers.RobertaForSequenceClassification(transformers.RobertaConfig(
            vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)),
        "vit": lambda: transformers.ViTForImageClassification(transformers.ViTConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=32,
            patch_size=8)),
    }


def techniques() -> dict:
    from effplug.quant import QATConfig, quantize_model
    from effplug.quant.lns import prepare_lns
    from effplug.quant.luq import prepare_luq

    return {"QAT": lambda m: quantize_model(m, QATConfig(weight_bits=4, act_bits=8)),
            "LUQ": lambda m: prepare_luq(m), "LNS": lambda m: prepare_lns(m)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="bench_out/coverage.json")
    args = parser.parse_args(argv)
    logging.getLogger("effplug.quant").setLevel(logging.ERROR)  # the table below says it all
    rows = []
    for model_name, build in models().items():
        for technique, convert in techniques().items():
            torch.manual_seed(0)
            model = build()
            report = convert(model)._effplug_coverage
            rows.append({"model": model_name, "technique": technique, "converted": len(report.converted),
                         "share": report.share, "left_float": len(report.left_float),
                         "unsupported": sorted({t for t in report.unsupported.values()})})
    print("| model | technique | layers converted | weight-matrix parameters covered | left in float (settings) | unsupported types |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['technique']} | {r['converted']} | {100 * r['share']:.1f}% | {r['left_float']} | "
              f"{', '.join(r['unsupported']) or '-'} |")
    write_report(args.json, rows, steps=0, device="cpu")


if __name__ == "__main__":
    main()
