"""Pipelines through their Lightning door: strategy names, 2 gloo processes, against one process."""


import pytest
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
