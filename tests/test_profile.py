import pytest
import torch
from torch import nn

from effplug.profile import SavedTensorMeter, StepTimer, peak_memory_bytes, saved_bytes, time_steps


def test_meter_is_exact_on_a_hand_counted_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(4, 8)
    result = saved_bytes(lambda: model(x).sum(), parameters=model)
    # Linear 1 saves its input x (4*8 fp32 = 128 B); it needs no weight since x needs no grad.
    # ReLU saves its output (4*16 fp32 = 256 B); Linear 2 saves the same storage as its input (counted once)
    # and weight.t(), a view of a parameter (16*4 fp32 = 256 B, reported separately).
    assert result.activation_bytes == 128 + 256
    assert result.parameter_bytes == 256
    assert result.saved_tensors == 4
    assert result.by_dtype == {"float32": 384}


def test_meter_leaves_training_unchanged():
    torch.manual_seed(0)
    model = nn.Linear(32, 32)
    x = torch.randn(10, 32, requires_grad=True)
    model(x).sum().backward()
    reference = (x.grad.clone(), model.weight.grad.clone())
    x.grad, model.weight.grad = None, None
    meter = SavedTensorMeter(model)
    with meter:
        y = model(x).sum()
    y.backward()
    assert torch.equal(x.grad, reference[0]) and torch.equal(model.weight.grad, reference[1])
    assert meter.result.activation_bytes == 10 * 32 * 4  # the input; the weight is a parameter
    assert meter.result.parameter_bytes == 32 * 32 * 4


def test_peak_memory_on_cpu_is_the_saved_bytes():
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh())
    x = torch.randn(2, 8)
    assert peak_memory_bytes(lambda: model(x).sum(), "cpu", model) == saved_bytes(lambda: model(x).sum(), model).activation_bytes


def test_step_timer_reports_the_median_after_warmup():
    calls = []
    times = time_steps(lambda: calls.append(1), steps=7, warmup=2)
    assert len(calls) == 9 and len(times.times_s) == 7
    assert times.median_s == sorted(times.times_s)[3]
    timer = StepTimer(warmup=1)
    for _ in range(3):
        timer.start()
        timer.stop()
    assert len(timer.times_s) == 2
    with pytest.raises(RuntimeError, match="warm-up"):
        StepTimer(warmup=5).median_s
    with pytest.raises(ValueError, match="steps must be"):
        time_steps(lambda: None, steps=0)
