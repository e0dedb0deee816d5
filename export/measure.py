"""Child processes of the export (converter, quantizer, adapter writer), run with their wall time and peak memory."""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from pathlib import Path

from common.errors import UserError


def _mib(n: float) -> float:
    return round(n / 2**20, 1)


def run_measured(cmd: list[str], what: str) -> dict:
    """Run a child process; its wall time and peak RSS, its output kept for errors. The peak is the child's own
    VmHWM polled from /proc (wait4's ru_maxrss would start from this process's size, inherited at fork)."""
    with tempfile.TemporaryFile() as log:
        t0 = time.time()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        peak_kib = 0
        while proc.poll() is None:
            try:
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak_kib = max(peak_kib, int(line.split()[1]))
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        seconds = time.time() - t0
        log.seek(0)
        output = log.read().decode("utf-8", errors="replace")
    if proc.returncode != 0:
        lines = [ln for ln in output.strip().splitlines() if ln.strip()]
        errors = [ln for ln in lines if re.search(r"error|not supported|exception", ln, re.IGNORECASE)]
        raise UserError(f"{what} failed (exit {proc.returncode}): {(errors or lines or ['no output'])[-1].strip()}")
    return {"seconds": round(seconds, 1), "peak_rss_mib": _mib(peak_kib * 1024)}
