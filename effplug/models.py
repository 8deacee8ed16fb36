"""Small reference models, built from code or HF configs with random init (no downloads)."""

from __future__ import annotations

import torch
from torch import nn

from effplug._optional import require


def _activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "hardtanh":
        return nn.Hardtanh(inplace=True)
    raise ValueError(f"activation={name!r} is not supported; use relu or hardtanh")


class _BasicBlock(nn.Module):
    def __init__(self, channels: int, activation: str = "relu"):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = _activation(activation)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


class DigitsResNet(nn.Module):
    """A small ResNet for 1x8x8 digits: stem, two residual stages around a max-pool, global average pool.

    ``activation="hardtanh"`` gives the binary-network variant (IR-Net's ResNets): sign() of a ReLU output
    would be constant.
    """

    def __init__(self, width: int = 32, num_classes: int = 10, activation: str = "relu"):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), _activation(activation)
        )
        self.stage1 = _BasicBlock(width, activation)
        self.pool = nn.MaxPool2d(2)
        self.stage2 = _BasicBlock(width, activation)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        x = self.stage2(self.pool(self.stage1(self.stem(x))))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _transformers():
    return require("transformers", extra="hf")


def tiny_gpt2(vocab_size: int = 128, n_positions: int = 128, n_embd: int = 64, n_layer: int = 2, n_head: int = 2, **kw):
    """A GPT-2 LM head model from ``GPT2Config`` (random init). Extra keywords go to the config."""
    tf = _transformers()
    config = tf.GPT2Config(
        vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        bos_token_id=0, eos_token_id=0, **kw,
    )
    return tf.GPT2LMHeadModel(config)


def tiny_bert(vocab_size: int = 1000, hidden_size: int = 64, num_hidden_layers: int = 2, num_labels: int = 2, **kw):
    """A BERT sequence classifier from ``BertConfig`` (random init)."""
    tf = _transformers()
    config = tf.BertConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
        num_attention_heads=kw.pop("num_attention_heads", 2), intermediate_size=kw.pop("intermediate_size", 4 * hidden_size),
        max_position_embeddings=kw.pop("max_position_embeddings", 128), num_labels=num_labels, **kw,
    )
    return tf.BertForSequenceClassification(config)


def tiny_llama(vocab_size: int = 128, hidden_size: int = 64, num_hidden_layers: int = 2, **kw):
    """A Llama causal LM from ``LlamaConfig`` (random init)."""
    tf = _transformers()
    config = tf.LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
        num_attention_heads=kw.pop("num_attention_heads", 2), num_key_value_heads=kw.pop("num_key_value_heads", 2),
        intermediate_size=kw.pop("intermediate_size", 4 * hidden_size),
        max_position_embeddings=kw.pop("max_position_embeddings", 128), **kw,
    )
    return tf.LlamaForCausalLM(config)
