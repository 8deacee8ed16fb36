"""Gradient compression through its doors: Lightning strategy names and the HF callback, 2 gloo processes."""


import pytest
from conftest import run_door_worker


@pytest.fixture(scope="module")
def door_results(tmp_path_factory):
    return run_door_worker("comm_doors_worker.py", tmp_path_factory)


def test_lightning_strategy_names_register_the_hook_on_cpu(door_results):
    for result in door_results:
        assert result["strategy_class"] == "CompressedDDPStrategy"
        assert result["topk_steps"] == 6  # stock DDPStrategy would have registered nothing on CPU
        assert result["topk_ratio"] > 40
        for name in ("cgx", "natural", "dither", "powersgd"):
            assert result[f"{name}_steps"] == 3, name
        assert result["natural_ratio"] > 3.5 and result["cgx_ratio"] > 2.5  # 8-bit, small layers exact
        assert result["dither_ratio"] > result["cgx_ratio"]  # 4-bit codes where cgx ran at 8


def test_lightning_checkpoint_gathers_and_restores_every_rank(door_results):
    assert door_results[0]["ckpt_world_size"] == 2 and door_results[0]["ckpt_has_both_ranks"]
    for result in door_results:
        assert result["restored_nonempty"] and result["restored_equal"]
        assert result["resumed_steps"] == 3  # 9 - 6 restored steps


def test_hf_callback_registers_on_model_wrapped_and_resumes(door_results):
    for result in door_results:
        assert result["hf_wrapped"] == "DistributedDataParallel"
        assert result["hf_steps"] == 3 and result["hf_ratio"] > 8
        assert result["hf_state_file"]
        assert result["hf_restored_equal"]
        assert result["hf_resumed_steps"] == 1
