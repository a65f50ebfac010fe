"""SteeringVector: immutability, exact algebra, files, metadata."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import tlsteer
from tlsteer import SteeringVector, VectorMetadata

A = "blocks.1.hook_resid_post"
B = "blocks.2.hook_resid_post"


def vec(a=(1.0, 2.0), b=(3.0, -1.0)):
    return SteeringVector({B: torch.tensor(b), A: torch.tensor(a)}, VectorMetadata(model_name="m"))


def test_algebra_is_exact_and_returns_new_objects():
    v, w = vec(), vec((0.5, 0.5), (1.0, 1.0))
    assert torch.equal((v + w)[A], torch.tensor([1.5, 2.5]))
    assert torch.equal((v - w)[B], torch.tensor([2.0, -2.0]))
    assert torch.equal((2 * v)[A], torch.tensor([2.0, 4.0]))
    assert torch.equal((v * 2)[A], (2 * v)[A])
    assert torch.equal((v / 4)[B], torch.tensor([0.75, -0.25]))
    assert torch.equal((-v)[A], torch.tensor([-1.0, -2.0]))
    n = v.normalized()
    assert torch.allclose(torch.stack([d.norm() for d in n.directions.values()]), torch.ones(2))
    assert torch.equal(v[A], torch.tensor([1.0, 2.0]))  # unchanged
    assert v.layers == [1, 2] and v[1] is v.directions[A]
    only = SteeringVector({"blocks.5.hook_resid_post": torch.ones(2)})
    assert (v + only).layers == [1, 2, 5]
    assert v.to(torch.float64)[A].dtype == torch.float64


def test_immutable():
    v = vec()
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.directions = {}  # type: ignore[misc]
    with pytest.raises(TypeError):
        v.directions[A] = torch.zeros(2)  # type: ignore[index]


def test_bad_vectors():
    with pytest.raises(ValueError, match=r"needs a non-empty \{hook_name: direction\} mapping, got \{\}"):
        SteeringVector({})
    with pytest.raises(KeyError, match="not a residual-shaped block hook"):
        SteeringVector({"blocks.1.attn.hook_z": torch.ones(2)})
    with pytest.raises(ValueError, match=r"directions have different sizes: \{'blocks.1.hook_resid_post': 2, 'blocks.2.hook_resid_post': 3\}"):
        SteeringVector({A: torch.ones(2), B: torch.ones(3)})
    with pytest.raises(ValueError, match="cannot divide a vector by 0"):
        vec() / 0
    with pytest.raises(ValueError, match="cannot combine vectors with d_model 2 and 3"):
        vec() + SteeringVector({A: torch.ones(3)})


def test_save_load_roundtrip(tmp_path, tiny_llama):
    pairs = [("I love it", "I hate it"), ("good", "bad")]
    v = tlsteer.train_steering_vector(tiny_llama, pairs, layers=[0, 2], read_token_index=-1)
    path = tmp_path / "v.safetensors"
    v.save(path)
    w = SteeringVector.load(path)
    assert w == v and hash(w) == hash(v)
    assert w.metadata.n_pairs == 2 and w.layers == [0, 2]
    assert w.metadata.model_name == "tiny-llama" and w.d_model == 32
    assert len(w.metadata.data_hash) == 16
    for hook in v.hooks:
        assert torch.equal(v[hook], w[hook])
    v.to_numpy_file(2, tmp_path / "v.npy")
    assert np.array_equal(np.load(tmp_path / "v.npy"), v[2].numpy())


def test_corrupt_truncated_and_foreign_files(tmp_path):
    path = tmp_path / "v.safetensors"
    vec().save(path)
    data = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) - 5])
    message = r"not a readable safetensors steering vector \(corrupt or truncated\?\)"
    with pytest.raises(ValueError, match=message):
        SteeringVector.load(tmp_path / "trunc.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="corrupt or truncated"):
        SteeringVector.load(tmp_path / "junk.safetensors")
    from safetensors.torch import save_file

    save_file({A: torch.ones(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ValueError, match="is a safetensors file but not a tlsteer vector"):
        SteeringVector.load(tmp_path / "foreign.safetensors")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SteeringVector.load(tmp_path / "missing.safetensors")
