"""Stand-ins for a device, made for real on this machine: a Python environment that holds only numpy and
the runtimes (links to this venv's copies; nothing of torch or the pipeline), and an OpenSSH server on
127.0.0.1 at a free high port with a key pair made for the test, logging in as the current user."""
from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

# what the device's Python may import: numpy and the runtimes (with their dist-info and bundled libs)
DEVICE_PACKAGES = ("numpy", "numpy.libs", "onnxruntime", "ai_edge_litert")
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def device_python(root: Path) -> Path:
    """A venv (no pip, no system site-packages) whose only packages are DEVICE_PACKAGES; its python path."""
    import numpy
    site = Path(numpy.__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    kit = root / "device-packages"
    kit.mkdir()
    for p in site.iterdir():
        if p.name in DEVICE_PACKAGES or any(p.name.startswith(n.replace(".", "_") + "-") and p.name.endswith(".dist-info")
                                            for n in DEVICE_PACKAGES):
            (kit / p.name).symlink_to(p)
    (next((root / "lib").glob("python3*")) / "site-packages" / "device.pth").write_text(str(kit) + "\n")
    return root / "bin" / "python"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SshServer:
    """sshd -D on 127.0.0.1:<port>, public-key only, for the current user; `config` is a client ssh_config
    whose Host `edge-test` reaches it with the test's key and host key (StrictHostKeyChecking yes)."""

    def __init__(self, root: Path):
        self.root, self.port, self.user = root, _free_port(), getpass.getuser()
        root.mkdir(parents=True, exist_ok=True)
        for name in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True)
        (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
        host_pub = (root / "host_key.pub").read_text().split()[:2]
        (root / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {' '.join(host_pub)}\n")
        os.chmod(root, 0o700)
        (root / "sshd_config").write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {root / 'host_key'}",
            f"AuthorizedKeysFile {root / 'authorized_keys'}", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "PubkeyAuthentication yes", "PermitRootLogin prohibit-password",
            "UsePAM no", "StrictModes no", f"PidFile {root / 'sshd.pid'}", "Subsystem sftp internal-sftp",
            f"AllowUsers {self.user}", "LogLevel ERROR", ""]))
        self.config = root / "ssh_config"
        self.config.write_text("\n".join([
            "Host edge-test", "  HostName 127.0.0.1", f"  Port {self.port}", f"  User {self.user}",
            f"  IdentityFile {root / 'client_key'}", "  IdentitiesOnly yes", f"  UserKnownHostsFile {root / 'known_hosts'}",
            "  StrictHostKeyChecking yes", ""]))
        self.proc = None

    def start(self) -> "SshServer":
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)   # sshd's privilege separation directory
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.root / "sshd_config")],
                                     stdout=subprocess.DEVNULL, stderr=open(self.root / "sshd.log", "wb"))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.root / 'sshd.log').read_text()[-500:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.1)
        raise RuntimeError("sshd did not listen within 20 s")

    def _sessions(self) -> list[int]:
        """Pids of the session processes this server forked (its children)."""
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def session_running(self, text: str) -> bool:
        """Whether a process under one of this server's sessions has `text` in its command line."""
        out = subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout
        procs = {int(a): (int(b), c) for a, b, c in (line.split(None, 2) for line in out.splitlines()[1:]
                                                     if len(line.split(None, 2)) == 3)}
        def under(pid: int) -> bool:
            while pid in procs and pid > 1:
                if pid == self.proc.pid:
                    return True
                pid = procs[pid][0]
            return False
        return any(text in args and under(pid) for pid, (_, args) in procs.items())

    def drop_sessions(self) -> int:
        """Kill this server's session processes (a dropped connection); the listener stays up."""
        pids = self._sessions()
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        return len(pids)

    @staticmethod
    def survivors(text: str, grace_s: float = 10.0) -> list[str]:
        """Command lines holding `text` still running after up to grace_s (a remote run left behind)."""
        deadline = time.monotonic() + grace_s
        while True:
            out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
            left = [line for line in out if text in line and "ps -eo" not in line]
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.25)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
