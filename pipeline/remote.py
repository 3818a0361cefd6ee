"""Bench over SSH: copy one target's bundle to a device, run the bundle's own run_on_device.py there with
the device's Python, fetch the device report, check its hashes and merge it into the run's report.

    python -m pipeline bench --remote user@host[:port] --bundle runs/<id>/handoff [--target T]
                             [--remote-python PATH] [--ssh-config FILE]

OpenSSH's own ssh/scp/rsync do the work, with the user's ~/.ssh/config, agent and keys (or the
ssh_config file given with --ssh-config or EDGE_COMPRESS_SSH_CONFIG); BatchMode is on, so no password
is ever asked for or stored. The bundle goes to ~/.cache/edge-compress/<target>-<sha12> on the device
(rsync when both ends have it, else scp). Every failure is one line naming the host and the fix.
Android over adb is not implemented; the same steps would map to `adb push` / `adb shell`.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import UserError
from pipeline.hashing import sha256_file

REMOTE_ROOT = ".cache/edge-compress"
CONNECT_TIMEOUT_S = 15
# The device-side probe: Python version, numpy, the bundle's runtime, free space where the bundle goes.
PROBE = r"""
import json, os, shutil, sys
out = {"python": "%d.%d.%d" % sys.version_info[:3], "missing": []}
for want in sys.argv[2:]:
    errors = []
    for m in want.split("|"):
        try:
            __import__(m)
            break
        except Exception as e:
            errors.append("%s: %s" % (m, e.__class__.__name__))
    else:
        out["missing"].append(" or ".join(errors))
d = os.path.expanduser(sys.argv[1])
os.makedirs(d, exist_ok=True)
out["free_bytes"] = shutil.disk_usage(d).free
print(json.dumps(out))
"""
RUNTIME_MODULES = {"onnxruntime": "onnxruntime", "tflite": "ai_edge_litert.interpreter|tflite_runtime.interpreter",
                   "tensorrt": "tensorrt"}
KIT = ("run_on_device.py", "devicekit.py", "hashing.py", "preprocess.py")   # what the timing of prune needs


@dataclass
class Remote:
    host: str                      # user@host or a Host alias of the ssh config
    port: int | None
    python: str = "python3"
    ssh_config: str | None = None
    timeout_s: float = 600.0
    root: str = REMOTE_ROOT        # where bundles go on the device: relative to its home, or absolute
    steps: list[dict] = field(default_factory=list)   # {"step", "seconds"} of each step, for the summary
    made: set = field(default_factory=set)             # remote folders made in this session
    rsync: bool | None = None                          # both ends have rsync (None: not asked yet)

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}" if self.port else self.host

    def _opts(self, port_flag: str) -> list[str]:
        opts = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}", "-o", "ServerAliveInterval=10",
                "-o", "ServerAliveCountMax=3"]
        config = self.ssh_config or os.environ.get("EDGE_COMPRESS_SSH_CONFIG")
        if config:
            opts = ["-F", config, *opts]
        return opts + ([port_flag, str(self.port)] if self.port else [])

    def ssh_cmd(self) -> list[str]:
        return ["ssh", *self._opts("-p"), self.host]

    def run(self, step: str, argv: list[str], timeout: float | None = None, remote: bool = True,
            check: bool = True) -> subprocess.CompletedProcess:
        """One step: `argv` run on the device through ssh (a shell-quoted command) or locally (scp/rsync)."""
        cmd = [*self.ssh_cmd(), "--", " ".join(shlex.quote(a) for a in argv)] if remote else argv
        t0 = time.monotonic()
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout or self.timeout_s,
                               stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise UserError(f"{self.name}: {step} did not finish within {timeout or self.timeout_s:.0f} s",
                            "check the device is not overloaded or asleep, or raise --remote-timeout") from None
        except FileNotFoundError as e:
            raise UserError(f"{e.filename} is not installed on this machine (needed to reach {self.name})",
                            "install OpenSSH's client (apt-get install openssh-client)") from None
        self.steps.append({"step": step, "seconds": round(time.monotonic() - t0, 3)})
        if check and r.returncode != 0:
            raise ssh_error(self.name, step, r.returncode, r.stderr, self.python)
        return r


def parse_remote(spec: str) -> tuple[str, int | None]:
    """'user@host[:port]' (or an ssh config Host alias) -> (destination, port or None)."""
    m = re.fullmatch(r"((?:[^@:\s/]+@)?(?:\[[0-9A-Fa-f:.]+\]|[^@:\s/\[\]]+))(?::(\d{1,5}))?", spec or "")
    if not m or (m.group(2) and not 0 < int(m.group(2)) < 65536):
        raise UserError(f"--remote {spec!r} is not user@host[:port]", "pass e.g. --remote pi@raspberrypi.local:22")
    return m.group(1).replace("[", "").replace("]", ""), int(m.group(2)) if m.group(2) else None


CONNECT_ERRORS = (("Permission denied", "the device refused the SSH key",
                   "add your public key to ~/.ssh/authorized_keys on the device (ssh-copy-id); passwords are never used"),
                  ("Host key verification failed", "the device's host key is not in known_hosts (or changed)",
                   "ssh to it once by hand and check the fingerprint, then run again"),
                  ("Could not resolve hostname", "the host name does not resolve",
                   "check the name, or use its IP address or a Host entry of ~/.ssh/config"),
                  ("Connection refused", "nothing accepts SSH connections there",
                   "start sshd on the device, or pass the right port (user@host:PORT)"),
                  ("timed out", "the device does not answer", "check it is powered, on the network and reachable"),
                  ("No route to host", "there is no route to the device", "check the network and the address"),
                  ("No space left on device", "the device's disk is full",
                   "free space on the device, or pass --remote-dir on a disk with room"),
                  ("Disk quota exceeded", "the device's disk quota is exceeded", "free space on the device"),
                  ("closed by remote host", "the connection dropped", "check the link and run the same command again"),
                  ("Connection reset", "the connection dropped", "check the link and run the same command again"),
                  ("Broken pipe", "the connection dropped", "check the link and run the same command again"),
                  ("lost connection", "the connection dropped", "check the link and run the same command again"))


def ssh_error(name: str, step: str, rc: int, stderr: str, python: str) -> UserError:
    """One line for a failed ssh/scp/rsync step, from its exit code and stderr."""
    for needle, problem, fix in CONNECT_ERRORS:
        if needle.lower() in stderr.lower():
            return UserError(f"{name}: {step} failed: {problem}", fix)
    if rc == 255:                 # ssh's own failure, with no message we know: the link
        return UserError(f"{name}: {step} failed: the SSH connection failed or dropped (ssh exit 255)",
                         "check the link and the device, then run the same command again")
    if rc in (126, 127) and python.split("/")[-1] in stderr or "not found" in stderr and rc == 127:
        return UserError(f"{name}: there is no {python} on the device", "install Python 3 there, or pass "
                         "--remote-python with the path of one that has numpy and the runtime")
    last = (stderr.strip().splitlines() or [f"exit code {rc}"])[-1][:300]
    return UserError(f"{name}: {step} failed ({last})", "fix that on the device and run the same command again")


# ---------------------------------------------------------------- the steps
def probe(r: Remote, modules: list[str], need_bytes: int) -> dict:
    """Python, numpy and the runtime on the device, and room for the bundle; one line for what is missing."""
    res = r.run("probe", [r.python, "-c", PROBE, r.root, "numpy", *modules], check=False)
    if res.returncode != 0:
        raise ssh_error(r.name, "probe", res.returncode, res.stderr, r.python)
    try:
        facts = json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise UserError(f"{r.name}: {r.python} did not answer the probe ({res.stdout[-200:]!r})",
                        "pass --remote-python with a Python 3 on the device") from None
    if facts["missing"]:
        raise UserError(f"{r.name}: {r.python} (Python {facts['python']}) cannot import {'; '.join(facts['missing'])}",
                        "install them on the device (pip install numpy and the runtime: onnxruntime, ai-edge-litert "
                        "or tflite-runtime, TensorRT from JetPack), or pass --remote-python with a Python that has them")
    if facts["free_bytes"] < 2 * need_bytes:
        raise UserError(f"{r.name}: only {facts['free_bytes'] / 1e6:.1f} MB free in {r.root}, the bundle needs "
                        f"{need_bytes / 1e6:.1f} MB (twice that with its report and engine)",
                        "free space on the device and run the same command again")
    return facts


def copy(r: Remote, files: list[Path], remote_dir: str) -> str:
    """The files into remote_dir (under the device's home): rsync when both ends have it, else scp."""
    if remote_dir not in r.made:
        r.run("mkdir", ["mkdir", "-p", remote_dir])
        r.made.add(remote_dir)
    if r.rsync is None:
        r.rsync = bool(shutil.which("rsync")) and r.run("rsync check", ["sh", "-c", "command -v rsync"],
                                                        check=False).returncode == 0
    if r.rsync:
        ssh = " ".join(shlex.quote(a) for a in r.ssh_cmd()[:-1])
        r.run("copy (rsync)", ["rsync", "-a", "--checksum", "--delete", "-e", ssh, *map(str, files),
                               f"{r.host}:{remote_dir}/"], remote=False)
        return "rsync"
    r.run("copy (scp)", ["scp", "-q", *r._opts("-P"), *map(str, files), f"{r.host}:{remote_dir}/"], remote=False)
    return "scp"


def fetch(r: Remote, remote_file: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    r.run("fetch", ["scp", "-q", *r._opts("-P"), f"{r.host}:{remote_file}", str(dest)], remote=False)


def bench_remote(r: Remote, bundle: Path, target: str | None, runs: int, warmup: int,
                 threads: int | None) -> tuple[list[str], dict]:
    """Copy, bench there, fetch, verify, merge: the lines to print and the merged device report."""
    from pipeline import device
    from pipeline.verify import TargetResult, check_files
    tdir, manifest = device._pick_target(Path(bundle), target)
    res = TargetResult(manifest["target"], manifest["backend"], manifest.get("device", "?"))
    check_files(tdir, manifest, res)
    if res.failures:
        raise UserError(f"bundle folder {tdir} does not match its manifest: {'; '.join(res.failures)}",
                        "get an intact bundle (python -m pipeline verify shows what is wrong)")
    if "run_on_device.py" not in manifest["files"]:
        raise UserError(f"{tdir} has no run_on_device.py (a bundle from an older version)",
                        "run the pipeline again: the handoff stage writes it")
    run_dir = tdir.parent.parent
    if not (run_dir / "report.json").is_file() or tdir.parent.name != "handoff":
        raise UserError(f"{bundle} is not a run's handoff/ folder (no report.json beside it)",
                        "pass runs/<id>/handoff of the run the device report is to be merged into")
    files = sorted(p for p in tdir.iterdir() if p.is_file() and p.name in {*manifest["files"], "manifest.json", "README.md"})
    probe(r, [RUNTIME_MODULES[manifest["backend"]]], sum(p.stat().st_size for p in files))
    remote_dir = f"{r.root.rstrip('/')}/{manifest['target']}-{sha256_file(tdir / 'manifest.json')[:12]}"
    how = copy(r, files, remote_dir)
    argv = ["sh", "-c", f"cd {shlex.quote(remote_dir)} && exec {shlex.quote(r.python)} run_on_device.py bench "
            f"--out device_report.json --runs {runs} --warmup {warmup}" + (f" --threads {threads}" if threads else "")]
    out = r.run("bench", argv, check=False)
    if out.returncode == 3:
        raise UserError(f"{r.name}: {(out.stderr.strip().splitlines() or ['the runtime is missing'])[-1]}",
                        "install it on the device, or pass --remote-python with a Python that has it")
    if out.returncode not in (0, 1):
        raise ssh_error(r.name, "bench", out.returncode, out.stderr, r.python)
    dest = run_dir / device.KEPT_DIR / f"{manifest['target']}.json"
    fetch(r, f"{remote_dir}/device_report.json", dest)
    dr = device.load_device_report(dest)
    t0 = time.monotonic()
    lines = device.merge(run_dir, [dest])
    r.steps.append({"step": "verify + merge", "seconds": round(time.monotonic() - t0, 3)})
    head = [f"{r.name}: copied {len(files)} files ({how}) to {remote_dir}, ran run_on_device.py bench with {r.python}",
            *[f"  {line}" for line in out.stdout.strip().splitlines()]]
    steps = ", ".join(f"{s['step']} {s['seconds']:.2f} s" for s in r.steps)
    return [*head, *lines, f"steps: {steps}"], dr


# ---------------------------------------------------------------- latency-budget pruning on the device
def latency_on_device(spec: str, python: str, threads: int, runs: int, scratch: Path):
    """`latency(model) -> {"p50_ms", ...}` for prune.budget=latency that times each candidate on the device
    (ONNX Runtime FP32 there, as on the host otherwise): exported here, copied, timed by run_on_device.py."""
    import tempfile

    from pipeline.backends.onnxruntime import export_onnx
    from pipeline.stages.handoff_docs import DEVICE_KIT
    host, port = parse_remote(spec)
    r = Remote(host, port, python=python)
    where = f"{r.root.rstrip('/')}/prune-timing"
    probe(r, ["onnxruntime"], 1 << 20)
    copy(r, [DEVICE_KIT[n] for n in KIT], where)

    def latency(model, example) -> dict:
        with tempfile.TemporaryDirectory(prefix=".remote-latency-", dir=scratch) as tmp:
            path = Path(tmp) / "candidate.onnx"
            export_onnx(model, example, path)
            copy(r, [path], where)
        out = r.run("time", ["sh", "-c", f"cd {shlex.quote(where)} && exec {shlex.quote(python)} run_on_device.py "
                             f"time candidate.onnx --runs {runs} --warmup 10 --threads {threads}"])
        lat = json.loads(out.stdout.strip().splitlines()[-1])
        return {"p50_ms": lat["p50"], "p50_ci95_ms": None, "runs": runs, "threads": threads, "where": r.name,
                "isa": lat.get("isa")}
    return latency
