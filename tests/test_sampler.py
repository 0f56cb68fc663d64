"""The latent protocol as ONNX nodes (training.sampler) against its numpy reference (service.latents)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from service.latents import MAX_SEED, labels_for_seeds, latents_for_seeds, squares32
from training.sampler import CUDA_AND_CPU_OPS, INTEGER_STAGE, OPSET, sampler_graph, sampler_model, with_sampler

SEEDS = np.array([0, 1, 7, 12345, 2**31, MAX_SEED - 1, *range(1000, 1058)], dtype=np.int64)


def session(latent_dim: int, classes: int, *, integers: bool = False) -> ort.InferenceSession:
    """The sampler alone; with ``integers`` the squares32 outputs too, to hold them to the reference bit for bit."""
    model = sampler_model(latent_dim, classes, outputs=(INTEGER_STAGE,) if integers else ())
    onnx.checker.check_model(model, full_check=True)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def test_the_integer_stage_is_bit_exact():
    s = session(100, 0, integers=True)
    k = s.run([INTEGER_STAGE], {"seeds": SEEDS, "truncation": np.full(len(SEEDS), np.inf, np.float32)})[0]
    expected = squares32(SEEDS[:, None].astype(np.uint64) * np.uint64(2**32) + np.arange(100, dtype=np.uint64))
    np.testing.assert_array_equal(k, expected)


@pytest.mark.parametrize("latent_dim", [1, 16, 100, 512])
def test_the_graph_draws_the_reference_latents(latent_dim):
    rng = np.random.default_rng(0)
    t = rng.choice(np.array([np.inf, 0.01, 0.5, 1.0, 4.0], np.float32), len(SEEDS))
    z = session(latent_dim, 0).run(["z"], {"seeds": SEEDS, "truncation": t})[0]
    reference = latents_for_seeds(SEEDS, latent_dim, truncation=t)
    assert z.dtype == np.float32 and z.shape == (len(SEEDS), latent_dim)
    np.testing.assert_allclose(z, reference, rtol=0, atol=2e-6)  # float32 log/erf may round differently
    assert (np.abs(z) <= np.where(np.isinf(t), np.inf, t)[:, None]).all()


def test_the_graph_chooses_the_reference_labels():
    labels = np.array([-1, 3, 9, 10, -5] + [-1] * (len(SEEDS) - 5), np.int64)
    feeds = {"seeds": SEEDS, "labels": labels, "truncation": np.full(len(SEEDS), np.inf, np.float32)}
    chosen = session(8, 10).run(["label"], feeds)[0]
    np.testing.assert_array_equal(chosen, labels_for_seeds(SEEDS, 10, labels))


def test_the_sampler_uses_only_operators_cpu_and_cuda_both_implement():
    ops = {node.op_type for node in sampler_graph(100, 10).node}
    assert ops <= CUDA_AND_CPU_OPS, ops - CUDA_AND_CPU_OPS
    assert not {op for op in ops if op.startswith("Bit")}  # CUDA has no kernel for ONNX's bitwise operators


def test_with_sampler_takes_only_a_plain_generator_graph():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["images"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    with pytest.raises(ValueError, match=r"must take exactly \['z'\]"):
        with_sampler(model, latent_dim=4, classes=0)
    model.graph.input[0].name, model.graph.node[0].input[0] = "z", "z"
    once = with_sampler(model, latent_dim=4, classes=0)
    assert [i.name for i in once.graph.input] == ["seeds", "truncation"]
    assert [o.name for o in once.graph.output] == ["images", "z"]
    with pytest.raises(ValueError, match="must take exactly"):
        with_sampler(once, latent_dim=4, classes=0)  # its inputs are seeds now
