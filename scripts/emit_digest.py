"""Digest of everything ``codegen emit`` writes, to show a refactor changed no emitted byte.

For every shipped model (``models/*.pt``) and every target -- ``lut``; ``c`` for each MCU board;
``fpga`` without a board and for each FPGA board -- runs the public CLI into a temp folder and
records the sha256 of every file its ``manifest.json`` lists (and the manifest's own sha256), or the
one-line refusal when the command refuses (a model that does not fit a board).

    python scripts/emit_digest.py -o before.json             # on the old tree
    python scripts/emit_digest.py --compare before.json      # on the new tree: exit 1 on any difference

``--models`` and ``--targets`` narrow the set (e.g. ``--targets lut,c:mps2-an386,fpga:icebreaker@4``:
``@N`` sets ``--lanes N``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def targets() -> list[str]:
    from boards import registry

    mcu, fpga = [b.name for b in registry.boards("mcu")], [b.name for b in registry.boards("fpga")]
    # with the default lanes (8) no shipped model fits a board: lanes 4 is where the MLP fits both
    return ["lut"] + [f"c:{b}" for b in mcu] + ["fpga"] + [f"fpga:{b}" for b in fpga] + [f"fpga:{b}@4" for b in fpga]


def digest_one(model: Path, target: str, work: Path) -> dict:
    kind, _, board = target.partition(":")
    board, _, lanes = board.partition("@")
    out = work / f"{model.stem}-{kind}-{board or 'none'}-{lanes or 'default'}"
    cmd = [sys.executable, "-m", "codegen.cli", "emit", str(model), "--target", kind, "-o", str(out), "-q"]
    if board:
        cmd += ["--board", board]
    if lanes:
        cmd += ["--lanes", lanes]
    env = dict(os.environ, ONESPIKE_PROGRESS="0")
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        lines = [l for l in p.stderr.splitlines() if l.startswith("codegen:")]
        return {"exit": p.returncode, "error": lines[-1] if lines else p.stderr.strip()[-300:]}
    man_path = out / "manifest.json"
    man = json.loads(man_path.read_text())
    files = {e["name"]: e["sha256"] for e in man["files"]}
    for name, sha in files.items():   # the manifest tells the truth about the files on disk
        if hashlib.sha256((out / name).read_bytes()).hexdigest() != sha:
            raise SystemExit(f"{out / name}: sha256 differs from its manifest")
    files["manifest.json"] = hashlib.sha256(man_path.read_bytes()).hexdigest()
    return {"exit": 0, "files": files}


def _is_digest(path: Path) -> bool:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and all(isinstance(v, dict) and "exit" in v for v in d.values())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", help="write the digest JSON here")
    ap.add_argument("--compare", help="a digest JSON to compare with: exit 1 on any difference")
    ap.add_argument("--models", help="comma-separated model names (default: every models/*.pt)")
    ap.add_argument("--targets", help="comma-separated targets (default: " + ",".join(targets()) + ")")
    ap.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    if args.output and Path(args.output).exists() and not _is_digest(Path(args.output)):
        print(f"emit_digest: error: {args.output} exists and is not a digest this script wrote; not replacing it",
              file=sys.stderr)
        return 2
    models = sorted(p for p in (ROOT / "models").glob("*.pt") if not p.name.endswith(".ann.pt"))
    if args.models:
        want = args.models.split(",")
        models = [p for p in models if p.stem in want]
    tlist = args.targets.split(",") if args.targets else targets()
    jobs = [(m, t) for m in models for t in tlist]
    with tempfile.TemporaryDirectory(prefix="emit-digest-") as tmp, ThreadPoolExecutor(args.jobs) as ex:
        results = list(ex.map(lambda mt: digest_one(mt[0], mt[1], Path(tmp)), jobs))
    digest = {f"{m.stem} {t}": r for (m, t), r in zip(jobs, results)}
    text = json.dumps(digest, indent=1, sort_keys=True) + "\n"
    if args.output:
        from runtime.io import atomic_write_bytes

        atomic_write_bytes(args.output, text.encode())
    n_files = sum(len(r.get("files", {})) for r in digest.values())
    print(f"{len(digest)} model/target pairs, {n_files} files, "
          f"{sum(r['exit'] != 0 for r in digest.values())} refusals")
    if not args.compare:
        return 0
    ref = json.loads(Path(args.compare).read_text())
    bad = 0
    for key in sorted(set(ref) | set(digest)):
        if key not in digest or key not in ref:
            if args.models or args.targets:
                continue
            print(f"{key}: only in {'the reference' if key in ref else 'this tree'}")
            bad += 1
            continue
        a, b = ref[key], digest[key]
        if a == b:
            continue
        bad += 1
        if "files" in a and "files" in b:
            for name in sorted(set(a["files"]) | set(b["files"])):
                if a["files"].get(name) != b["files"].get(name):
                    print(f"{key}: {name} differs")
        else:
            print(f"{key}: {a.get('error', 'files')} != {b.get('error', 'files')}")
    checked = sum(1 for k in digest if k in ref)
    print(f"compared {checked} model/target pairs with {args.compare}: "
          + ("byte-identical" if not bad else f"{bad} differ"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
