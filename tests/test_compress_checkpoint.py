"""CompressionConfig(checkpoint=True): block checkpointing with compressed boundaries, on an HF GPT-2 and on
pytorch_lightning.demos' Transformer, through the plain loop and the Lightning door."""

import pytest
import torch

from effplug.compress import ActivationCompressor, compressed_activations


def _gpt2():
    from effplug.models import tiny_gpt2

    torch.manual_seed(0)
    return tiny_gpt2(vocab_size=64, n_positions=32, n_layer=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def _grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_checkpointed_boundaries_save_far_less_and_keep_the_gradient():
    ids = torch.randint(0, 64, (4, 32), generator=torch.Generator().manual_seed(0))
    step = lambda m: m(input_ids=ids, labels=ids).loss  # noqa: E731
    saved, grads = {}, {}
    for name, settings in (("exact", None), ("actnn-4", dict(method="actnn", bits=4, seed=0)),
                           ("actnn-4 + checkpoint", dict(method="actnn", bits=4, seed=0, checkpoint=True))):
        model = _gpt2()
        if settings is None:
            step(model).backward()
        else:
            engine = ActivationCompressor(model, **settings)
            exact, held = engine.step_saved_bytes(lambda m=model: step(m))
            saved[name] = held
            with engine:
                step(model).backward()
            assert not model.is_gradient_checkpointing or name == "exact"  # detach undid it
        grads[name] = _grads(model)
    assert saved["actnn-4 + checkpoint"] < saved["actnn-4"] / 5  # only the 4 block boundaries, compressed
    for name in ("actnn-4", "actnn-4 + checkpoint"):  # backward recomputes from the decompressed boundaries
        assert torch.nn.functional.cosine_similarity(grads[name], grads["exact"], dim=0) > 0.99


def test_a_plain_module_list_is_checkpointed_and_restored():
    demos = pytest.importorskip("pytorch_lightning.demos")
    torch.manual_seed(0)
    model = demos.Transformer(vocab_size=32, ninp=32, nhead=2, nhid=64, nlayers=3, dropout=0.1)
    x = torch.randint(0, 32, (6, 2))
    blocks = [*model.transformer.encoder.layers, *model.transformer.decoder.layers]
    with compressed_activations(model, bits=4, checkpoint=True, seed=0, scope="model") as engine:
        assert all("forward" in vars(b) for b in blocks)  # the encoder's and the decoder's layers
        model(x, x).sum().backward()
        assert engine.last_report.held_bytes > 0 and all(p.grad is not None for p in model.parameters())
        opt, losses = torch.optim.Adam(model.parameters(), lr=3e-3), []
        for _ in range(8):  # the demo's language-model loss falls with checkpointed, compressed boundaries
            opt.zero_grad()
            loss = torch.nn.functional.nll_loss(model(x, x).view(-1, 32), x.view(-1))
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < losses[0]
    assert not any("forward" in vars(b) for b in blocks)  # restored
    with pytest.raises(ValueError, match="has neither HF gradient checkpointing nor an nn.ModuleList"):
        ActivationCompressor(torch.nn.Sequential(torch.nn.Linear(4, 4)), checkpoint=True).attach()


def test_the_lightning_door_takes_checkpoint(tmp_path):
    pl = pytest.importorskip("pytorch_lightning")
    from effplug.callbacks import ActivationCompression
    from effplug.lit_modules import CausalLMModule

    ids = torch.randint(0, 64, (16, 32), generator=torch.Generator().manual_seed(1))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(ids[:, :-1], ids[:, 1:]), batch_size=4)
    module = CausalLMModule(_gpt2())
    callback = ActivationCompression(method="actnn", bits=2, checkpoint=True, seed=0)
    trainer = pl.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
                         callbacks=[callback])
    trainer.fit(module, loader)
    assert torch.isfinite(torch.stack([p.detach().sum() for p in module.parameters()])).all()
    assert not module.model.is_gradient_checkpointing  # off again once fit ends


def test_the_hf_door_takes_checkpoint(tmp_path, caplog):
    import logging

    transformers = pytest.importorskip("transformers")
    from conftest import lm_rows, tiny_qwen2

    from effplug.hf import EffTrainer

    model = tiny_qwen2()
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4,
                                          report_to=[], use_cpu=True, disable_tqdm=True, save_strategy="no",
                                          logging_steps=1)
    from transformers.training_args import ParallelMode

    if args.parallel_mode == ParallelMode.DISTRIBUTED:  # an earlier test on this worker left a process group
        with pytest.raises(ValueError, match="not supported under DDP yet"):
            EffTrainer(model=model, args=args, train_dataset=lm_rows(),
                       activation_compression={"method": "actnn", "bits": 4, "checkpoint": True})
        return
    trainer = EffTrainer(model=model, args=args, train_dataset=lm_rows(),
                         activation_compression={"method": "actnn", "bits": 4, "checkpoint": True, "seed": 0})
    with caplog.at_level(logging.INFO, logger="effplug.compress"):
        trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(map(torch.isfinite, map(torch.tensor, losses)))
    assert "checkpointing Qwen2ForCausalLM layers (HF gradient checkpointing)" in caplog.text
