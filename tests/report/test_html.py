"""report.html (pipeline/report/html.py): self-contained, the plots are SVG in the page, artifacts
without host figures are listed as "not measured here" and kept out of the scatter; and the page
renders in headless Chromium without console errors."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from PIL import Image

from pipeline.report import schema
from pipeline.report.html import NOT_MEASURED, html

SVG = "{http://www.w3.org/2000/svg}"
XHTML = "{http://www.w3.org/1999/xhtml}"
TEACHER_ACC = 0.9123
ENGINE = "jetson: TensorRT engine"
PROXY = "jetson: INT8 QDQ ONNX (host proxy)"


def _art(name: str, stage: str, backend: str, precision: str, target: str | None, file: str | None,
         acc: float | None, p50: float | None, size: int | None, params: int, macs: int,
         selected: bool | None = None, note: str = "") -> dict:
    return {"name": name, "stage": stage, "backend": backend, "precision": precision, "target": target, "file": file,
            "accuracy": acc, "accuracy_delta": None if acc is None else acc - TEACHER_ACC,
            "latency_p50_ms": p50, "latency_p90_ms": None if p50 is None else p50 * 1.1,
            "latency_ci95_ms": None if p50 is None else [p50 * 0.98, p50 * 1.03],
            "latency_where": None if p50 is None else "host", "size_bytes": size, "params": params, "macs": macs,
            "selected": selected, "note": note}


def _target(name: str, device: str, backend: str, deliverable: str, engine: str, drop: float, size_mb: float,
            host_p50: float, notes: list[str]) -> dict:
    return {"name": name, "backend": backend, "precision": "int8", "device": device, "deliverable": deliverable,
            "engine": engine, "budgets": {"max_accuracy_drop": 0.01, "latency_ms": 2.0, "max_size_mb": 2.0},
            "measured": {"accuracy_drop": drop, "size_mb": size_mb, "latency_p50_ms": None,
                         "host_latency_p50_ms": host_p50},
            "budgets_met": {"accuracy": drop <= 0.01, "size": size_mb <= 2.0, "latency": None},
            "roofline_bound_ms": 0.0014,
            "calibration": {"name": "fashion-mnist-512", "sha256": "ab" * 32, "size": 512, "seed": 0},
            "calibration_method": "entropy", "notes": notes}


@pytest.fixture
def report() -> dict:
    """A two-target report (jetson: engine to be built on device; x86-cpu: ONNX Runtime INT8)."""
    shared = dict(params=310_000, macs=6_900_000)
    arts = [
        _art("teacher", "load", "onnxruntime", "fp32", None, "load/model.onnx", TEACHER_ACC, 0.412, 4_930_000,
             1_230_000, 13_800_000),
        _art("pruned", "prune", "onnxruntime", "fp32", None, "prune/model.onnx", 0.8512, 0.231, 1_250_000, **shared),
        _art("distilled", "distill", "onnxruntime", "fp32", None, "distill/model.onnx", 0.9051, 0.229, 1_250_000,
             **shared),
        _art("jetson: INT8 QDQ ONNX (host proxy)", "compile-jetson", "onnxruntime", "int8", "jetson",
             "compile-jetson/model.int8.qdq.onnx", 0.9032, 0.305, 340_000, **shared,
             note="TensorRT-ready QDQ ONNX run in ONNX Runtime CPU: host proxy of its INT8 numerics"),
        _art(ENGINE, "compile-jetson", "tensorrt", "int8+fp16", "jetson", None, None, None, None, **shared,
             note="to be built on device (TensorRT is not installed here)"),
        _art("x86-cpu: INT8 ONNX", "compile-x86-cpu", "onnxruntime", "int8", "x86-cpu",
             "compile-x86-cpu/model.int8.onnx", 0.9040, 0.198, 335_000, **shared, selected=True),
        _art("x86-cpu: FP32 ONNX", "compile-x86-cpu", "onnxruntime", "fp32", "x86-cpu",
             "compile-x86-cpu/model.fp32.onnx", 0.9051, 0.230, 1_250_000, **shared, selected=False),
    ]
    r = {"schema_version": schema.SCHEMA_VERSION, "created": "2025-01-01T00:00:00+00:00", "tool_version": "0.1.0",
         "target": "jetson,x86-cpu", "model": "default", "data": "fashion-mnist", "teacher_accuracy": TEACHER_ACC,
         "test_samples": 10000,
         "stages": {"load": "cached", "prune": "ran", "distill": "ran", "quantize-jetson": "ran",
                    "compile-jetson": "ran", "quantize-x86-cpu": "ran", "compile-x86-cpu": "ran", "evaluate": "ran",
                    "report": "ran"},
         "stage_wall_s": {"load": 1.2, "prune": 40.1, "distill": 300.5, "evaluate": 20.0},
         "artifacts": arts,
         "targets": [_target("jetson", "Jetson Orin Nano 8GB", "tensorrt", "jetson: INT8 QDQ ONNX (host proxy)",
                             "to be built on device", 0.0091, 0.34, 0.305,
                             ["tensorrt engine: to be built on device; accuracy and latency shown are host figures"]),
                     _target("x86-cpu", "x86-64 AVX2 (2 cores)", "onnxruntime", "x86-cpu: INT8 ONNX", "built",
                             0.0083, 0.335, 0.198, ["precision auto chose int8"])],
         "host": {"cpu": "Test CPU", "cores": 2, "machine": "x86_64", "flags": [], "os": "Linux", "python": "3.11"},
         "toolchain": {"torch": "2.13.0", "onnxruntime": "1.32.0"}}
    schema.validate(r)
    return r


def parse(page: str) -> ET.Element:
    """The page as XML (it is written well-formed), without the HTML5 doctype line."""
    assert page.startswith("<!DOCTYPE html>\n")
    return ET.fromstring(page.split("\n", 1)[1])


def text_of(el: ET.Element) -> str:
    return "".join(el.itertext())


def test_plots_are_inline_svg(report):
    root = parse(html(report))
    svgs = {s.get("id"): s for s in root.iter(f"{SVG}svg")}
    assert set(svgs) == {"plot-scatter", "plot-zoom", "plot-waterfall"}  # pruned and distilled overlap: a zoom
    # The QDQ ONNX of the TensorRT target is a host proxy: its time is no latency, so it is not drawn.
    measured = [a["name"] for a in report["artifacts"] if a["latency_p50_ms"] is not None and a["name"] != PROXY]
    scatter = svgs["plot-scatter"]
    points = [g for g in scatter.iter(f"{SVG}g") if g.get("class", "").startswith("point")]
    labels = [t.text for t in scatter.iter(f"{SVG}text") if t.get("class") == "label"]
    assert len(points) == len(measured) == 5 and sorted(labels) == sorted(measured)
    assert ENGINE not in text_of(scatter) and PROXY not in text_of(scatter)
    # Pareto frontier: x86-cpu INT8 (fastest) and the teacher (most accurate); pruned is beaten by both.
    front = {next(g.iter(f"{SVG}title")).text.rsplit(": ", 1)[0] for g in points if "pareto" in g.get("class")}
    assert {"x86-cpu: INT8 ONNX", "teacher"} <= front and "pruned" not in front
    assert scatter.find(f"{SVG}path").get("class") == "frontier"
    budgets = [text_of(g) for g in scatter.iter(f"{SVG}g") if g.get("class") == "budget"]
    assert budgets == ["jetson, x86-cpu accuracy budget (90.23%)"]  # one line for the budget both share
    steps = [g for g in svgs["plot-waterfall"].iter(f"{SVG}g") if g.get("class") == "step"]
    assert [g.find(f"{SVG}text").text for g in steps] == ["teacher", "pruned", "distilled", "jetson INT8",
                                                            "x86-cpu INT8"]
    assert "-72.8% vs distilled" in text_of(steps[3])


def test_unmeasured_engine_is_listed_not_plotted(report):
    page = html(report)
    root = parse(page)
    tradeoff = next(s for s in root.iter(f"{XHTML}section") if s.get("id") == "tradeoff")
    note = next(d for d in tradeoff.iter(f"{XHTML}div") if d.get("class") == "note")
    assert ENGINE in text_of(note) and "to be built on device" in text_of(note)
    attribution = next(s for s in root.iter(f"{XHTML}section") if s.get("id") == "attribution")
    tables = list(attribution.iter(f"{XHTML}table"))
    assert len(tables) == 2  # one per target
    jetson_rows = tables[0].findall(f"{XHTML}tbody/{XHTML}tr")
    assert [tr.find(f"{XHTML}td/{XHTML}b").text for tr in jetson_rows] == ["teacher", "pruned", "distilled", "INT8",
                                                                          "engine"]
    engine = [text_of(td) for td in jetson_rows[-1]]
    assert ENGINE in engine[0] and engine[1:5] == [NOT_MEASURED] * 4 and engine[5] == "built on device"
    assert "-6.11 pt" in text_of(jetson_rows[1]) and "+5.39 pt" in text_of(jetson_rows[2])  # vs the row above
    x86_rows = tables[1].findall(f"{XHTML}tbody/{XHTML}tr")
    assert [tr.find(f"{XHTML}td/{XHTML}b").text for tr in x86_rows][-1] == "INT8 (the engine runs it)"


def test_device_figures_are_marked_not_plotted(report):
    """A merged device report puts a device p50 on the engine row: shown as such, never on the host axis."""
    next(a for a in report["artifacts"] if a["name"] == ENGINE).update(latency_p50_ms=1.234, latency_where="device")
    root = parse(html(report))
    scatter = next(s for s in root.iter(f"{SVG}svg") if s.get("id") == "plot-scatter")
    assert ENGINE not in text_of(scatter)
    tradeoff = next(s for s in root.iter(f"{XHTML}section") if s.get("id") == "tradeoff")
    assert "device p50 1.234 ms" in text_of(tradeoff)
    attribution = next(s for s in root.iter(f"{XHTML}section") if s.get("id") == "attribution")
    engine_row = next(attribution.iter(f"{XHTML}tbody")).findall(f"{XHTML}tr")[-1]
    assert [text_of(td) for td in engine_row][4] == "1.234 (device)"


def test_self_contained_and_escaped(report):
    report["artifacts"][2]["name"] = "distilled <script>alert(1)</script>"
    page = html(report)
    parse(page)
    assert "<script" not in page and "&lt;script&gt;" in page
    assert "<link" not in page and "src=" not in page and "@import" not in page
    refs = {w for w in page.replace('"', " ").split() if w.startswith(("http://", "https://", "//"))}
    assert refs <= {"http://www.w3.org/1999/xhtml", "http://www.w3.org/2000/svg"}


def test_sparse_reports_render(report):
    """No teacher artifact (a report from a model without one) and nothing measured: still a page."""
    for a in report["artifacts"]:
        a.update(latency_p50_ms=None, latency_p90_ms=None, latency_ci95_ms=None, latency_where=None)
    report["artifacts"] = [a for a in report["artifacts"] if a["stage"] != "load"]
    report["teacher_accuracy"] = None
    root = parse(html(report))
    assert [s.get("id") for s in root.iter(f"{SVG}svg")] == ["plot-waterfall"]
    assert "No artifact has both accuracy and host latency" in text_of(root)


# ---------------------------------------------------------------- in a real browser
CHROMIUM = shutil.which("chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def chromium(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
                           *extra, page.as_uri()], capture_output=True, text=True, timeout=180)


def console_errors(log: str) -> list[str]:
    return [line for line in log.splitlines() if "CONSOLE" in line or "Uncaught" in line]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (./setup.sh --test installs it)")
def test_renders_in_chromium(report, tmp_path):
    page = tmp_path / "report.html"
    page.write_text(html(report))
    r = chromium(page, tmp_path / "profile-dom", "--dump-dom")
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'id="plot-scatter"' in r.stdout and 'id="plot-waterfall"' in r.stdout and "<circle" in r.stdout
    assert console_errors(r.stderr) == []
    shot = tmp_path / "shot.png"
    r = chromium(page, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1200,2000")
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    assert console_errors(r.stderr) == []
    with Image.open(shot) as im:
        assert im.size == (1200, 2000)
        colors = im.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 100  # text, plots and tables were drawn, not a blank page


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (./setup.sh --test installs it)")
def test_console_error_capture_works(tmp_path):
    """The check above would see a script error: the same capture flags one on a broken page."""
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><script>no_such_function();</script></body></html>")
    r = chromium(page, tmp_path / "profile", "--dump-dom")
    assert any("no_such_function" in line for line in console_errors(r.stderr)), r.stderr[-2000:]


# ---------------------------------------------------------------- a real jetson report in the browser
MEASURE = """<script>
addEventListener('load', () => {
  const txt = el => el ? el.textContent : '';
  const out = {
    verdicts: [...document.querySelectorAll('#verdict .verdict')].map(txt),
    plots: [...document.querySelectorAll('#plot-scatter, #plot-zoom')].map(txt).join(' | '),
    cells: [...document.querySelectorAll('td')].map(txt),
    overflow: [...document.querySelectorAll('table')].filter(t => t.scrollWidth > t.parentElement.clientWidth + 1)
      .map(t => t.querySelector('th').textContent + ' ' + t.scrollWidth + '>' + t.parentElement.clientWidth),
    page_overflow: document.documentElement.scrollWidth > innerWidth + 1,
  };
  const pre = document.createElement('pre');
  pre.id = 'measure';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (./setup.sh --test installs it)")
@pytest.mark.parametrize("width", [1200, 800])
def test_real_jetson_report_in_chromium(small_run, tmp_path, width):
    """The jetson report of a real run, laid out by Chromium: the verdict line leads, no host proxy's time
    (the QDQ ONNX in ONNX Runtime) is drawn or tabulated as a latency, and every table fits the page."""
    import json
    import re
    report = json.loads((small_run / "report.json").read_text())
    backend = {t["name"]: t["backend"] for t in report["targets"]}
    proxies = [a for a in report["artifacts"] if a.get("target") in backend and a["backend"] != backend[a["target"]]
               and a["latency_p50_ms"] is not None]
    assert [a["target"] for a in proxies] == ["jetson"]  # the QDQ ONNX: timed here, but not a latency
    page = tmp_path / "report.html"
    page.write_text((small_run / "report.html").read_text().replace("</body>", MEASURE + "</body>"))
    r = chromium(page, tmp_path / "profile", "--dump-dom", f"--window-size={width},1600")
    assert r.returncode == 0 and console_errors(r.stderr) == [], r.stderr[-2000:]
    m = json.loads(re.search(r'<pre id="measure">(.*?)</pre>', r.stdout, re.S).group(1).replace("&amp;", "&")
                   .replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"'))
    jetson = next(v for v in m["verdicts"] if v.startswith("jetson:"))
    assert ("fits the" in jetson or "MISSES the" in jetson) and "device latency not measured yet: run `bench`" in jetson
    assert len(m["verdicts"]) == len(report["targets"])
    for a in proxies:
        p50 = f"{a['latency_p50_ms']:.3f}"
        assert a["name"] not in m["plots"] and p50 not in m["plots"]
        assert not [c for c in m["cells"] if p50 in c], f"{a['name']}'s host time {p50} ms is tabulated"
    assert m["overflow"] == [] and not m["page_overflow"], m["overflow"]
    if width == 1200:   # a picture for whoever reads the change
        shot = tmp_path / "jetson-report.png"
        r = chromium(small_run / "report.html", tmp_path / "profile-shot", f"--screenshot={shot}",
                     "--window-size=1200,2400")
        assert r.returncode == 0 and shot.is_file()
