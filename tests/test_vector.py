"""SteeringVector: immutability, exact algebra, files, metadata."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import torch

import tlsteer
from tlsteer import SteeringVector
from tlsteer.vector import VectorMetadata

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
    with pytest.raises(
        ValueError,
        match=r"different sizes: \{'blocks.1.hook_resid_post': 2, 'blocks.2.hook_resid_post': 3\}",
    ):
        SteeringVector({A: torch.ones(2), B: torch.ones(3)})
    with pytest.raises(ValueError, match="cannot divide a vector by 0"):
        vec() / 0
    with pytest.raises(ValueError, match="cannot combine vectors with d_model 2 and 3"):
        vec() + SteeringVector({A: torch.ones(3)})


def test_save_load_roundtrip(tmp_path, tiny_llama):
    pairs = [("I love it", "I hate it"), ("good", "bad")]
    v = tlsteer.train_steering_vector(tiny_llama, pairs, layers=[0, 2], read=tlsteer.Read.last())
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


def test_value_semantics_equality_hash_allclose():
    """Defect 7: == and hash work by value; allclose is the approximate comparison."""
    v = vec()
    same = vec()
    assert v == same and hash(v) == hash(same) and len({v, same}) == 1
    nudged = SteeringVector({A: torch.tensor([1.0, 2.0 + 1e-7]), B: torch.tensor([3.0, -1.0])})
    assert v != nudged and v.allclose(nudged) and not v.allclose(2 * v)
    assert v != SteeringVector(dict(v.directions), VectorMetadata(note="other"))
    assert v != v.to(torch.float64)  # same values, other dtype: not the same value
    with pytest.raises(TypeError, match="can only compare with a SteeringVector"):
        v.allclose(torch.ones(2))


def test_not_iterable_and_membership_by_hook():
    v = vec()
    with pytest.raises(TypeError, match="a SteeringVector is not iterable"):
        list(v)
    with pytest.raises(TypeError, match="not iterable"):
        a, b = v
    assert A in v and "blocks.7.hook_resid_post" not in v and len(v) == 2


def test_owns_its_storage():
    mine = torch.tensor([1.0, 2.0])
    v = SteeringVector({A: mine})
    mine[0] = 100.0
    assert v[A].tolist() == [1.0, 2.0]
    assert v[A].data_ptr() != mine.data_ptr()


def test_metadata_cannot_disagree_with_the_directions(tiny_llama):
    v = tlsteer.train_steering_vector(tiny_llama, [("I love it", "I hate it")], layers=[0, 2])
    fields = {f.name for f in dataclasses.fields(VectorMetadata)}
    assert not fields & {"layers", "d_model", "hook_point"}  # derived facts live on the vector
    assert v.select([2]).layers == [2] and v.select([2]).metadata == v.metadata
    w = SteeringVector({"blocks.3.hook_resid_post": torch.ones(32)}, VectorMetadata(n_pairs=5, data_hash="x"))
    combined = v + w
    assert combined.layers == [0, 2, 3]
    assert combined.metadata.n_pairs == 0 and combined.metadata.data_hash == ""  # no single data set
    assert combined.metadata.model_name == ""  # w does not say which model: unknown
    assert (v + v).metadata.model_name == "tiny-llama"


def test_old_files_with_derived_fields_load_and_are_checked(tmp_path):
    from safetensors.torch import save_file

    header = {"model_name": "m", "d_model": 2, "hook_point": "resid_post", "layers": [1], "n_pairs": 3}
    path = tmp_path / "old.safetensors"
    save_file(
        {A: torch.ones(2)},
        str(path),
        metadata={"format": "tlsteer.SteeringVector/1", "metadata": json.dumps(header)},
    )
    old = SteeringVector.load(path)
    assert old.metadata.n_pairs == 3 and old.layers == [1]
    header["layers"] = [4]
    save_file(
        {A: torch.ones(2)},
        str(path),
        metadata={"format": "tlsteer.SteeringVector/1", "metadata": json.dumps(header)},
    )
    with pytest.raises(ValueError, match=r"says layers=\[4\] but its directions have \[1\]"):
        SteeringVector.load(path)


def test_file_errors_name_the_real_problem(tmp_path):
    v = vec()
    with pytest.raises(FileNotFoundError, match="folder .*missing_dir' does not exist"):
        v.save(tmp_path / "missing_dir" / "v.safetensors")
    v.save(tmp_path / "v.safetensors")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device 'cuda' is not available here"):
            SteeringVector.load(tmp_path / "v.safetensors", device="cuda")
    with pytest.raises(ValueError, match="device 'gpu0' is not a torch device"):
        SteeringVector.load(tmp_path / "v.safetensors", device="gpu0")


def test_numpy_scalars_scale_and_numpy_layers_index():
    v = vec()
    assert torch.equal((v * np.float32(2.0))[A], (v * 2.0)[A])
    assert v[np.int64(1)] is v[A]
    with pytest.raises(ValueError, match="scale must be finite"):
        v * float("nan")


def test_a_file_with_non_finite_values_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "nan.safetensors"
    meta = {"format": "tlsteer.SteeringVector/1", "metadata": json.dumps({"n_pairs": 1})}
    save_file({A: torch.tensor([1.0, float("inf")])}, str(path), metadata=meta)
    with pytest.raises(ValueError, match=r"direction at 'blocks.1.hook_resid_post' has 1 non-finite entries"):
        SteeringVector.load(path)


def write_raw(path, header, tensors=None) -> None:
    """A safetensors file with a hand-made header, as a tampered or foreign vector file would be."""
    from safetensors.torch import save_file

    save_file({A: torch.ones(2)} if tensors is None else tensors, str(path), metadata=header)


def tlsteer_header(metadata) -> dict:
    text = metadata if isinstance(metadata, str) else json.dumps(metadata)
    return {"format": "tlsteer.SteeringVector/1", "metadata": text}


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (
            tlsteer_header("{not json"),
            r"metadata is not JSON \(.*\): '\{not json'; expected a JSON object with fields from \[",
        ),
        (
            tlsteer_header("[1, 2]"),
            r"metadata is a JSON list \(\[1, 2\]\), not an object; expected \{field: value\}",
        ),
        (
            {"format": "tlsteer.SteeringVector/1"},
            r"has no 'metadata' entry in its safetensors header \(entries: \['format'\]\); a tlsteer vector",
        ),
        (
            tlsteer_header({"model_name": 123}),
            r"metadata: field 'model_name' must be a string, got 123 \(int\)",
        ),
        (tlsteer_header({"note": None}), r"metadata: field 'note' must be a string, got None \(NoneType\)"),
        (tlsteer_header({"n_pairs": "3"}), r"field 'n_pairs' must be an int >= 0 .*got '3' \(str\)"),
        (tlsteer_header({"n_pairs": True}), r"field 'n_pairs' must be an int >= 0 .*got True \(bool\)"),
        (tlsteer_header({"n_pairs": 2.5}), r"field 'n_pairs' must be an int >= 0 .*got 2\.5 \(float\)"),
        (tlsteer_header({"n_pairs": -1}), r"field 'n_pairs' must be an int >= 0 .*got -1 \(int\)"),
        (tlsteer_header({"frobnicate": 1}), r"metadata: unknown metadata fields \['frobnicate'\]; known: "),
        (tlsteer_header({"d_model": "2"}), r"field 'd_model' is '2' \(str\); expected an int >= 0"),
        (tlsteer_header({"layers": 1}), r"field 'layers' is 1; expected a list of ints >= 0"),
        (tlsteer_header({"layers": [1.0]}), r"field 'layers' is \[1\.0\]; expected a list of ints >= 0"),
        (tlsteer_header({"hook_point": "resid"}), r"field 'hook_point' is 'resid'; valid: 'resid_pre', "),
        (
            tlsteer_header({"hook_point": "mlp_out"}),
            r"says hook_point='mlp_out' but its directions are at 'resid_post' \(hooks: \['blocks\.1\.",
        ),
        (tlsteer_header({"d_model": 3, "layers": [1]}), r"says d_model=3 but its directions have 2"),
    ],
)
def test_tampered_metadata_names_the_file_field_and_value(tmp_path, header, message):
    """Defect: bad JSON was a bare JSONDecodeError, a missing key a KeyError, wrong types were kept and
    the stored hook_point was never compared with the directions."""
    path = tmp_path / "tampered.safetensors"
    write_raw(path, header)
    with pytest.raises(ValueError, match=r"tampered\.safetensors' .*" + message):
        SteeringVector.load(path)


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"direction.1": torch.ones(2)}, r"hook 'direction\.1' is not a residual-shaped block hook"),
        (
            {A: torch.ones(2, dtype=torch.int32)},
            r"direction at 'blocks\.1\.hook_resid_post' must be a floating",
        ),
        ({A: torch.ones(2, 2)}, r"direction at .* must be 1-D \[d_model\], got shape \(2, 2\)"),
    ],
)
def test_tampered_tensors_name_the_file(tmp_path, tensors, message):
    path = tmp_path / "tampered.safetensors"
    write_raw(path, tlsteer_header({}), tensors)
    with pytest.raises(ValueError, match=r"tampered\.safetensors': " + message):
        SteeringVector.load(path)


def test_old_files_that_recorded_nothing_about_their_directions_load(tmp_path):
    """tlsteer 0.1 wrote d_model=0, layers=[], hook_point='resid_post' when the metadata was not filled in."""
    path = tmp_path / "old.safetensors"
    unfilled = {"d_model": 0, "hook_point": "resid_post", "layers": [], "note": "hand-made"}
    write_raw(path, tlsteer_header(unfilled), {"blocks.3.hook_mlp_out": torch.ones(2)})
    assert SteeringVector.load(path).metadata == VectorMetadata(note="hand-made")
    filled = {"d_model": 2, "hook_point": "mlp_out", "layers": [3]}
    write_raw(path, tlsteer_header(filled), {"blocks.3.hook_mlp_out": torch.ones(2)})
    assert SteeringVector.load(path).hooks == ["blocks.3.hook_mlp_out"]
    write_raw(
        path, tlsteer_header({**filled, "hook_point": "resid_post"}), {"blocks.3.hook_mlp_out": torch.ones(2)}
    )
    with pytest.raises(ValueError, match="says hook_point='resid_post' but its directions are at 'mlp_out'"):
        SteeringVector.load(path)


def test_metadata_fields_are_typed():
    assert VectorMetadata(model_hint="llama").model_hint == "llama"
    with pytest.raises(TypeError, match="model_name"):
        VectorMetadata(model_name=123)  # type: ignore[arg-type]
    with pytest.raises((TypeError, ValueError), match="n_pairs"):
        VectorMetadata(n_pairs=-1)
    with pytest.raises(ValueError, match=r"^metadata is not JSON"):
        VectorMetadata.from_json("")


def test_values_beyond_float32_are_refused_before_saving(tmp_path):
    """Defect: save() cast a float64 1e300 to float32 inf, and load() then refused the file."""
    big = SteeringVector({A: torch.tensor([1e300, 0.0], dtype=torch.float64)})
    with pytest.raises(ValueError, match=r"'blocks\.1\.hook_resid_post' has values beyond the float32 range"):
        big.save(tmp_path / "v.safetensors")
    assert not (tmp_path / "v.safetensors").exists()


def test_select_takes_any_integral_and_names_bad_layers():
    """Defect: select(np.int64(1)) was a TypeError, select(True) selected layer 1, and a missing layer
    in a list was dropped silently."""
    v = vec()
    assert v.select(np.int64(1)).hooks == [A]
    assert v.select([np.int32(2)]).hooks == [B]
    assert v.select(np.array([2, 1])).hooks == [A, B]
    assert v.select(range(1, 3)) == v
    with pytest.raises(
        TypeError,
        match=r"layers must be an int or a list of ints \(this vector's layers: \[1, 2\]\), got True",
    ):
        v.select(True)
    for bad in ("1", 1.0, None, {1: 2}):
        with pytest.raises(
            TypeError, match=rf"layers must be an int or a list of ints .*got {re.escape(repr(bad))}"
        ):
            v.select(bad)
    with pytest.raises(
        TypeError,
        match=r"layers must be ints, got 1\.0 \(float\) in \[1\.0\]; this vector's layers: \[1, 2\]",
    ):
        v.select([1.0])
    with pytest.raises(
        ValueError, match=r"layers is empty; pass at least one of this vector's layers: \[1, 2\]"
    ):
        v.select([])
    with pytest.raises(KeyError, match=r"layers \[7\] not in this vector; its layers: \[1, 2\]"):
        v.select([1, 7])
