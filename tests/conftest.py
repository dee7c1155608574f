import pytest
import torch

# One intra-op thread: the test models are tiny, and on a busy 2-core machine a second
# spinning OpenMP thread makes every small op several times slower (measured: a 48-model
# ResNet zoo canonicalized in 5.3 s on one thread, 31.8 s on two, under load).
torch.set_num_threads(1)


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))


@pytest.fixture(scope="session")
def digits():
    """The bundled digits dataset (fixed splits), loaded once."""
    from weightspace.zoo import load_dataset
    return load_dataset("digits")
