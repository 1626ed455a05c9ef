import torch

from leader.data.samples import multi_hot
from leader.models.base import start_from_frequencies


def test_start_from_frequencies_gives_the_training_shares(tiny_data):
    bias = torch.zeros(len(tiny_data.drugs))
    start_from_frequencies(bias, tiny_data)
    shares = multi_hot([s.target for s in tiny_data.samples("train")], tiny_data.drugs).mean(0)
    torch.testing.assert_close(torch.sigmoid(bias), shares.clamp(1e-4, 1 - 1e-4))
