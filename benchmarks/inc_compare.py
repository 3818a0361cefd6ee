"""Intel Neural Compressor 3.x (PT2E static INT8, accuracy-driven autotune) against this pipeline's
own INT8 artifacts, on the distilled student of a finished run (issue #5, item 8).

Rows, all from one student (runs/default-jetson/distill/model.pt of the main checkout, or --student),
the same 512-sample calibration set (calibration/fashion-mnist-512) and the full Fashion-MNIST test split:
- the float student in torch eager (the baseline of every Δ) and compiled with Inductor (its batch-1 cost);
- INC PT2E static INT8 with INC's defaults (`neural_compressor.torch.export.export` -> `prepare` with
  `StaticQuantConfig()` -> calibration -> `convert`): X86InductorQuantizer, uint8 asymmetric per-tensor
  activations, int8 symmetric per-channel weights. Run as INC intends: `torch.compile` (Inductor,
  freezing on, static batch 1, cold compile cache); eager QDQ when compiling fails (the row says so);
- INC `autotune` over INC's own static-INT8 tuning set (`StaticQuantConfig.get_config_set_for_tuning()`:
  symmetric/asymmetric activations x kl/minmax) with an accuracy `eval_fn` on held-out *training*
  samples outside the calibration set (never the test split), tolerable_loss 1% relative;
- INC's converted model exported to ONNX (`torch.onnx.export`, dynamo exporter) and run in ONNX Runtime;
- this pipeline: ORT QDQ (`export_onnx` + `onnxruntime.quantize_int8`, minmax, as the x86-cpu target),
  its accuracy-aware fallback on the same held-out samples (budget 1 pt absolute, as the targets), and
  the full-integer INT8 TFLite (`tflite.convert_int8`, int8 I/O, minmax, as the android target) in LiteRT.
Deployability is checked, not assumed: torch.onnx.export (TorchScript and dynamo), litert-torch
conversion of INC's model, and `tensorrt.check_compat` (the static TensorRT QDQ rules) on every ONNX.

    .venv/bin/pip install -r benchmarks/requirements.txt      # neural-compressor (and NNCF)
    .venv/bin/python benchmarks/inc_compare.py [--test 10000] [--heldout 1000] [--runs 200] [--no-compile]

Latency: pipeline.latency.measure, batch 1, p50 of --runs timed calls at 2 threads (the
targets' setting) and at 1 thread: on a 2-core host that another job loads, torch's OpenMP pool at 2 threads
stalls on the busy core (tens of ms instead of ~3 ms) while ONNX Runtime and LiteRT do not, so the
1-thread column is the one to compare torch against the others with. Accuracy passes run at 1 thread.
Timings are host figures on a shared machine: compare rows of one run, not runs with each other.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

os.environ.setdefault("LOGLEVEL", "WARNING")        # neural-compressor's logger: trial tables and INFO lines off

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import models  # noqa: E402
from pipeline.compress import calibration, sensitivity  # noqa: E402
from pipeline.backends import onnxruntime as ort  # noqa: E402
from pipeline.backends import tensorrt as trt  # noqa: E402
from pipeline.backends import tflite as tfl  # noqa: E402
from pipeline.data import load_fashion_mnist  # noqa: E402
from pipeline.latency import host_facts, measure  # noqa: E402
from pipeline.compress.accuracy import runner_accuracy  # noqa: E402
from pipeline.compress.sensitivity import onnx_layers  # noqa: E402

from quantize_methods import table, timed  # noqa: E402  (benchmarks/ is sys.path[0] when run as a script)

STUDENT = Path("/work/main/runs/default-jetson/distill/model.pt")
BUDGET_PT = 0.01          # the targets' max_accuracy_drop (absolute), what our fallback is held to
TOLERANCE = 0.01          # INC autotune tolerable_loss (relative to the float held-out accuracy)


class TorchRunner:
    """A torch callable behind the Runner interface runner_accuracy uses (normalized NCHW in, logits out).
    `batch`: images per call (1 for a model compiled at a static batch of 1)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], batch: int = 256):
        self.fn, self.batch = fn, batch

    def run(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return np.concatenate([self.fn(torch.from_numpy(np.ascontiguousarray(x[i:i + self.batch]))).numpy()
                                   for i in range(0, len(x), self.batch)])


@contextlib.contextmanager
def torch_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def quiet():
    """Swallow the progress prints of torch.onnx (dynamo) and litert-torch."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0][:160] if lines else '(no message)'}"


def p50_torch(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    """p50 ms of fn() at 2 and at 1 torch thread."""
    out = []
    for t in (2, 1):
        with torch_threads(t), torch.no_grad():
            out.append(measure(fn, warmup=20, runs=runs, threads=t)["p50_ms"])
    return out[0], out[1]


def p50_runner(cls, path: Path, x1: np.ndarray, runs: int) -> tuple[float, float]:
    """p50 ms of one run_raw of an ORT / LiteRT Runner at 2 and at 1 thread."""
    out = []
    for t in (2, 1):
        r = cls(path, threads=t)
        xb = r.prepare(x1)
        out.append(measure(lambda: r.run_raw(xb), warmup=20, runs=runs, threads=t)["p50_ms"])
    return out[0], out[1]


def trt_verdict(path: Path) -> str:
    problems = trt.check_compat(path)
    if not problems:
        return "passes check_compat (QDQ rules, TRT 10.3)"
    rules = Counter(p["rule"] for p in problems)
    return "no: check_compat " + ", ".join(f"{n} {r}" for r, n in rules.most_common())


# ---------------------------------------------------------------- INC 3.x
def inc_export(model: torch.nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """INC's export for PT2E, with a dynamic batch so calibration and evaluation run batched
    (the same choice as tflite._export_for_calibration); batch 1 when the model pins it."""
    from neural_compressor.torch.export import export
    try:
        return export(model, (torch.cat([example, example]),), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    except Exception:  # noqa: BLE001 -- INC raises RuntimeError after logging torch's reason
        return export(model, (example,))


def calibrate_fn(calib: np.ndarray, batch: int) -> Callable[[torch.nn.Module], None]:
    def run(model: torch.nn.Module) -> None:
        with torch.no_grad():
            for i in range(0, len(calib) - batch + 1, batch):
                model(torch.from_numpy(calib[i:i + batch]))
    return run


def inc_static(model: torch.nn.Module, example: torch.Tensor, calib: np.ndarray, config=None) -> torch.fx.GraphModule:
    from neural_compressor.torch.quantization import StaticQuantConfig, convert, prepare
    exported = inc_export(model, example)
    batch = 64 if exported.dynamic_shapes else 1
    prepared = prepare(exported, StaticQuantConfig() if config is None else config, example_inputs=(example,))
    calibrate_fn(calib, batch)(prepared)
    return convert(prepared)


def inductor(q: torch.fx.GraphModule, example: torch.Tensor) -> tuple[Callable, float, str]:
    """torch.compile the converted model as INC/PyTorch's X86InductorQuantizer flow does (freezing on,
    under no_grad), at a static batch of 1. Returns (callable, compile s, how it runs)."""
    import torch._inductor.config as inductor_config
    inductor_config.freezing = True
    t0 = time.perf_counter()
    try:
        compiled = torch.compile(q, dynamic=False)
        with torch.no_grad():
            compiled(example)
        return compiled, time.perf_counter() - t0, "torch.compile (Inductor)"
    except Exception as e:  # noqa: BLE001 -- inductor raises many types; eager still runs
        print(f"  torch.compile failed after {time.perf_counter() - t0:.0f} s ({first_line(e)}); eager QDQ instead")
        return q, time.perf_counter() - t0, "torch eager (compile failed)"


def config_str(cfg) -> str:
    return (f"act {cfg.act_dtype} {'sym' if cfg.act_sym else 'asym'} {cfg.act_algo}, "
            f"w {cfg.w_dtype} {'sym' if cfg.w_sym else 'asym'} {cfg.w_granularity}")


# ---------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--student", type=Path, default=STUDENT)
    ap.add_argument("--test", type=int, default=10000, help="test samples for accuracy (the split has 10000)")
    ap.add_argument("--heldout", type=int, default=1000, help="held-out training samples for autotune / fallback")
    ap.add_argument("--runs", type=int, default=200, help="timed calls per latency figure")
    ap.add_argument("--no-compile", action="store_true", help="run INC's model in eager QDQ, skip torch.compile")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if not a.student.is_file():
        sys.exit(f"student not found: {a.student} (run `python -m pipeline run --target jetson` in the main checkout)")
    import neural_compressor
    from neural_compressor.torch.quantization import StaticQuantConfig, TuningConfig, autotune

    torch.set_num_threads(2)
    ds = load_fashion_mnist()
    cal_x, manifest = calibration.load("fashion-mnist-512", ds)
    calib = ds.normalize(cal_x)
    held = sensitivity.held_out(ds, manifest["indices"], a.heldout, a.seed + 2)
    x_raw, y_test = ds.x_test[:a.test], ds.y_test[:a.test]
    x_test = ds.normalize(x_raw)
    example = torch.from_numpy(held.x[:1])
    x1 = held.x[:1]
    student = models.load_model(models.parse_spec("default"), a.student).eval()
    h = host_facts()
    print(f"# inc_compare: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, host {h['cpu']} ({h['cores']} cores, "
          f"flags {','.join(h['flags'])}), load avg {os.getloadavg()[0]:.1f}, torch {torch.__version__}, "
          f"neural-compressor {neural_compressor.__version__}, {len(y_test)} test samples, {len(held.y)} held-out "
          f"training samples, calibration {manifest['name']} ({len(calib)}), batch-1 latency over {a.runs} runs",
          flush=True)

    rows, notes = [], []

    def acc_of(runner) -> float:
        with torch_threads(1):
            return runner_accuracy(runner, ds, x_raw, y_test)

    def add(what, acc, p50s, quant_s, artifact, trt_col, tfl_col, ort_col):
        rows.append((what, f"{acc:.4f}", f"{(acc - float_acc) * 100:+.2f}",
                     *(f"{v:.3f}" if isinstance(v, float) else v for v in p50s),
                     f"{quant_s:.1f}" if isinstance(quant_s, float) else quant_s,
                     artifact, trt_col, tfl_col, ort_col))
        print(f"  {what}: accuracy {acc:.4f}, p50 {p50s}", flush=True)

    with tempfile.TemporaryDirectory(prefix="inc-compare.") as tmpdir:
        tmp = Path(tmpdir)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp / "inductor")    # a cold compile, as on a fresh machine

        # ---- float baseline
        float_acc = acc_of(TorchRunner(student))
        add("float student, torch eager", float_acc, p50_torch(lambda: student(example), a.runs), "—",
            "nn.Module (PyTorch); each target exports it", "—", "—", "—")
        if not a.no_compile:        # Inductor's own batch-1 cost, to tell it apart from what INT8 changes
            cf, cf_s, cf_how = inductor(student, example)
            add(f"float student, {cf_how}", acc_of(TorchRunner(cf, 1)) if cf is not student else float_acc,
                p50_torch(lambda: cf(example), a.runs), "—", f"compiled float (reference for INC's row); "
                f"compile {cf_s:.0f} s", "—", "—", "—")

        def as_run(model: torch.nn.Module, eager_acc: float) -> tuple[Callable, float, str, float]:
            """How an INC model runs here: Inductor-compiled unless --no-compile; (callable, compile s, how,
            accuracy that way)."""
            if a.no_compile:
                return model, 0.0, "torch eager (--no-compile)", eager_acc
            run, compile_s, how = inductor(model, example)
            return run, compile_s, how, (acc_of(TorchRunner(run, 1)) if run is not model else eager_acc)

        # ---- INC PT2E static INT8 (defaults)
        q, q_s = timed(lambda: inc_static(student, example, calib))
        eager_batch = 256 if q.dynamic_shapes else 1
        eager_acc = acc_of(TorchRunner(q, eager_batch))
        run_q, compile_s, how, inc_acc = as_run(q, eager_acc)
        add(f"INC 3.10 PT2E static INT8 (defaults), {how}", inc_acc, p50_torch(lambda: run_q(example), a.runs), q_s,
            f"torch GraphModule (QDQ) for PyTorch{'+Inductor' if run_q is not q else ''} on x86"
            + (f"; compile {compile_s:.0f} s" if run_q is not q else ""),
            "no: a torch model, no ONNX/engine", "no: a torch model", "no: a torch model (ONNX via dynamo: row below)")
        if not a.no_compile:
            notes.append("compile s: the first torch.compile in the process (the float row) pays Inductor's "
                         "start-up; the cache dir is a fresh temp dir, so no compile is served from disk")
        notes.append(f"INC default config: {config_str(StaticQuantConfig())}; quantize s = export + prepare + "
                     f"calibration ({len(calib)} samples, batch 64) + convert. Eager QDQ (uncompiled) accuracy "
                     f"{eager_acc:.4f}" + (f"; {how} accuracy {inc_acc:.4f} at batch 1" if run_q is not q else ""))

        # ---- INC autotune, accuracy-driven, on held-out training samples
        evals = []

        def eval_fn(model: torch.nn.Module) -> float:
            with torch_threads(1):
                acc = float(np.mean(TorchRunner(model, 256 if model.dynamic_shapes else 1).run(held.x).argmax(1)
                                    == held.y))
            evals.append(acc)
            return acc

        # A list: INC 3.10's autotune iterates config_set before expanding it, so the single config its
        # docstring allows fails ("'INT8StaticQuantConfig' object is not iterable").
        tune = TuningConfig(config_set=[StaticQuantConfig.get_config_set_for_tuning()], tolerable_loss=TOLERANCE)
        n_space = len(StaticQuantConfig.get_config_set_for_tuning().expand())
        exported = inc_export(student, example)
        tuned, tune_s = timed(lambda: autotune(exported, tune, eval_fn=eval_fn,
                                               run_fn=calibrate_fn(calib, 64 if exported.dynamic_shapes else 1),
                                               example_inputs=(example,)))
        trials = len(evals) - 1
        if tuned is None:
            rows.append((f"INC autotune (tolerable_loss {TOLERANCE:.0%} rel.)", "none met", "", "", "", f"{tune_s:.1f}",
                         f"{trials} trials, no config within tolerance", "", "", ""))
        else:
            picked = next(iter(tuned.qconfig.values()))
            t_eager = acc_of(TorchRunner(tuned, eager_batch))
            run_t, t_compile, t_how, t_acc = as_run(tuned, t_eager)
            add(f"INC autotune (tolerable_loss {TOLERANCE:.0%} rel., held-out {len(held.y)}), {t_how}", t_acc,
                p50_torch(lambda: run_t(example), a.runs), tune_s,
                f"{trials} of {n_space} trials; picked {config_str(picked)}; held-out float {evals[0]:.4f}, "
                f"INT8 {evals[-1]:.4f}" + (f"; compile {t_compile:.0f} s" if run_t is not tuned else ""),
                "no: a torch model", "no: a torch model", "no: a torch model")
            notes.append(f"autotune: INC's static tuning set has {n_space} configs (act sym/asym x kl/minmax, "
                         f"global only, no per-layer fallback); it stops at the first within tolerance. "
                         f"Eager accuracy of the pick {t_eager:.4f}.")

        # ---- INC's model to ONNX / TFLite
        try:
            with quiet(), warnings_off():
                torch.onnx.export(q, (example,), io.BytesIO(), dynamo=False, opset_version=17)
            notes.append("torch.onnx.export(INC model, dynamo=False): exported")
        except Exception as e:  # noqa: BLE001
            notes.append(f"torch.onnx.export(INC model, dynamo=False) fails: {first_line(e)}")
        inc_onnx = tmp / "inc.onnx"
        try:
            (prog, ex_s) = timed(lambda: _dynamo_export(q, example))
            prog.save(str(inc_onnx))
            ops = Counter(n.op_type for n in onnx.load(str(inc_onnx)).graph.node)
            chains = weight_clip_chains(inc_onnx)
            runner = ort.Runner(inc_onnx, threads=1)
            o_acc = acc_of(runner)
            add("INC PT2E INT8 -> torch.onnx.export(dynamo=True), ONNX Runtime", o_acc,
                p50_runner(ort.Runner, inc_onnx, x1, a.runs), q_s + ex_s,
                f"QDQ ONNX opset {_opset(inc_onnx)}, {inc_onnx.stat().st_size / 1024:.0f} KB "
                f"({ops['QuantizeLinear']} Q / {ops['DequantizeLinear']} DQ, {chains} float weights quantized "
                f"at run time: Q->Clip->DQ); "
                f"export {ex_s:.0f} s", trt_verdict(inc_onnx), "no", "yes (runs in ORT CPU)")
            if chains:
                notes.append(f"INC's ONNX keeps the {chains} weights in float, each behind QuantizeLinear -> Clip -> "
                             "DequantizeLinear (INC's convert uses fold_quantize=False; the dynamo exporter adds the "
                             "Clip): check_compat reads those as per-channel activations, and the file is float-sized")
        except Exception as e:  # noqa: BLE001
            notes.append(f"torch.onnx.export(INC model, dynamo=True) fails: {first_line(e)}")
        try:
            import litert_torch
            with quiet(), warnings_off():
                litert_torch.convert(q, (example,)).model_content()
            notes.append("litert_torch.convert(INC model): converted (not run)")
        except Exception as e:  # noqa: BLE001
            notes.append(f"litert_torch.convert(INC model).model_content() fails: {first_line(e)}")
        # INC with TensorRT-style activations (int8, symmetric): does the ONNX then pass the TensorRT rules?
        try:
            q_sym = inc_static(student, example, calib, StaticQuantConfig(act_dtype="int8", act_sym=True))
            sym_onnx = tmp / "inc-sym.onnx"
            _dynamo_export(q_sym, example).save(str(sym_onnx))
            notes.append(f"INC with act_dtype=int8, act_sym=True -> dynamo ONNX: TensorRT {trt_verdict(sym_onnx)}; "
                         f"ORT accuracy {acc_of(ort.Runner(sym_onnx, threads=1)):.4f}")
        except Exception as e:  # noqa: BLE001
            notes.append(f"INC int8-symmetric variant failed: {first_line(e)}")

        # ---- this pipeline: ORT QDQ, its fallback, INT8 TFLite
        fp32 = tmp / "student.fp32.onnx"
        qdq = tmp / "student.int8.onnx"

        def ort_build() -> None:
            ort.export_onnx(student, example, fp32)
            ort.quantize_int8(fp32, calib, qdq, method="minmax")
        _, ort_s = timed(ort_build)
        add("this pipeline: ORT QDQ INT8 (x86-cpu), ONNX Runtime", acc_of(ort.Runner(qdq, threads=1)),
            p50_runner(ort.Runner, qdq, x1, a.runs), ort_s,
            f"QDQ ONNX opset {_opset(qdq)}, {qdq.stat().st_size / 1024:.0f} KB (uint8 act / int8 per-channel weights)",
            trt_verdict(qdq) + " (jetson ships the modelopt QDQ)", "no", "yes")

        def fallback() -> dict:
            ref = ort.Runner(fp32, threads=1).run(held.x)
            fb_path = tmp / "student.fallback.onnx"
            builds = []

            def quantized(float_layers) -> np.ndarray:
                builds.append(tuple(float_layers))
                ort.quantize_int8(fp32, calib, fb_path, method="minmax", exclude_nodes=float_layers)
                return ort.Runner(fb_path, threads=1).run(held.x)
            all_int8 = sensitivity.score(quantized(()), ref, held.y)
            order = []
            if float(np.mean(ref.argmax(1) == held.y)) - all_int8["accuracy"] > BUDGET_PT:
                ranked = sensitivity.rank(onnx_layers(fp32), quantized, ref, held.y)
                order = [r["layer"] for r in ranked["ranking"]]
            fb = sensitivity.fallback(order, quantized, ref, held.y, BUDGET_PT, 4, all_int8=all_int8)
            return {**fb, "builds": len(builds), "path": fb_path}
        fb, fb_s = timed(fallback)
        add(f"this pipeline: accuracy-aware fallback (ORT QDQ, ≤{BUDGET_PT * 100:.0f} pt abs., "
            f"held-out {len(held.y)})",
            acc_of(ort.Runner(fb["path"], threads=1)), p50_runner(ort.Runner, fb["path"], x1, a.runs), fb_s,
            f"{fb['builds']} build(s); float layers: {', '.join(f['layer'] for f in fb['float_layers']) or 'none'}; "
            f"held-out float {fb['float_accuracy']:.4f}, drop {fb['accuracy_drop'] * 100:+.2f} pt",
            "— (jetson: same fallback on modelopt QDQ)", "— (android: same fallback on TFLite)", "yes")

        tfl_path = tmp / "student.int8.tflite"
        with quiet():
            _, tfl_s = timed(lambda: tfl.convert_int8(student, example, calib, tfl_path, io_dtype="int8",
                                                      method="minmax"))
        add("this pipeline: full-integer INT8 TFLite (android), LiteRT", acc_of(tfl.Runner(tfl_path, threads=1)),
            p50_runner(tfl.Runner, tfl_path, x1, a.runs), tfl_s,
            f"INT8 .tflite, {tfl_path.stat().st_size / 1024:.0f} KB (int8 I/O, NHWC), LiteRT/XNNPACK",
            "no", "yes", "no")

    table("INC 3.x vs this pipeline's INT8, distilled student (accuracy: Fashion-MNIST test split; Δ vs float eager)",
          ("what", "accuracy", "Δ pt", "p50 ms 2 thr", "p50 ms 1 thr", "quantize s", "artifact / runtime / detail",
           "TensorRT/Jetson", "TFLite/Android-RPi", "ONNX Runtime/x86"), rows)
    print()
    for n in notes:
        print(f"- {n}")


def _dynamo_export(model: torch.nn.Module, example: torch.Tensor):
    with quiet(), warnings_off():
        return torch.onnx.export(model, (example,), dynamo=True)


def weight_clip_chains(path: Path) -> int:
    """QuantizeLinear(constant) -> Clip -> DequantizeLinear chains: float weights quantized at run time."""
    model = onnx.load(str(path))
    consts = {i.name for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    count = 0
    for n in model.graph.node:
        clip = producer.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        q = producer.get(clip.input[0]) if clip is not None and clip.op_type == "Clip" else None
        count += q is not None and q.op_type == "QuantizeLinear" and q.input[0] in consts
    return count


def _opset(path: Path) -> int:
    return next(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx"))


@contextlib.contextmanager
def warnings_off():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


if __name__ == "__main__":
    main()
