import os

# Must be set before triton is imported anywhere, so Triton kernels run on CPU tensors in the interpreter.
os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib.util  # noqa: E402

import pytest  # noqa: E402

HAS_TRITON = importlib.util.find_spec("triton") is not None
BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.skipif(not HAS_TRITON, reason="triton not installed"))]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Run a test once per kernel backend (Triton through the interpreter on CPU)."""
    monkeypatch.setenv("EFFPLUG_KERNELS", request.param)
    return request.param


@pytest.fixture
def use_backend(monkeypatch):
    def _use(name):
        monkeypatch.setenv("EFFPLUG_KERNELS", name)

    return _use


def run_door_worker(worker_name: str, tmp_path_factory, world: int = 2) -> list:
    """Launch ``tests/<worker_name>`` once per rank (torchrun-style env); return each rank's ``rank<r>.json``."""
    import json
    from pathlib import Path

    from effplug.launch import launch_ranks

    out = tmp_path_factory.mktemp(worker_name.removesuffix(".py"))
    here = Path(__file__).parent
    launch_ranks([str(here / worker_name), str(out)], world=world, timeout=600, PYTHONPATH=str(here.parent))
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


def digits_resnet(**kw):
    """A small seeded DigitsResNet (width 8) for the QAT, once-QAT and DIR-Net tests."""
    import torch

    from effplug.models import DigitsResNet

    torch.manual_seed(0)
    return DigitsResNet(width=8, **kw)


def tiny_qwen2(num_hidden_layers: int = 2):
    """A seeded Qwen2ForCausalLM from a tiny config (hidden 32, vocab 64): the HF door tests' decoder."""
    import torch
    import transformers

    torch.manual_seed(0)
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        hidden_size=32, intermediate_size=64, num_hidden_layers=num_hidden_layers, num_attention_heads=2,
        num_key_value_heads=1, vocab_size=64))


def lm_rows(vocab: int = 64, n: int = 8, length: int = 12) -> list:
    """``n`` seeded causal-LM rows (labels = input_ids) for an HF Trainer's train_dataset."""
    import torch

    gen = torch.Generator().manual_seed(0)
    return [{"input_ids": ids, "labels": ids} for ids in torch.randint(1, vocab, (n, length), generator=gen)]
