"""The selection-network median filter gives torch's median exactly."""

import pytest
import torch

from benchmarks.median_filter import unfolded_median
from components.models.median import median_filter, median_network


@pytest.mark.parametrize("size", [3, 5])
def test_the_network_finds_the_median_of_every_zero_one_input(size):
    # The 0-1 principle (Knuth, TAOCP 5.3.4): a comparator network puts the k-th smallest value
    # in position k for every input if it does so for every input of zeros and ones.
    count = size * size
    for start in range(0, 2**count, 2**20):
        codes = torch.arange(start, min(start + 2**20, 2**count))
        bits = [((codes >> bit) & 1).to(torch.uint8) for bit in range(count)]
        ones = sum(b.long() for b in bits)
        wires = list(bits)
        for low, high in median_network(count):
            wires[low], wires[high] = torch.minimum(wires[low], wires[high]), torch.maximum(wires[low], wires[high])
        assert torch.equal(wires[count // 2].long(), (ones > count // 2).long())


def test_the_filter_equals_torchs_median_over_each_window_with_ties_and_zero_padding():
    generator = torch.Generator().manual_seed(0)
    maps = torch.randint(0, 4, (3, 1, 20, 17), generator=generator).float()  # many ties
    maps = torch.cat([maps, torch.rand(2, 1, 20, 17, generator=generator)])
    assert torch.equal(median_filter(maps, 5), unfolded_median(maps, 5))


def test_an_even_window_is_refused():
    with pytest.raises(ValueError, match="odd"):
        median_filter(torch.zeros(1, 1, 8, 8), 4)
