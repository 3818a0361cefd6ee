#!/usr/bin/env python3
"""Minimal inference with this bundle's model: numpy, the device's runtime and preprocess.py only.

    python3 infer.py                # classifies the first sample of eval.npz
    python3 infer.py frame.npy      # a frame (H, W[, C]) uint8 0..255: resized, cropped, normalized here

Each runtime's calls are spelled out below: copy the branch of yours into your application.
"""
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from preprocess import load_manifest_preprocessing, normalize_inputs, prepare  # noqa: E402

m = json.loads((HERE / "manifest.json").read_text())
pre = load_manifest_preprocessing(HERE / "manifest.json")
if len(sys.argv) > 1:                                  # one camera frame, one image input
    x = prepare(np.load(sys.argv[1]), pre)
else:                                                  # the first labelled sample shipped with the bundle
    with np.load(HERE / m["eval"]["file"]) as z:
        raw = {k: z[k][:1] for k in z.files if k != "y"}
    kinds = {("x" if "x" in raw else "x__" + i["name"]): i["kind"] for i in m["inputs"]}
    x = list(normalize_inputs(raw, kinds, pre["mean"], pre["std"]).values())[0]

if m["backend"] == "onnxruntime":
    import onnxruntime as ort
    session = ort.InferenceSession(str(HERE / m["deliverable"]), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})[0]
elif m["backend"] == "tflite":
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from tflite_runtime.interpreter import Interpreter
    it = Interpreter(model_path=str(HERE / m["deliverable"]), num_threads=2)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    if m["input"].get("layout") == "NHWC":
        x = x.transpose(0, 2, 3, 1)                    # the .tflite takes channels last
    if np.dtype(inp["dtype"]) == np.int8:              # full-integer model: quantize the input
        scale, zero = inp["quantization"]
        x = np.clip(np.round(x / scale) + zero, -128, 127).astype(np.int8)
    it.set_tensor(inp["index"], np.ascontiguousarray(x))
    it.invoke()
    logits = it.get_tensor(out["index"]).astype(np.float32)
    if np.dtype(out["dtype"]) == np.int8:              # dequantize the output
        scale, zero = out["quantization"]
        logits = (logits - zero) * scale
else:                                                  # tensorrt: the engine that build_engine.py built
    from build_engine import TrtRunner                 # deserialize model.plan, execute_async_v3 (see infer.cpp)
    logits = TrtRunner(str(HERE / "model.plan")).run(x.astype(np.float32))

if m["task"]["name"] in ("classification", "text-classification"):
    k = int(logits[0].argmax())
    print(f"class {k}: {m['labels'][k]} (logit {logits[0, k]:.3f})")
else:
    print("output:", logits[0])
