import json

import torch

from leader.data.samples import multi_hot
from leader.models.base import start_from_frequencies


def test_start_from_frequencies_gives_the_training_shares(tiny_data):
    bias = torch.zeros(len(tiny_data.drugs))
    start_from_frequencies(bias, tiny_data)
    shares = multi_hot([s.target for s in tiny_data.samples("train")], tiny_data.drugs).mean(0)
    torch.testing.assert_close(torch.sigmoid(bias), shares.clamp(1e-4, 1 - 1e-4))


def test_run_dir_identity(tmp_path):
    """A run directory resumes only the same run; one whose identity file a kill left empty or
    half-written holds no checkpoint yet (it is written first), so it is started again."""
    import pytest

    from leader.errors import LeaderError
    from leader.pipelines import RUN_IDENTITY, prepare_run_dir

    run_dir = tmp_path / ".model.run"
    prepare_run_dir(run_dir, {"config": 1}, force=False)
    (run_dir / "checkpoint").mkdir()
    prepare_run_dir(run_dir, {"config": 1}, force=False)  # same run: kept, to resume
    assert (run_dir / "checkpoint").is_dir()
    with pytest.raises(LeaderError, match="holds an unfinished run with other options"):
        prepare_run_dir(run_dir, {"config": 2}, force=False)
    prepare_run_dir(run_dir, {"config": 2}, force=True)
    assert not (run_dir / "checkpoint").exists()
    for damaged in ("", '{"config": '):
        (run_dir / RUN_IDENTITY).write_text(damaged)
        prepare_run_dir(run_dir, {"config": 3}, force=False)
        assert json.loads((run_dir / RUN_IDENTITY).read_text()) == {"config": 3}
    assert [p.name for p in run_dir.iterdir()] == [RUN_IDENTITY]  # no temporary file left
