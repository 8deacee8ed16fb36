"""The HF doors on model families our own code never builds: Qwen3, Mistral, DistilBERT, RoBERTa and ViT from tiny
configs, each trained by ``EffTrainer`` with activation compression and QAT on one repeated batch."""

import math

import pytest
import torch

transformers = pytest.importorskip("transformers")


def _text_rows(vocab, n=8, length=16, labels="lm"):
    gen = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        ids = torch.randint(1, vocab, (length,), generator=gen)
        rows.append({"input_ids": ids, "labels": ids if labels == "lm" else torch.tensor(i % 2)})
    return rows


def _image_rows(n=8):
    gen = torch.Generator().manual_seed(0)
    return [{"pixel_values": torch.randn(3, 32, 32, generator=gen), "labels": torch.tensor(i % 2)} for i in range(n)]


SMALL_DECODER = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=128, head_dim=16)


def _models():
    return {
        "qwen3": (lambda: transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**SMALL_DECODER)),
                  lambda: _text_rows(128)),
        "mistral": (lambda: transformers.MistralForCausalLM(transformers.MistralConfig(**SMALL_DECODER)),
                    lambda: _text_rows(128)),
        "distilbert": (lambda: transformers.DistilBertForSequenceClassification(transformers.DistilBertConfig(
            vocab_size=128, dim=64, hidden_dim=128, n_layers=2, n_heads=4, num_labels=2)),
            lambda: _text_rows(128, labels="class")),
        "roberta": (lambda: transformers.RobertaForSequenceClassification(transformers.RobertaConfig(
            vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            num_labels=2)), lambda: _text_rows(128, labels="class")),
        "vit": (lambda: transformers.ViTForImageClassification(transformers.ViTConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=32,
            patch_size=8, num_labels=2)), _image_rows),
    }


@pytest.mark.parametrize("family", list(_models()))
def test_eff_trainer_trains_other_families_with_compression_and_qat(family, tmp_path):
    from effplug.hf import EffTrainer

    build, rows = _models()[family]
    torch.manual_seed(0)
    model = build()
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=8, per_device_train_batch_size=8,
                                          report_to=[], use_cpu=True, disable_tqdm=True, save_strategy="no",
                                          logging_steps=1, learning_rate=3e-3)
    trainer = EffTrainer(model=model, args=args, train_dataset=rows(), activation_compression="actnn",
                         quantization={"weight_bits": 8, "act_bits": 8})
    trainer.train()
    coverage = model._effplug_coverage
    # nothing is skipped for being unsupported; what stays float is the embedding (or the head tied to it)
    assert not coverage.unsupported and coverage.converted, coverage
    assert all("embedding" in reason for reason in coverage.left_float.values()), coverage.left_float
    report = trainer.activation_callback.engine.last_report
    assert report.ratio > 2, report
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 8 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0], losses  # one repeated batch: it must be learned
    assert all("act_saved_ratio" in entry for entry in trainer.state.log_history if "loss" in entry)
