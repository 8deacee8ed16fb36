"""ZeRO through its doors: Lightning zero1/2/3, zero3_offload, fsdp2 and the HF Trainer, 2 gloo processes."""

import math

import pytest
from conftest import run_door_worker


@pytest.fixture(scope="module")
def zero_results(tmp_path_factory):
    pytest.importorskip("deepspeed", reason="pip install 'effplug[deepspeed]'")
    return run_door_worker("zero_doors_worker.py", tmp_path_factory)



def test_every_stage_matches_ddp_losses(zero_results):
    for result in zero_results:
        ddp = result["ddp"]["losses"]
        assert len(ddp) == 20
        for name in ("zero1", "zero2", "zero3", "zero3_offload", "fsdp2"):
            assert result[name]["strategy"] in ("ZeroStrategy", "FSDP2Strategy")
            assert result[name]["losses"] == pytest.approx(ddp, abs=1e-5), name


def test_measured_model_states_follow_the_zero_formulas(zero_results):
    from effplug.parallel.zero import estimate_memory

    for result in zero_results:
        psi = result["num_params"]
        # DeepSpeed in fp32 keeps an fp32 master partition next to Adam's m and v: 4 + 4 + 12 bytes/param;
        # torch Adam under DDP and FSDP2 has no master copy: 4 + 4 + 8
        for name, stage, k, offload in [("ddp", 0, 8, None), ("zero1", 1, 12, None), ("zero2", 2, 12, None),
                                        ("zero3", 3, 12, None), ("zero3_offload", 3, 12, "all"), ("fsdp2", 3, 8, None)]:
            expected = estimate_memory(psi, 2, stage, param_bytes=4, grad_bytes=4, optimizer_bytes=k, offload=offload)
            measured = result[name]["states"]
            # stage <= 1 keeps a full gradient during backward (DeepSpeed's stage 1 then keeps its partition
            # for the step); from stage 2 on, the partition is what a rank holds
            grads = result[name]["peak_grad"] if stage <= 1 else measured["grads"]
            buckets = {"param_bytes": measured["params"], "grad_bytes": grads, "optimizer_bytes": measured["optimizer"],
                       "offloaded_bytes": measured["offloaded"]}
            for part, value in buckets.items():
                formula = getattr(expected, part)
                # the formula's zero buckets are exactly zero; the others within 10%
                assert value == pytest.approx(formula, rel=0.10, abs=0), (name, part, value, formula)


def test_zero3_meter_counts_persisted_parameters_in_full(zero_results):
    # every parameter here is under DeepSpeed's persistence threshold: a rank holds it whole, plus its partition
    for result in zero_results:
        psi = result["num_params"]
        assert result["zero3_persist"]["states"]["params"] == pytest.approx(4 * psi * (1 + 1 / 2), rel=0.02)
        assert result["zero3_persist"]["losses"] == pytest.approx(result["ddp"]["losses"], abs=1e-5)


def test_zero_checkpoint_resumes_and_converts_to_a_plain_state_dict(zero_results):
    assert zero_results[0]["plain_keys_match"] and zero_results[0]["plain_equal"]
    assert any("optim_states" in f for f in zero_results[0]["weights_only_files"])
    assert len(zero_results[0]["weights_only_files"]) == 3 and zero_results[0]["weights_only_registered"]
    for result in zero_results:
        assert result["resumed_global_step"] == 25 and result["resumed_steps"] == 5
        # the resumed run continues exactly where an uninterrupted one would be
        assert result["resume_losses"] == pytest.approx(result["continued_losses"], abs=1e-6)


def test_zero_composes_with_activation_compression_and_qat(zero_results):
    for result in zero_results:
        assert len(result["combo_losses"]) == 5 and all(math.isfinite(v) for v in result["combo_losses"])
        assert result["combo_ratio"] > 4


def test_hf_trainer_takes_effplug_deepspeed_config(zero_results):
    for result in zero_results:
        assert result["hf_engine"] == "DeepSpeedEngine" and result["hf_stage"] == 3
        assert math.isfinite(result["hf_loss"])
