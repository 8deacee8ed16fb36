"""LARS and LAMB on hand-computed steps, their exclusions and non-finite steps, the batch-scaling rule, and both
optimizers in a real Lightning Trainer (BoringModel) and a real HF Trainer (tiny Qwen2)."""

import math

import pytest
import torch
from conftest import lm_rows, tiny_qwen2

from effplug.optim import LAMB, LARS, effective_batch, exclude_bias_and_norm, scale_for_batch, warmup_schedule


def _param(values, grad):
    p = torch.nn.Parameter(torch.tensor(values))
    p.grad = torch.tensor(grad)
    return p


def test_lars_step_matches_the_hand_computed_local_learning_rate():
    # ||w|| = 5, ||g|| = 1, beta = 0.1, eta = 0.001: lambda = 0.001 * 5 / (1 + 0.1 * 5) = 1/300
    p = _param([3.0, 4.0], [0.6, 0.8])
    opt = LARS([p], lr=1.0, momentum=0.9, weight_decay=0.1, trust_coefficient=0.001)
    opt.step()
    first = torch.tensor([0.9, 1.2]) / 300  # (g + beta * w) * lambda
    assert torch.allclose(p.detach(), torch.tensor([3.0, 4.0]) - first, atol=1e-7)
    # step 2: the same gradient; v = 0.9 * v + new local update
    w = p.detach().clone()
    p.grad = torch.tensor([0.6, 0.8])
    lam = 0.001 * w.norm() / (1 + 0.1 * w.norm())
    opt.step()
    assert torch.allclose(p.detach(), w - (0.9 * first + (torch.tensor([0.6, 0.8]) + 0.1 * w) * lam), atol=1e-7)


def test_lamb_step_matches_the_hand_computed_trust_ratio():
    # step 1: m_hat = g, v_hat = g^2, r = sign(g) = [1, 1]; u = r + 0.1 * w = [1.3, 1.4]; ratio = 5 / ||u||
    p = _param([3.0, 4.0], [0.6, 0.8])
    opt = LAMB([p], lr=0.1, weight_decay=0.1, eps=1e-12)
    opt.step()
    u = torch.tensor([1.3, 1.4])
    assert torch.allclose(p.detach(), torch.tensor([3.0, 4.0]) - 0.1 * 5 / u.norm() * u, atol=1e-6)
    # without decay: ratio 5 / sqrt(2) along [1, 1]
    q = _param([3.0, 4.0], [0.6, 0.8])
    LAMB([q], lr=0.1, eps=1e-12).step()
    assert torch.allclose(q.detach(), torch.tensor([3.0, 4.0]) - 0.1 * 5 / math.sqrt(2), atol=1e-6)
    # max_trust clips phi(||w||)
    c = _param([3.0, 4.0], [0.6, 0.8])
    LAMB([c], lr=0.1, eps=1e-12, max_trust=1.0).step()
    assert torch.allclose(c.detach(), torch.tensor([3.0, 4.0]) - 0.1 / math.sqrt(2), atol=1e-6)


def test_excluded_groups_take_the_plain_step_of_sgd_and_adam():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 3))
    groups = exclude_bias_and_norm(model, weight_decay=0.05)
    adapted = {id(p) for p in groups[0]["params"]}
    assert adapted == {id(model[0].weight), id(model[2].weight)}
    assert groups[1]["weight_decay"] == 0.0 and groups[1]["adapt"] is False and len(groups[1]["params"]) == 4
    plain = [torch.nn.Parameter(torch.randn(5)) for _ in range(2)]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in plain]
    for ours, reference in ((LAMB([{"params": plain, "adapt": False}], lr=0.01, eps=1e-8),
                             torch.optim.Adam(twins, lr=0.01, eps=1e-8)),
                            (LARS([{"params": plain, "adapt": False}], lr=0.01, momentum=0.9),
                             torch.optim.SGD(twins, lr=0.01, momentum=0.9))):
        for step in range(3):
            for p, q in zip(plain, twins, strict=True):
                p.grad = torch.randn(5, generator=torch.Generator().manual_seed(step))
                q.grad = p.grad.clone()
            ours.step()
            reference.step()
            for p, q in zip(plain, twins, strict=True):
                assert torch.allclose(p, q, atol=1e-6)


def test_a_zero_weight_layer_takes_the_plain_step():
    p = _param([0.0, 0.0], [1.0, -1.0])
    LARS([p], lr=0.5, momentum=0.0).step()
    assert torch.equal(p.detach(), torch.tensor([-0.5, 0.5]))


@pytest.mark.parametrize("make", [lambda ps: LARS(ps, lr=0.1, momentum=0.9), lambda ps: LAMB(ps, lr=0.1)])
def test_nonfinite_gradients_skip_the_step_and_leave_state_clean(make, caplog):
    p = _param([1.0, 2.0], [0.1, 0.2])
    opt = make([p])
    opt.step()
    before = {k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state[p].items()}
    weights = p.detach().clone()
    p.grad = torch.tensor([float("nan"), 0.2])
    with caplog.at_level("WARNING", logger="effplug.optim"):
        opt.step()
        opt.step()
    assert torch.equal(p.detach(), weights) and opt.skipped_steps == 2
    for k, v in before.items():
        assert torch.equal(torch.as_tensor(opt.state[p][k]), torch.as_tensor(v))
    assert caplog.text.count("inf/NaN gradients") == 1


def test_checkpoint_restores_the_run_exactly():
    def run(steps, opt_state=None, weights=None):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        if weights is not None:
            model.load_state_dict(weights)
        opt = LAMB(exclude_bias_and_norm(model, 0.01), lr=0.01)
        if opt_state is not None:
            opt.load_state_dict(opt_state)
        for step in range(steps):
            x = torch.randn(8, 4, generator=torch.Generator().manual_seed(step + (0 if opt_state is None else 3)))
            model.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
        return model, opt

    full, _ = run(5)
    half, opt = run(3)
    resumed, _ = run(2, opt_state=opt.state_dict(), weights=half.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(full.parameters(), resumed.parameters(), strict=True))


def test_batch_scaling_rules_and_warmup_in_samples():
    assert effective_batch(32, world_size=4, accumulate=4) == 512
    linear = scale_for_batch(0.1, 32, 512, "linear", base_warmup_steps=160)
    assert linear.factor == 16 and linear.lr == pytest.approx(1.6) and linear.warmup_steps == 10
    assert scale_for_batch(1e-3, 32, 512, "sqrt").lr == pytest.approx(4e-3)
    assert scale_for_batch(0.1, 32, 512, min_warmup_steps=5).warmup_steps == 5
    with pytest.raises(ValueError, match="choose one of"):
        scale_for_batch(0.1, 32, 512, "cubic")
    with pytest.raises(ValueError, match="batch=0: use an int >= 1"):
        scale_for_batch(0.1, 32, 0)
    with pytest.raises(TypeError, match="did you mean 'weight_decay'"):
        LARS([torch.nn.Parameter(torch.ones(1))], wieght_decay=0.1)
    opt = LARS([torch.nn.Parameter(torch.ones(1))], lr=1.0)
    sched = warmup_schedule(opt, warmup_steps=4, total_steps=8)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 0.75, 0.5, 0.25])


def test_lars_in_a_lightning_trainer_with_its_warmup_schedule(tmp_path):
    pl = pytest.importorskip("pytorch_lightning")
    from pytorch_lightning.demos.boring_classes import BoringModel

    class LarsBoring(BoringModel):
        def configure_optimizers(self):
            opt = LARS(exclude_bias_and_norm(self, 1e-4), lr=0.5, momentum=0.9, weight_decay=1e-4)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": warmup_schedule(opt, 3, 6), "interval": "step"}}

    model = LarsBoring()
    before = model.layer.weight.detach().clone()
    trainer = pl.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model)
    opt = trainer.optimizers[0]
    assert isinstance(opt, LARS) and trainer.global_step == 6
    assert opt.state[model.layer.weight]["momentum_buffer"].abs().sum() > 0
    assert not torch.equal(model.layer.weight, before) and torch.isfinite(model.layer.weight).all()


def test_lamb_in_a_real_hf_trainer(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = tiny_qwen2(1)
    rows = lm_rows()
    opt = LAMB(exclude_bias_and_norm(model, 0.01), lr=1e-2, weight_decay=0.01)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=4,
                                          report_to=[], use_cpu=True, disable_tqdm=True, save_strategy="no",
                                          logging_steps=1)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=rows,
                                   optimizers=(opt, warmup_schedule(opt, 2, 6)))
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert trainer.optimizer.optimizer is opt if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer is opt
    assert max(s["step"] for s in opt.state.values()) == 6
