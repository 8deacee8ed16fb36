"""Magnitude pruning: masks per pattern, the cubic schedule, masks as checkpointed state, both doors, and
export of pruned (and QAT) layers into SparseLinear."""

import logging

import pytest
import torch
from conftest import lm_rows, tiny_qwen2

from effplug.sparse import SparseLinear
from effplug.sparse.pruning import Pruner, PruningConfig, export_sparse, magnitude_mask


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 24), torch.nn.ReLU(),
                               torch.nn.Linear(24, 10))


def test_patterns_give_their_structure_and_exact_sparsity():
    w = torch.randn(22, 36)
    keep = magnitude_mask(w, 0.75, "unstructured")
    assert int((~keep).sum()) == round(0.75 * w.numel())
    assert w.abs()[keep].min() >= w.abs()[~keep].max()
    vec = magnitude_mask(w, 0.5, "vector", vector=4)
    padded = torch.cat([vec, vec[-1:].expand(2, -1)])  # rows 22, 23 pad the last vector
    assert (padded.view(6, 4, 36).all(1) == padded.view(6, 4, 36).any(1)).all()
    nm = magnitude_mask(w, 0.0, "2:4")
    assert (nm.view(22, 9, 4).sum(-1) == 2).all()


def test_cubic_schedule_is_zhu_and_gupta_and_masks_only_shrink():
    cfg = PruningConfig(sparsity=0.8, schedule="cubic", start_step=10, end_step=50, frequency=10)
    assert cfg.target_sparsity(5) is None and cfg.target_sparsity(15) is None and cfg.target_sparsity(51) is None
    assert cfg.target_sparsity(30) == pytest.approx(0.8 * (1 - (1 - 0.5) ** 3))
    assert cfg.target_sparsity(50) == pytest.approx(0.8)
    model = _mlp()
    pruner = Pruner(model, cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(64, 16), torch.randint(0, 10, (64,))
    previous = None
    for step in range(60):
        pruner.update(step)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        pruner.apply()
        masks = {k: v.clone() for k, v in pruner.masks.items()}
        if previous:
            assert all((masks[k] <= previous[k]).all() for k in masks)  # nothing revived
        previous = masks
    assert pruner.sparsity() == pytest.approx(0.8, abs=0.01)
    assert all((model[int(k)].weight[~m] == 0).all() for k, m in pruner.masks.items())


def test_layers_left_dense_are_reported_once(caplog):
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(10, 8)
            self.body = torch.nn.Linear(8, 8)
            self.odd = torch.nn.Linear(6, 5)
            self.head = torch.nn.Linear(8, 10, bias=False)
            self.head.weight = self.embed.weight

    with caplog.at_level(logging.WARNING, logger="effplug.sparse"):
        pruner = Pruner(Tied(), PruningConfig(pattern="2:4", keep_last=False))
        pruner.update(0)
    assert set(pruner.layers) == {"body"}
    text = caplog.text
    assert "head" in text and "tied" in text and "not a multiple of M=4" in text
    assert text.count("leaves head dense") == 1


def test_bad_settings_say_what_to_do():
    with pytest.raises(ValueError, match="use 'unstructured', 'vector' or 'N:M'"):
        PruningConfig(pattern="blocks")
    with pytest.raises(ValueError, match="needs end_step > start_step"):
        PruningConfig(schedule="cubic")
    with pytest.raises(ValueError, match="use schedule='one-shot'"):
        PruningConfig(pattern="2:4", schedule="cubic", end_step=10)
    with pytest.raises(ValueError, match=r"sparsity=1.0 must be in \[0, 1\)"):
        PruningConfig(sparsity=1.0)


def test_non_finite_weights_keep_the_previous_mask(caplog):
    model = _mlp()
    pruner = Pruner(model, PruningConfig(sparsity=0.5, schedule="cubic", end_step=20, frequency=10))
    pruner.update(10)
    before = {k: v.clone() for k, v in pruner.masks.items()}
    model[0].weight.data[0, 0] = float("nan")
    with caplog.at_level(logging.WARNING, logger="effplug.sparse"):
        pruner.update(20)
    assert torch.equal(pruner.masks["0"], before["0"]) and "non-finite" in caplog.text
    assert not torch.equal(pruner.masks["2"], before["2"])


def test_state_round_trips_as_plain_tensors(tmp_path):
    model = _mlp()
    pruner = Pruner(model, PruningConfig(sparsity=0.6, pattern="vector", vector=2))
    pruner.update(0)
    torch.save(pruner.state_dict(), tmp_path / "p.pt")
    fresh = _mlp()
    again = Pruner(fresh, PruningConfig(sparsity=0.6, pattern="vector", vector=2))
    again.load_state_dict(torch.load(tmp_path / "p.pt", weights_only=True))
    assert all(torch.equal(again.masks[k], pruner.masks[k]) for k in pruner.masks)
    assert (fresh[0].weight[~again.masks["0"]] == 0).all() and again.last_update == 0
    with pytest.raises(ValueError, match="does not prune"):
        Pruner(torch.nn.Sequential(torch.nn.Linear(16, 4), torch.nn.Linear(4, 2)), PruningConfig()).load_state_dict(
            pruner.state_dict())


def test_hf_gpt2_conv1d_is_pruned_along_its_output_rows_and_exports():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=40,
                                                                 n_positions=16)).eval()
    pruner = Pruner(model, PruningConfig(sparsity=0.5, pattern="vector", vector=4))
    assert "lm_head" not in pruner.layers  # tied to the embedding, and the output layer
    pruner.update(0)
    mlp = model.transformer.h[0].mlp.c_fc  # Conv1D, weight [in=32, out=128]
    mask_out_in = pruner.masks["transformer.h.0.mlp.c_fc"].T
    assert (mask_out_in.view(32, 4, 32).all(1) == mask_out_in.view(32, 4, 32).any(1)).all()
    ids = torch.randint(0, 40, (2, 12))
    before = model(ids).logits
    replaced = export_sparse(model, pruner, vector=4, bits=8, dense_bits=16)
    assert isinstance(model.transformer.h[0].mlp.c_fc, SparseLinear) and len(replaced) == 4
    assert mlp is not model.transformer.h[0].mlp.c_fc
    assert (model(ids).logits - before).abs().max() < 0.05


def test_qat_gpt2_conv1d_is_still_found():
    transformers = pytest.importorskip("transformers")
    from effplug.quant import QATConfig, quantize_model

    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=40,
                                                                 n_positions=16))
    quantize_model(model, QATConfig(weight_bits=8, act_bits=8))
    pruner = Pruner(model, PruningConfig(sparsity=0.5))
    assert type(pruner.layers["transformer.h.0.mlp.c_fc"]).__name__ == "QuantConv1D" and len(pruner.layers) == 4
    pruner.update(0)
    assert export_sparse(model, pruner) and isinstance(model.transformer.h[0].attn.c_attn, SparseLinear)


def _lit_module(pl):
    from pytorch_lightning.demos import Transformer

    class LM(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.model = Transformer(vocab_size=32, ninp=32, nhead=2, nhid=64, nlayers=1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.nll_loss(self.model(x, y).view(-1, 32), y.view(-1))

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    return LM()


def test_lightning_door_prunes_checkpoints_resumes_and_composes_with_qat(tmp_path):
    pl = pytest.importorskip("pytorch_lightning")
    from effplug.callbacks import Pruning, QuantizationAwareTraining

    gen = torch.Generator().manual_seed(0)
    data = [(torch.randint(0, 32, (10,), generator=gen), torch.randint(0, 32, (10,), generator=gen))
            for _ in range(16)]

    def trainer(steps, **kw):
        return pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                          enable_model_summary=False, default_root_dir=tmp_path, enable_checkpointing=False,
                          callbacks=[QuantizationAwareTraining(weight_bits=8, act_bits=8),
                                     Pruning(sparsity=0.75, pattern="vector", schedule="cubic", end_step=4,
                                             frequency=2)], **kw)

    loader = torch.utils.data.DataLoader(data, batch_size=4)
    first = trainer(3)
    module = _lit_module(pl)
    first.fit(module, loader)
    pruning = first.callbacks[1] if isinstance(first.callbacks[1], Pruning) else \
        next(c for c in first.callbacks if isinstance(c, Pruning))
    assert 0.0 < pruning.engine.sparsity() < 0.75 and pruning.engine.last_update == 2
    first.save_checkpoint(tmp_path / "p.ckpt")
    resumed = trainer(6)
    again = _lit_module(pl)
    resumed.fit(again, loader, ckpt_path=str(tmp_path / "p.ckpt"))
    engine = next(c for c in resumed.callbacks if isinstance(c, Pruning)).engine
    assert engine.sparsity() == pytest.approx(0.75, abs=0.01) and engine.last_update == 4
    assert all((m <= pruning.engine.masks[k]).all() for k, m in engine.masks.items())  # resumed, then shrank
    layer = next(name for name in engine.layers if type(engine.layers[name]).__name__ == "QuantLinear")
    replaced = export_sparse(again, engine, vector=4, bits=4)
    assert replaced[layer].bits == 4 and torch.equal(replaced[layer].element_mask.any(), torch.tensor(True))
    x = torch.randint(0, 32, (2, 10))
    assert torch.isfinite(again.model(x, x)).all()


def test_hf_door_prunes_a_qwen2_and_resumes_its_masks(tmp_path):
    transformers = pytest.importorskip("transformers")
    from effplug.hf import PruningCallback

    def run(steps, resume=None):
        args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=4,
                                              report_to=[], use_cpu=True, disable_tqdm=True, save_strategy="steps",
                                              save_steps=2, logging_steps=1)
        callback = PruningCallback(sparsity=0.5, pattern="2:4", start_step=1)
        trainer = transformers.Trainer(model=tiny_qwen2(1), args=args, train_dataset=lm_rows(),
                                       callbacks=[callback])
        trainer.train(resume_from_checkpoint=resume)
        return trainer, callback

    trainer, callback = run(2)
    assert callback.engine.sparsity() == pytest.approx(0.5) and callback.engine.last_update == 1
    assert any("pruning_sparsity" in h for h in trainer.state.log_history)
    proj = trainer.model.model.layers[0].mlp.gate_proj.weight
    assert ((proj != 0).view(proj.shape[0], -1, 4).sum(-1) <= 2).all()
    saved = {k: v.clone() for k, v in callback.engine.masks.items()}
    with pytest.raises(TypeError, match="did you mean 'sparsity'"):
        PruningCallback(sparsty=0.5)
    _, again = run(3, resume=str(tmp_path / "checkpoint-2"))
    assert all(torch.equal(again.engine.masks[k], saved[k]) for k in saved) and again.engine.last_update == 1
