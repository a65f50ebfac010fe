"""llama.cpp control-vector GGUF files and single-layer .npy files (tlsteer.gguf_vectors)."""

from __future__ import annotations

import re

import gguf
import numpy as np
import pytest
import torch

from tlsteer.gguf_vectors import METADATA_KEY, read_control_vector, write_control_vector
from tlsteer.vector import SteeringVector, VectorMetadata

D = 8


def vec(layers=(1, 3, 5), point="resid_post", seed=0) -> SteeringVector:
    gen = torch.Generator().manual_seed(seed)
    directions = {f"blocks.{layer}.hook_{point}": torch.randn(D, generator=gen) for layer in layers}
    return SteeringVector(directions, VectorMetadata(model_name="tiny-llama", n_pairs=7, note="test"))


def fields(path) -> dict:
    """Every GGUF key of a file as ``{key: (value type, python value)}``, read with gguf's own reader."""
    reader = gguf.GGUFReader(str(path))
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        part = field.parts[field.data[0]]
        kind = field.types[0]
        out[key] = (kind, bytes(part).decode() if kind == gguf.GGUFValueType.STRING else int(part[0]))
    return out


def write_foreign(path, tensors: dict, arch="controlvector", hint="mistral", layer_count=None) -> None:
    """A control vector as repeng writes it (uint32 layer_count, no tlsteer metadata)."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_string(f"{arch}.model_hint", hint)
    writer.add_uint32(f"{arch}.layer_count", len(tensors) if layer_count is None else layer_count)
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# -- GGUF ----------------------------------------------------------------------------------


@pytest.mark.parametrize("layers", [(1,), (1, 3, 5), (2, 7, 11, 23)])
def test_gguf_round_trip_is_exact(tmp_path, layers):
    v = vec(layers)
    path = tmp_path / "v.gguf"
    v.to_gguf(path)
    w = SteeringVector.from_gguf(path)
    assert w == v and w.hooks == v.hooks and w.layers == list(layers)
    for hook in v.hooks:
        assert w[hook].dtype == torch.float32
        assert torch.equal(w[hook].view(torch.int32), v[hook].view(torch.int32))  # bit for bit
    assert w.metadata == v.metadata


def test_written_file_follows_the_llama_cpp_convention(tmp_path):
    v = vec((1, 3, 5))
    path = tmp_path / "v.gguf"
    v.to_gguf(path, model_hint="llama")
    kv = fields(path)
    assert kv["general.architecture"] == (gguf.GGUFValueType.STRING, "controlvector")
    assert kv["controlvector.model_hint"] == (gguf.GGUFValueType.STRING, "llama")
    assert kv["controlvector.layer_count"] == (gguf.GGUFValueType.INT32, 3)
    assert VectorMetadata.from_json(kv[METADATA_KEY][1])[0] == v.metadata
    reader = gguf.GGUFReader(str(path))
    # blocks.<l>.hook_resid_post is direction.<l>: llama.cpp adds tensors[il] to the output of block il
    assert [t.name for t in reader.tensors] == ["direction.1", "direction.3", "direction.5"]
    for tensor in reader.tensors:
        layer = int(tensor.name.split(".")[1])
        assert tensor.tensor_type == gguf.GGMLQuantizationType.F32
        assert [int(n) for n in tensor.shape] == [D]
        assert np.array_equal(np.asarray(tensor.data), v[f"blocks.{layer}.hook_resid_post"].numpy())


def test_model_hint_defaults_to_the_model_name_and_can_be_given(tmp_path):
    v = vec()
    v.to_gguf(tmp_path / "a.gguf")
    assert fields(tmp_path / "a.gguf")["controlvector.model_hint"][1] == "tiny-llama"
    v.to_gguf(tmp_path / "b.gguf", model_hint="qwen2")
    assert fields(tmp_path / "b.gguf")["controlvector.model_hint"][1] == "qwen2"
    assert read_control_vector(tmp_path / "b.gguf")[1] == "qwen2"
    with pytest.raises(TypeError, match="model_hint must be a string"):
        v.to_gguf(tmp_path / "c.gguf", model_hint=3)


def test_other_precisions_are_written_as_float32(tmp_path):
    v = vec().to(torch.float16)
    v.to_gguf(tmp_path / "v.gguf")
    w = SteeringVector.from_gguf(tmp_path / "v.gguf")
    assert all(d.dtype == torch.float32 for d in w.directions.values())
    assert w.allclose(v.to(torch.float32), rtol=0.0, atol=0.0)


def test_reads_a_file_written_by_another_tool(tmp_path):
    data = {f"direction.{n}": np.full(D, n, dtype=np.float32) for n in (4, 2)}
    write_foreign(tmp_path / "r.gguf", data, layer_count=31)  # layer_count is not read by llama.cpp
    w = SteeringVector.from_gguf(tmp_path / "r.gguf")
    assert w.hooks == ["blocks.2.hook_resid_post", "blocks.4.hook_resid_post"]
    assert w.metadata == VectorMetadata(model_hint="mistral")  # an architecture, not a model name
    assert torch.equal(w[4], torch.full((D,), 4.0))
    pre = SteeringVector.from_gguf(tmp_path / "r.gguf", hook_point="resid_pre")
    assert pre.hooks == ["blocks.2.hook_resid_pre", "blocks.4.hook_resid_pre"]
    with pytest.raises(ValueError, match="unknown hook point 'resid'"):
        SteeringVector.from_gguf(tmp_path / "r.gguf", hook_point="resid")


@pytest.mark.parametrize("point", ["resid_pre", "resid_mid", "attn_out", "mlp_out"])
def test_only_resid_post_can_be_exported(tmp_path, point):
    with pytest.raises(ValueError, match=rf"cannot export hook 'blocks\.2\.hook_{point}'.*hook_resid_post"):
        vec((2,), point=point).to_gguf(tmp_path / "v.gguf")
    mixed = vec((2,)) + vec((3,), point=point)
    with pytest.raises(ValueError, match=rf"'blocks\.3\.hook_{point}'"):
        mixed.to_gguf(tmp_path / "v.gguf")
    assert not (tmp_path / "v.gguf").exists()


def test_layer_zero_cannot_be_exported(tmp_path):
    with pytest.raises(ValueError, match="no control vector for layer 0"):
        vec((0, 3)).to_gguf(tmp_path / "v.gguf")
    vec((0, 3)).select([3]).to_gguf(tmp_path / "v.gguf")  # the hint in the message works


def test_non_finite_directions_are_refused(tmp_path):
    bad = torch.ones(D)
    bad[2] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        write_control_vector({"blocks.1.hook_resid_post": bad}, tmp_path / "v.gguf")
    write_foreign(tmp_path / "nan.gguf", {"direction.1": bad.numpy()})
    with pytest.raises(ValueError, match=r"1 non-finite entries \(first at index 2: nan\)"):
        SteeringVector.from_gguf(tmp_path / "nan.gguf")


def test_an_architecture_hint_is_not_the_model_name(tmp_path):
    """Defect: llama.cpp and repeng write the architecture as model_hint; it became model_name, and
    steering refused the vector for every model whose name is not "llama"."""
    write_foreign(tmp_path / "r.gguf", {"direction.2": np.ones(D, dtype=np.float32)}, hint="llama")
    w = SteeringVector.from_gguf(tmp_path / "r.gguf")
    assert w.metadata.model_name == ""  # nothing for model checks to refuse
    assert w.metadata.model_hint == "llama"  # not lost
    w.to_gguf(tmp_path / "again.gguf")  # the hint is written back, and kept by tlsteer's own file
    assert fields(tmp_path / "again.gguf")["controlvector.model_hint"][1] == "llama"
    assert SteeringVector.from_gguf(tmp_path / "again.gguf").metadata == w.metadata
    v = vec()  # a file tlsteer wrote keeps its full provenance, whatever hint it was given
    v.to_gguf(tmp_path / "ours.gguf", model_hint="llama")
    assert SteeringVector.from_gguf(tmp_path / "ours.gguf").metadata.model_name == "tiny-llama"


@pytest.mark.parametrize(
    ("first", "second"), [("direction.01", "direction.1"), ("direction.3", "direction.003")]
)
def test_a_layer_written_twice_is_refused(tmp_path, first, second):
    """Defect: llama.cpp's stoi reads both names as one layer and adds them; tlsteer kept one of them."""
    data = {first: np.ones(D, dtype=np.float32), second: np.full(D, 2.0, dtype=np.float32)}
    write_foreign(tmp_path / "twice.gguf", data)
    layer = int(first.split(".")[1])
    message = rf"tensors '{re.escape(first)}' and '{re.escape(second)}' are both layer {layer}"
    with pytest.raises(ValueError, match=message):
        SteeringVector.from_gguf(tmp_path / "twice.gguf")


def test_a_layer_in_non_ascii_digits_is_refused(tmp_path):
    write_foreign(tmp_path / "u.gguf", {"direction.\u0661": np.ones(D, dtype=np.float32)})  # Arabic-Indic 1
    with pytest.raises(ValueError, match="is not a control-vector direction"):
        SteeringVector.from_gguf(tmp_path / "u.gguf")


def test_tampered_tlsteer_metadata_in_a_gguf_names_the_file_and_key(tmp_path):
    one = {"blocks.1.hook_resid_post": torch.ones(D)}
    write_control_vector(one, tmp_path / "json.gguf", "llama", metadata_json="{oops")
    with pytest.raises(ValueError, match=r"json\.gguf' key 'tlsteer\.metadata' is not JSON .*'\{oops'"):
        SteeringVector.from_gguf(tmp_path / "json.gguf")
    write_control_vector(one, tmp_path / "type.gguf", "llama", metadata_json='{"model_name": 5}')
    with pytest.raises(ValueError, match=r"type\.gguf' key .*field 'model_name' must be a string, got 5"):
        SteeringVector.from_gguf(tmp_path / "type.gguf")
    write_control_vector(one, tmp_path / "point.gguf", "llama", metadata_json='{"hook_point": "mlp_out"}')
    with pytest.raises(ValueError, match="says hook_point='mlp_out' but its directions are at 'resid_post'"):
        SteeringVector.from_gguf(tmp_path / "point.gguf")


def test_values_beyond_float32_are_refused_before_writing(tmp_path):
    """Defect: a float64 direction past float32's range was written as inf (and the file then refused)."""
    big = SteeringVector({"blocks.1.hook_resid_post": torch.tensor([1e300, 0.0], dtype=torch.float64)})
    message = r"'blocks\.1\.hook_resid_post' has values beyond the float32 range \(largest \|x\| = 1e\+300"
    with pytest.raises(ValueError, match=message):
        big.to_gguf(tmp_path / "v.gguf")
    with pytest.raises(ValueError, match=message):
        big.to_numpy_file(1, tmp_path / "v.npy")
    assert not list(tmp_path.iterdir())
    fits = SteeringVector({"blocks.1.hook_resid_post": torch.tensor([3e38, -1e-300], dtype=torch.float64)})
    fits.to_gguf(tmp_path / "fits.gguf")  # within range; the tiny value rounds to 0
    assert SteeringVector.from_gguf(tmp_path / "fits.gguf")[1].tolist() == [np.float32(3e38), 0.0]


def test_bad_hook_point_types_are_named(tmp_path):
    vec().to_gguf(tmp_path / "v.gguf")
    np.save(tmp_path / "v.npy", np.ones(D, dtype=np.float32))
    with pytest.raises(TypeError, match="hook_point must be a string, one of 'resid_pre'.*; got None"):
        SteeringVector.from_gguf(tmp_path / "v.gguf", hook_point=None)
    with pytest.raises(TypeError, match=r"hook_point must be a string.*; got \['resid_post'\]"):
        SteeringVector.from_numpy_file(tmp_path / "v.npy", 1, hook_point=["resid_post"])


def test_bad_gguf_files_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SteeringVector.from_gguf(tmp_path / "missing.gguf")
    with pytest.raises(FileNotFoundError, match="folder .* does not exist"):
        vec().to_gguf(tmp_path / "no" / "v.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="not a readable GGUF file"):
        SteeringVector.from_gguf(tmp_path / "junk.gguf")
    vec().to_gguf(tmp_path / "ok.gguf")
    data = (tmp_path / "ok.gguf").read_bytes()
    (tmp_path / "trunc.gguf").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable GGUF file"):
        SteeringVector.from_gguf(tmp_path / "trunc.gguf")
    one = {"direction.1": np.ones(D, dtype=np.float32)}
    write_foreign(tmp_path / "model.gguf", one, arch="llama")
    with pytest.raises(ValueError, match="architecture is 'llama', expected 'controlvector'"):
        SteeringVector.from_gguf(tmp_path / "model.gguf")
    write_foreign(tmp_path / "zero.gguf", {"direction.0": np.ones(D, dtype=np.float32)})
    with pytest.raises(ValueError, match=r"'direction\.0' is invalid"):
        SteeringVector.from_gguf(tmp_path / "zero.gguf")
    write_foreign(tmp_path / "name.gguf", {"bias.1": np.ones(D, dtype=np.float32)})
    with pytest.raises(ValueError, match=r"tensor 'bias\.1' is not a control-vector direction"):
        SteeringVector.from_gguf(tmp_path / "name.gguf")
    write_foreign(tmp_path / "f16.gguf", {"direction.1": np.ones(D, dtype=np.float16)})
    with pytest.raises(ValueError, match="must be a 1-D F32 tensor.*got type F16"):
        SteeringVector.from_gguf(tmp_path / "f16.gguf")
    write_foreign(tmp_path / "2d.gguf", {"direction.1": np.ones((2, D), dtype=np.float32)})
    with pytest.raises(ValueError, match=r"must be a 1-D F32 tensor.*shape \(8, 2\)"):
        SteeringVector.from_gguf(tmp_path / "2d.gguf")
    sizes = {"direction.1": np.ones(D, dtype=np.float32), "direction.2": np.ones(3, dtype=np.float32)}
    write_foreign(tmp_path / "sizes.gguf", sizes)
    with pytest.raises(ValueError, match="different sizes"):
        SteeringVector.from_gguf(tmp_path / "sizes.gguf")
    write_foreign(tmp_path / "empty.gguf", {})
    with pytest.raises(ValueError, match="holds no direction tensors"):
        SteeringVector.from_gguf(tmp_path / "empty.gguf")


# -- .npy ----------------------------------------------------------------------------------


def test_numpy_file_round_trip_is_exact(tmp_path):
    v = vec((1, 3, 5))
    for layer in v.layers:
        v.to_numpy_file(layer, tmp_path / f"{layer}.npy")
        w = SteeringVector.from_numpy_file(tmp_path / f"{layer}.npy", layer)
        assert w.hooks == [f"blocks.{layer}.hook_resid_post"]
        assert w[layer].dtype == torch.float32 and torch.equal(w[layer], v[layer])
    mlp = SteeringVector.from_numpy_file(str(tmp_path / "3.npy"), np.int64(3), hook_point="mlp_out")
    assert mlp.hooks == ["blocks.3.hook_mlp_out"] and torch.equal(mlp[3], v[3])


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, ">f4"])
def test_float_arrays_are_read_as_float32(tmp_path, dtype):
    array = np.linspace(-2, 2, D).astype(dtype)
    np.save(tmp_path / "v.npy", array)
    w = SteeringVector.from_numpy_file(tmp_path / "v.npy", 0)
    assert w[0].dtype == torch.float32
    assert np.array_equal(w[0].numpy(), array.astype(np.float32))


def test_numpy_shape_other_than_d_model_is_refused(tmp_path):
    np.save(tmp_path / "row.npy", np.ones((1, D), dtype=np.float32))
    with pytest.raises(ValueError, match=re.escape("shape (1, 8); expected a non-empty 1-D [d_model]")):
        SteeringVector.from_numpy_file(tmp_path / "row.npy", 2)
    np.save(tmp_path / "scalar.npy", np.float32(1.0))
    with pytest.raises(ValueError, match=re.escape("shape ();")):
        SteeringVector.from_numpy_file(tmp_path / "scalar.npy", 2)
    np.save(tmp_path / "empty.npy", np.ones(0, dtype=np.float32))
    with pytest.raises(ValueError, match=re.escape("shape (0,)")):
        SteeringVector.from_numpy_file(tmp_path / "empty.npy", 2)


@pytest.mark.parametrize(
    ("array", "name"),
    [
        (np.arange(D), "int64"),
        (np.arange(D, dtype=np.uint8), "uint8"),
        (np.ones(D, dtype=bool), "bool"),
        (np.ones(D, dtype=np.complex64), "complex64"),
        (np.array(["a", "b"]), "<U1"),
        (np.array([1.0, "x"], dtype=object), "object"),
    ],
)
def test_numpy_non_float_dtypes_are_refused(tmp_path, array, name):
    np.save(tmp_path / "v.npy", array, allow_pickle=True)
    with pytest.raises(TypeError, match=re.escape(f"holds a {name} array; a direction must be float16")):
        SteeringVector.from_numpy_file(tmp_path / "v.npy", 1)


def test_numpy_int_array_of_wrong_shape_names_the_dtype(tmp_path):
    np.save(tmp_path / "v.npy", np.ones((1, D), dtype=np.int32))
    with pytest.raises(TypeError, match="int32"):
        SteeringVector.from_numpy_file(tmp_path / "v.npy", 1)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([1.0, np.nan, 2.0], r"1 non-finite values \(first at index 1: nan\)"),
        ([np.inf, -np.inf, 0.0], r"2 non-finite values \(first at index 0: inf\)"),
        ([1e300, 0.0, 0.0], "beyond the float32 range"),
    ],
)
def test_numpy_non_finite_values_are_refused(tmp_path, values, message):
    np.save(tmp_path / "v.npy", np.array(values, dtype=np.float64))
    with pytest.raises(ValueError, match=message):
        SteeringVector.from_numpy_file(tmp_path / "v.npy", 1)


def test_numpy_bad_path_layer_and_hook_point(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"\.npy direction file .*missing\.npy' does not exist"):
        SteeringVector.from_numpy_file(tmp_path / "missing.npy", 1)
    np.save(tmp_path / "v.npy", np.ones(D, dtype=np.float32))
    with pytest.raises(ValueError, match="layer must be an int >= 0 .* got -1"):
        SteeringVector.from_numpy_file(tmp_path / "v.npy", -1)
    for layer in (1.0, True, "1", None):
        with pytest.raises(TypeError, match="layer must be an int >= 0"):
            SteeringVector.from_numpy_file(tmp_path / "v.npy", layer)
    with pytest.raises(ValueError, match="unknown hook point 'resid_psot'.*closest: 'resid_post'"):
        SteeringVector.from_numpy_file(tmp_path / "v.npy", 1, hook_point="resid_psot")
    np.savez(tmp_path / "v.npz", a=np.ones(D, dtype=np.float32))
    with pytest.raises(ValueError, match="is not a .npy file"):
        SteeringVector.from_numpy_file(tmp_path / "v.npz", 1)
    with pytest.raises(TypeError, match="path must be a str or pathlib.Path"):
        SteeringVector.from_numpy_file(b"v.npy", 1)
    with pytest.raises(IsADirectoryError, match=r"\.npy direction path .* is a folder; expected a file"):
        SteeringVector.from_numpy_file(tmp_path, 1)
    with pytest.raises(IsADirectoryError, match="control vector path .* is a folder"):
        SteeringVector.from_gguf(tmp_path)


def test_numpy_truncated_file_names_the_file(tmp_path):
    np.save(tmp_path / "v.npy", np.ones(1000, dtype=np.float32))
    data = (tmp_path / "v.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[:200])
    with pytest.raises(ValueError, match=r"cut\.npy' is a truncated or corrupt \.npy file"):
        SteeringVector.from_numpy_file(tmp_path / "cut.npy", 1)


def test_to_numpy_file_writes_exactly_the_given_path(tmp_path):
    """np.save adds '.npy' to a name without it, so from_numpy_file(same path) could not find it."""
    v = vec((1, 3))
    v.to_numpy_file(3, tmp_path / "layer3.direction")
    assert [p.name for p in tmp_path.iterdir()] == ["layer3.direction"]
    assert torch.equal(SteeringVector.from_numpy_file(tmp_path / "layer3.direction", 3)[3], v[3])
    with pytest.raises(FileNotFoundError, match="folder .* does not exist"):
        v.to_numpy_file(3, tmp_path / "no" / "v.npy")
