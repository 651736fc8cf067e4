"""The int8 artifact is right on x86 CPUs without VNNI, checked on any CPU by emulating them.

Without VNNI (AVX2-only, AVX-512 before Cascade Lake) onnxruntime and oneDNN multiply int8 with
VPMADDUBSW: s8 activations are fed as u8 (+128, the zero-point term is subtracted separately,
exactly), and each adjacent pair of u8 x s8 products is added into an int16 *with saturation*,
then widened to int32. This file does that arithmetic in numpy on the real int8 weights and the
real int8 activations of a trained, exported and quantized network, so the check does not
depend on the CPU the suite runs on (a VNNI CPU would never show the failure).

Which two products a kernel pairs depends on its memory layout; the emulation pairs neighbours
along the weight's own (input channel, kh, kw) order. The bound the new form keeps,
2 * 255 * max|w| <= 32767, holds for any pairing.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from nas2deploy.data import load_dataset
from nas2deploy.exporter import ExportContext
from nas2deploy.netspec import build_network
from nas2deploy.runtime import export_chain
from nas2deploy.target import Target
from nas2deploy.train import accuracy, train
from nas2deploy_exporters.to_onnx import QUANTIZED_OPS, WEIGHT_RANGE, quantize_int8

INT16_MAX, INT16_MIN = 32767, -32768
SPEC = {
    "input": {"channels": 1, "size": [16, 16]},
    "num_classes": 10,
    "nodes": [
        {"id": "stem", "op": "conv", "inputs": ["input"], "c_in": 1, "c_out": 16, "k": 3},
        {"id": "down", "op": "conv", "inputs": ["stem"], "c_in": 16, "c_out": 24, "k": 3,
         "stride": 2},
        {"id": "sep", "op": "sep", "inputs": ["down"], "c_in": 24, "c_out": 24, "k": 3},
        {"id": "head", "op": "head", "inputs": ["sep"], "c_in": 24, "num_classes": 10},
    ],
    "output": "head",
}


def vpmaddubsw_dot(a_u8: np.ndarray, w_s8: np.ndarray) -> np.ndarray:
    """sum_k a[m, k] * w[o, k] as VPMADDUBSW + VPMADDWD compute it: adjacent pairs of products
    summed into int16 with saturation, the pair sums then added in int32. [M, K] x [O, K] -> [M, O]
    """
    k = a_u8.shape[1]
    if k % 2:  # the kernels pad K with zeros to whole pairs
        a_u8 = np.pad(a_u8, ((0, 0), (0, 1)))
        w_s8 = np.pad(w_s8, ((0, 0), (0, 1)))
    prod = a_u8.astype(np.int32)[:, None, :] * w_s8.astype(np.int32)[None, :, :]
    pairs = prod.reshape(*prod.shape[:2], -1, 2).sum(-1)
    return np.clip(pairs, INT16_MIN, INT16_MAX).sum(-1), pairs


def test_the_emulated_instruction_saturates_like_vpmaddubsw():
    a = np.array([[255, 255, 128, 128]], dtype=np.uint8)
    w = np.array([[127, 127, -127, -127], [64, 64, -64, -64]], dtype=np.int8)
    got, pairs = vpmaddubsw_dot(a, w)
    # 255*127*2 = 64770 clips to 32767; 128*(-127)*2 = -32512 fits
    assert pairs[0, 0].tolist() == [64770, -32512] and got[0, 0] == 32767 - 32512
    # 7-bit weights: 2*255*64 = 32640 fits, the result is exact
    assert got[0, 1] == 255 * 64 * 2 - 128 * 64 * 2


def im2col(x: np.ndarray, node: onnx.NodeProto, c_per_group: int, group: int) -> np.ndarray:
    """The conv's input windows of one group as rows [N*Ho*Wo, Cg*kh*kw], in the order of the
    weight's flattening (input channel, kh, kw). Padding is the quantized zero (0)."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    kh, kw = attrs["kernel_shape"]
    t, left, b, r = attrs.get("pads", [0, 0, 0, 0])
    sh, sw = attrs.get("strides", [1, 1])
    assert list(attrs.get("dilations", [1, 1])) == [1, 1]
    assert attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
    xg = x[:, group * c_per_group:(group + 1) * c_per_group]
    xp = np.pad(xg, ((0, 0), (0, 0), (t, b), (left, r)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(-1, c_per_group * kh * kw)


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits", input_size=16, seed=0)


@pytest.fixture(scope="module")
def bundle(data, tmp_path_factory):
    """A trained net exported for an int8 target exactly as a bundle is (the new form), and the
    same fp32 ONNX quantized the old way (8-bit weights) with the same calibration images."""
    torch.manual_seed(0)
    net = build_network(SPEC)
    train(net, data.x_train, data.y_train, epochs=12, seed=0)
    net.eval()
    assert accuracy(net, data.x_test, data.y_test) > 0.85  # real, trained weights
    folder = tmp_path_factory.mktemp("int8")
    calibration = data.x_train[:256]
    ctx = ExportContext(folder, data.x_test[:1].clone(), Target.parse("onnxruntime:cpu:int8"),
                        {}, calibration=calibration)
    export_chain(net, ["onnx"], ctx)
    art = ctx.artifacts["onnx"]
    old = folder / "model.int8.8bit.onnx"
    old_info = quantize_int8(folder / art.files["fp32"], old, art.info["input_name"],
                             calibration, ctx.example, {}, reduce_range=False)
    return {"new": folder / art.files["model"], "old": old, "info": art.info["quantization"],
            "old_info": old_info, "input": art.info["input_name"]}


def conv_cases(path, input_name: str, x: np.ndarray) -> list[dict]:
    """For every quantized Conv: its int8 weights [O, Cg*kh*kw], per-channel weight scale, the
    real int8 activations it reads (as the Q/DQ graph quantizes them for input ``x``), and its
    output as the reference (float Q/DQ) evaluation computes it."""
    proto = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    made_by = {o: n for n in proto.graph.node for o in n.output}
    convs = []
    for n in proto.graph.node:
        if n.op_type != "Conv":
            continue
        dq_x, dq_w = made_by[n.input[0]], made_by[n.input[1]]
        assert dq_x.op_type == dq_w.op_type == "DequantizeLinear", n.name
        assert made_by[dq_x.input[0]].op_type == "QuantizeLinear", n.name
        w = inits[dq_w.input[0]]
        assert w.dtype == np.int8 and not inits[dq_w.input[2]].any()  # symmetric, per channel
        assert not inits[dq_x.input[2]].any() and inits[dq_x.input[2]].dtype == np.int8
        convs.append({"node": n, "x_q": dq_x.input[0], "w": w, "w_scale": inits[dq_w.input[1]],
                      "x_scale": float(inits[dq_x.input[1]]),
                      "bias": inits[n.input[2]] if len(n.input) > 2 else None})
    assert convs
    wanted = [c["x_q"] for c in convs] + [c["node"].output[0] for c in convs]
    for name in wanted:
        proto.graph.output.append(onnx.ValueInfoProto(name=name))
    opts = ort.SessionOptions()
    # the ONNX-defined arithmetic, no fused int8 kernel: what the graph *means*
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(proto.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    values = dict(zip(wanted, sess.run(wanted, {input_name: x})))
    for c in convs:
        c["x_s8"], c["y_ref"] = values[c["x_q"]], values[c["node"].output[0]]
        assert c["x_s8"].dtype == np.int8
    return convs


def emulate(conv: dict) -> dict:
    """The conv as a non-VNNI x86 kernel computes it, next to the exact integer result."""
    node, w = conv["node"], conv["w"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    group = attrs.get("group", 1)
    o, cg = w.shape[:2]
    og = o // group
    n, _, _, _ = conv["x_s8"].shape
    y_exact, y_sat, sat_pairs, max_pair = [], [], 0, 0
    for g in range(group):
        cols = im2col(conv["x_s8"], node, cg, g)                    # s8 [M, K]
        wg = w[g * og:(g + 1) * og].reshape(og, -1)                  # s8 [Og, K]
        exact = cols.astype(np.int64) @ wg.astype(np.int64).T
        u8 = (cols.astype(np.int16) + 128).astype(np.uint8)          # the kernels' s8 -> u8
        acc, pairs = vpmaddubsw_dot(u8, wg)
        sat = acc - 128 * wg.astype(np.int32).sum(1)                 # zero-point term, exact
        sat_pairs += int(((pairs > INT16_MAX) | (pairs < INT16_MIN)).sum())
        max_pair = max(max_pair, int(np.abs(pairs).max()))
        y_exact.append(exact)
        y_sat.append(sat)
    ho, wo = conv["y_ref"].shape[2:]

    def to_nchw(parts):
        return np.concatenate(parts, 1).reshape(n, ho, wo, o).transpose(0, 3, 1, 2)

    return {"exact": to_nchw(y_exact), "saturated": to_nchw(y_sat),
            "saturating_pairs": sat_pairs, "max_pair": max_pair}


def dequantize(conv: dict, acc: np.ndarray) -> np.ndarray:
    y = acc * conv["x_scale"] * conv["w_scale"].reshape(1, -1, 1, 1)
    return y if conv["bias"] is None else y + conv["bias"].reshape(1, -1, 1, 1)


def test_8bit_weights_saturate_on_real_data_and_change_the_conv_output(bundle, data):
    assert bundle["old_info"]["overflow_safe"] is False
    x = data.x_test[:32].numpy()
    total_pairs, changed = 0, 0
    for conv in conv_cases(bundle["old"], bundle["input"], x):
        e = emulate(conv)
        # the emulation computes this conv: exact integer arithmetic, dequantized, is what the
        # reference evaluation of the Q/DQ graph gives
        np.testing.assert_allclose(dequantize(conv, e["exact"]), conv["y_ref"], rtol=1e-4,
                                   atol=1e-4 * float(np.abs(conv["y_ref"]).max()))
        assert np.abs(conv["w"]).max() == 127  # full 8-bit range: some channel's max maps there
        total_pairs += e["saturating_pairs"]
        if e["saturating_pairs"]:
            assert e["max_pair"] > INT16_MAX
            diff = e["saturated"] != e["exact"]
            changed += int(diff.sum())
            # visible in the float output, not only in the integers
            err = np.abs(dequantize(conv, e["saturated"]) - dequantize(conv, e["exact"]))
            assert err.max() > 1e-3 * float(np.abs(conv["y_ref"]).max()), conv["node"].name
    assert total_pairs > 0, "real images drove no u8 x s8 pair past int16 with 8-bit weights"
    assert changed > 0


def test_the_artifact_has_7bit_weights_that_no_input_can_saturate(bundle, data):
    info = bundle["info"]
    assert info["overflow_safe"] is True and "7-bit" in info["weights"]
    assert "VNNI" in info["overflow_reason"] and "32767" in info["overflow_reason"]
    assert info["activations"].startswith("int8 symmetric")  # TensorRT's form is kept
    lo, hi = WEIGHT_RANGE
    bound = 2 * 255 * max(-lo, hi)
    assert bound <= INT16_MAX
    # every weight of every quantized op, whatever the input: the worst pair fits in int16
    proto = onnx.load(str(bundle["new"]))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    made_by = {o: n for n in proto.graph.node for o in n.output}
    quantized = [n for n in proto.graph.node if n.op_type in QUANTIZED_OPS
                 and made_by.get(n.input[1]) is not None
                 and made_by[n.input[1]].op_type == "DequantizeLinear"]
    assert {n.op_type for n in quantized} >= {"Conv", "Gemm"}
    for n in quantized:
        w = inits[made_by[n.input[1]].input[0]]
        assert w.dtype == np.int8 and lo <= w.min() and w.max() <= hi, n.name
        assert 2 * 255 * int(np.abs(w.astype(np.int32)).max()) <= INT16_MAX, n.name
    # and on real data the emulated non-VNNI kernel gives the exact result
    x = data.x_test[:32].numpy()
    for conv in conv_cases(bundle["new"], bundle["input"], x):
        e = emulate(conv)
        assert e["saturating_pairs"] == 0 and e["max_pair"] <= bound
        np.testing.assert_array_equal(e["saturated"], e["exact"])
        np.testing.assert_allclose(dequantize(conv, e["exact"]), conv["y_ref"], rtol=1e-4,
                                   atol=1e-4 * float(np.abs(conv["y_ref"]).max()))
