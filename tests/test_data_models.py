import pytest
import torch

from effplug import data, models


def test_digits_has_a_fixed_stratified_split():
    a, b = data.digits(), data.digits()
    assert a.train_x.shape == (1347, 1, 8, 8) and a.test_x.shape == (450, 1, 8, 8)
    assert torch.equal(a.test_y, b.test_y) and torch.equal(a.train_x, b.train_x)
    assert 0.0 <= a.train_x.min() and a.train_x.max() <= 1.0
    assert torch.bincount(a.test_y).min() >= 43


def test_stdlib_text_is_deterministic_and_round_trips():
    a = data.stdlib_text(max_chars=50_000)
    b = data.stdlib_text(max_chars=50_000)
    assert torch.equal(a.train, b.train) and a.vocab == b.vocab
    assert a.train.numel() + a.val.numel() == 50_000 and a.val.numel() == 5_000
    assert "def" in a.decode(a.train[:5000])
    assert torch.equal(a.encode(a.decode(a.val[:100])), a.val[:100])
    x, y = a.windows("train", 32, 8, seed=0)
    assert x.shape == y.shape == (8, 32) and torch.equal(x[:, 1:], y[:, :-1])
    with pytest.raises(ValueError, match="not in the vocabulary"):
        a.encode("\u2603")
    with pytest.raises(ValueError, match="max_chars"):
        data.stdlib_text(max_chars=10)
    with pytest.raises(ValueError, match="val_fraction"):
        data.stdlib_text(val_fraction=1.5)


def test_synthetic_kinds():
    x, y = data.synthetic("classification", n=64, dim=5, classes=3)
    assert x.shape == (64, 5) and y.max() < 3
    x, y = data.synthetic("tokens", n=4, seq_len=10, vocab_size=20)
    assert x.shape == (4, 10) and torch.equal(x[:, 1:], y[:, :-1])
    before = torch.get_rng_state()
    data.synthetic("regression", n=8)
    assert torch.equal(before, torch.get_rng_state())
    with pytest.raises(ValueError, match="classification, regression, tokens"):
        data.synthetic("images")


def test_models_build_without_downloads_and_run():
    resnet = models.DigitsResNet()
    assert resnet(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in resnet.modules())
    assert any(isinstance(m, torch.nn.ReLU) and m.inplace for m in resnet.modules())
    ids = torch.randint(0, 50, (2, 16))
    assert models.tiny_gpt2(vocab_size=50, n_positions=16)(input_ids=ids).logits.shape == (2, 16, 50)
    assert models.tiny_llama(vocab_size=50)(input_ids=ids).logits.shape == (2, 16, 50)
    assert models.tiny_bert(vocab_size=50)(input_ids=ids).logits.shape == (2, 2)
