"""Pipelines through their Lightning door: strategy names, 2 gloo processes, against one process."""

import pytest
import torch
from conftest import run_door_worker


@pytest.fixture(scope="module")
def pipeline_results(tmp_path_factory):
    return run_door_worker("pipeline_doors_worker.py", tmp_path_factory)


def test_every_schedule_trains_like_one_process(pipeline_results):
    for result in pipeline_results:
        for name in ("pipeline_gpipe", "pipeline_1f1b", "pipeline_chimera"):
            assert len(result[name]) == 12
            assert result[name] == pytest.approx(result["reference"], abs=1e-5), name


def test_each_rank_holds_only_its_stages(pipeline_results):
    full = 64 * 64 + 64 + 64 * 64 + 64 + 64 * 10 + 10
    for result in pipeline_results:
        assert 0 < result["pipeline_1f1b_params"] < full
        assert result["pipeline_chimera_params"] == full  # its down stage plus the other stage of the up replica
    assert pipeline_results[0]["pipeline_1f1b_params"] + pipeline_results[1]["pipeline_1f1b_params"] == full


def test_checkpoint_resume_continues_exactly(pipeline_results):
    for result in pipeline_results:
        for name in ("pipeline_1f1b", "pipeline_chimera"):  # Chimera: both replicas' stages per rank
            assert result[f"{name}_resumed"] == pytest.approx(result[name][8:], abs=1e-6), name


def test_acsgd_pipeline_bytes_follow_the_formula(pipeline_results):
    """Epoch 1 goes exact (warm-up); epochs 2-4 send 4-bit changes forward and 8-bit gradients back."""
    first, last = pipeline_results
    f = first["acsgd_formula"]
    assert first["acsgd_steps"] == last["acsgd_steps"] == 64
    warmup, compressed, micro = 16, 48, 4
    # stage 0 sends activations only; stage 1 sends the boundary gradient only
    assert first["acsgd_sent"] == micro * (warmup * f["dense"] + compressed * f["activation"])
    assert last["acsgd_sent"] == micro * (warmup * f["dense"] + compressed * f["gradient"])
    assert first["acsgd_dense"] == last["acsgd_dense"] == micro * 64 * f["dense"]
    assert f["dense"] / f["activation"] > 7.5 and f["dense"] / f["gradient"] > 3.8  # 4-bit and 8-bit, with scales


def test_acsgd_pipeline_converges_like_the_plain_pipeline(pipeline_results):
    import math

    for result in pipeline_results:
        plain, acsgd = result["lm_plain"], result["lm_acsgd"]
        assert plain[:16] == pytest.approx(acsgd[:16], abs=1e-5)  # the warm-up epoch is exact
        tail_plain, tail_acsgd = sum(plain[-16:]) / 16, sum(acsgd[-16:]) / 16
        print(f"last-epoch loss: plain {tail_plain:.3f}, AC-SGD 4-bit {tail_acsgd:.3f}, "
              f"chance {math.log(result['vocab']):.3f}")
        assert tail_acsgd < 0.6 * math.log(result["vocab"])  # it learned, far from chance
        assert abs(tail_acsgd - tail_plain) < 0.1  # nats


def test_acsgd_resume_keeps_the_caches(pipeline_results):
    for result in pipeline_results:  # saved at the end of epoch 2; epochs 3-4 (compressed) must match
        assert len(result["lm_acsgd_resumed"]) == 32
        assert result["lm_acsgd_resumed"] == pytest.approx(result["lm_acsgd"][32:], abs=1e-6)


def test_llama_trains_through_the_pipeline_like_one_process(pipeline_results):
    for result in pipeline_results:  # tied embedding/head kept tied across the two stages (sync_tied)
        assert len(result["llama_pipeline"]) == 6
        assert result["llama_pipeline"] == pytest.approx(result["llama_reference"], abs=1e-5)


def test_validation_chains_the_stages_on_every_rank(pipeline_results):
    """A plain validation_step (self.model(x)) runs under the pipeline strategies: sanity check, the epoch-end
    loop and trainer.validate() after fit, with the one-process model's loss on every rank."""
    for result in pipeline_results:
        for name in ("pipeline_1f1b", "pipeline_chimera"):
            assert result[f"{name}_val_fit"] == pytest.approx(result["val_expected"], abs=1e-5), name
            assert result[f"{name}_val_validate"] == pytest.approx(result["val_expected"], abs=1e-5), name


def test_the_network_is_found_where_users_keep_it_or_the_error_names_module_attr():
    pytest.importorskip("pytorch_lightning")
    from effplug.strategies.pipeline import find_pipeline_model

    class Holder(torch.nn.Module):
        def __init__(self, **children):
            super().__init__()
            for name, child in children.items():
                setattr(self, name, child)

    seq = lambda: torch.nn.Sequential(torch.nn.Linear(2, 2))  # noqa: E731
    assert find_pipeline_model(Holder(net=seq())) == "net"
    assert find_pipeline_model(Holder(network=seq(), head=torch.nn.Linear(2, 2))) == "network"
    assert find_pipeline_model(Holder(body=seq(), loss=torch.nn.CrossEntropyLoss())) == "body"  # the only Sequential
    assert find_pipeline_model(Holder(model=seq(), net=seq())) == "model"
    assert find_pipeline_model(Holder(trunk=seq()), "trunk") == "trunk"
    with pytest.raises(AttributeError, match="module_attr='<attribute>'"):
        find_pipeline_model(Holder(a=seq(), b=seq()))
    with pytest.raises(AttributeError, match=r"module_attr='missing'.*no nn.Module attribute"):
        find_pipeline_model(Holder(net=seq()), "missing")
