"""ISA-aware INT8: what a target's CPU instruction sets (targets/*.toml [device] isa) mean for its INT8
settings, and whether this build host's figures stand for the target's ISA.

ONNX Runtime's x86 INT8 kernels multiply u8 activations by s8 weights. Without VNNI (AVX2 only, or
AVX-512 without VNNI) they use vpmaddubsw, which adds two u8*s8 products into a 16-bit lane that
saturates (255 * 127 * 2 > 32767); its documentation advises `reduce_range` (7-bit weights) or other
types there. With VNNI (vpdpbusd) the products accumulate in int32 and nothing saturates. ARM's
int8 kernels (ONNX Runtime's and LiteRT/XNNPACK's, with or without sdot/i8mm) accumulate exactly in
int32: there the ISA changes speed, not numbers, so the settings stay.
"""
from __future__ import annotations

from pipeline.bundle.devicekit import VNNI, cpu_isa

ARM = ("neon", "dotprod", "i8mm", "sve")


def arch_of(isa: list[str]) -> str | None:
    if any(n in ARM for n in isa):
        return "aarch64"
    return "x86_64" if isa else None


def ort_int8_settings(target_isa: list[str], enabled: bool = True) -> dict:
    """{"reduce_range", "target", "host", "why"} for ONNX Runtime's quantize_static on this target."""
    host = cpu_isa()
    out = {"target": list(target_isa), "host": host, "reduce_range": False}
    if not enabled:
        return out | {"why": "quantize.isa_aware=false: ONNX Runtime's defaults (8-bit weights) whatever the ISA"}
    if not target_isa:
        return out | {"why": "the target names no instruction sets ([device] isa): ONNX Runtime's defaults"}
    if arch_of(target_isa) == "aarch64":
        return out | {"why": "ARM int8 kernels accumulate exactly in int32: 8-bit weights"}
    if any(n in VNNI for n in target_isa):
        return out | {"why": "VNNI multiply-adds u8 x s8 into int32 without saturating: 8-bit weights"}
    return out | {"reduce_range": True,
                  "why": "no VNNI: the AVX2 u8s8 kernels (vpmaddubsw) saturate 16-bit pair sums, so weights use "
                         "7 bits (reduce_range), as ONNX Runtime's documentation advises"}


def int8_behaviour(isa: list[str]) -> str | None:
    """The class of INT8 numerics an ISA gives: 'x86-vnni', 'x86-no-vnni', 'arm'; None when unknown."""
    arch = arch_of(isa)
    if arch == "aarch64":
        return "arm"
    if arch == "x86_64":
        return "x86-vnni" if any(n in VNNI for n in isa) else "x86-no-vnni"
    return None


def host_mismatch_note(target_name: str, target_isa: list[str], host: dict | None = None) -> str | None:
    """A report note when the host's ISA differs from the target's in what matters for INT8, else None."""
    if not target_isa:
        return None
    host = host or cpu_isa()
    want, have = int8_behaviour(target_isa), int8_behaviour(host["isa"]) or host.get("arch")
    if want == have:
        return None
    return (f"ISA: the accuracy and latency in this report for {target_name} are host figures measured on "
            f"{host.get('arch')} ({', '.join(host['isa']) or 'no ISA flags read'}); the target assumes "
            f"{', '.join(target_isa)} (another ISA): run bench on the device for its own figures")
