"""kdlib.artifacts: atomic tensor files whose bytes depend only on their tensors."""
import torch

from kdlib import artifacts


def test_same_tensors_give_the_same_bytes_at_any_path(tmp_path):
    obj = {"w": torch.arange(12.0).reshape(3, 4), "b": torch.tensor([1, 2], dtype=torch.int64)}
    artifacts.save_tensors(tmp_path / "a.pt", obj)
    artifacts.save_tensors(tmp_path / "sub" / "model.pt", obj)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "sub" / "model.pt").read_bytes()
    loaded = artifacts.load_tensors(tmp_path / "a.pt")
    assert loaded.keys() == obj.keys() and all(torch.equal(loaded[k], obj[k]) for k in obj)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "sub"]  # no temporary file left
