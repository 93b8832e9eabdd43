"""External tools of the C target: find them (one-line "install ..." when missing), run them, and turn
their failures on generated files into one-line errors with the log kept."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from runtime.errors import ToolError, UserError


def need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise UserError(f"{tool} not found: install the Debian package {package} (scripts/setup.sh does)")
    return path


def tool_error(what: str, cmd: list[str], r: subprocess.CompletedProcess | None, log: Path, note: str = "") -> ToolError:
    """A failure of an external tool on our own generated files: write its log, return a one-line error.

    A compile failure of generated C is a bug in codegen, not the user's fault; the message names the
    tool, the first error line and the log (the CLI prints it as one line; ``-v`` adds the traceback)."""
    out = "" if r is None else (r.stdout or "") + (r.stderr or "")
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(" ".join(map(str, cmd)) + "\n\n" + (note + "\n" if note else "") + out)
    lines = [l.strip() for l in out.splitlines() if l.strip()]
    first = next((l for l in lines if "error" in l.lower()), lines[0] if lines else note or "no output")
    rc = "" if r is None else f" (exit {r.returncode})"
    return ToolError(f"{what} failed{rc}: {first[:300]}; log: {log}")


def run_tool(cmd: list[str], log: Path) -> str:
    """Run ``cmd``; its stdout, or a ToolError naming the tool, its first error line and ``log``."""
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise tool_error(Path(cmd[0]).name, cmd, r, log)
    return r.stdout
