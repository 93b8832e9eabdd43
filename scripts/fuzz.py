"""The long differential fuzzing campaign: random spec-valid models through every backend.

    .venv/bin/python scripts/fuzz.py --models 1000 --rtl-models 100 --seed 0 --sanitize

Generates ``--models`` cases with the hypothesis strategy of ``tests/fuzz_strategies.py`` (every
layer kind in any order, T 1..255, Q just above 1 to 2, F up to 30, 32-bit accumulators, products
beyond int32, padding at the spec's limit, pooling on the input code, models without a firing
layer) and ``--rtl-models`` more with small shapes, and checks each exactly against the golden
model: the plain-Python spec reading (``ref``), host C (``c``; with ``--sanitize`` also an
ASan+UBSan build, ``c-san``), and for the small ones the RTL under ``--sim`` (``rtl``: the cocotb
bench with input gaps, result stalls and a mid-frame reset).

Counts per backend: checked, matched, mismatches, compile errors, undefined behaviour, crashes,
simulator errors, and refusals with their reasons (a backend may refuse a model with a UserError,
e.g. an FPGA width limit; not a mismatch). Every failing case is saved as a reproducer
(``model.pt``, ``inputs.npy``, ``case.json``) under ``--out`` (default ``build/fuzz``) with a line in
its ``README.md``; ``--replay DIR`` re-checks one. Failures of a known bug (``KNOWN`` in
fuzz_strategies) are labelled as such. Exit status 1 if any failure is not a known one.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import json
import multiprocessing
import os
import platform
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("NUMBA_NUM_THREADS", "2")

import numpy as np  # noqa: E402

import fuzz_strategies as fz  # noqa: E402

FAIL = ("mismatch", "compile-error", "ub", "crash", "error")


def generate(n: int, seed: int, small: bool) -> list:
    """``n`` cases from the hypothesis strategy, reproducibly from ``seed`` (no shrinking)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed

    if n <= 0:
        return []
    out = []

    @hseed(seed)
    @settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=fz.cases(small=small))
    def collect(case):
        out.append(case)

    collect()
    return out[:n]


def _check(job):
    """Worker: (label, case, backends, sim, work) -> (label, verdicts, seconds)."""
    label, case, backends, sim, work = job
    t = time.perf_counter()
    try:
        verdicts = fz.check(case, backends, work=Path(work), sim=sim)
    except Exception as e:  # the checker itself failed: report it as a crash of the whole case
        verdicts = {b: fz.Verdict(b, "crash", f"checker: {type(e).__name__}: {fz._one_line(e)}") for b in backends}
    return label, verdicts, time.perf_counter() - t


def _reason(detail: str) -> str:
    """A refusal message with its numbers blanked, so that refusals group by reason."""
    return re.sub(r"-?\d+", "N", detail)[:160]


def save_repro(out: Path, label: str, case, verdicts: dict, seed: int) -> Path:
    from runtime import modelfile

    bad = [v for v in verdicts.values() if not v.ok]
    name = f"{label}-" + "-".join(f"{v.backend}-{v.status}" for v in bad)
    d = out / "repro" / name
    d.mkdir(parents=True, exist_ok=True)
    modelfile.save(case.model, d / "model.pt")
    np.save(d / "inputs.npy", case.images)
    info = {"label": label, "seed": seed, "case": case.describe(), "tags": sorted(case.tags), "lanes": case.lanes,
            "store": case.store, "rtl_seed": case.rtl_seed, "verdicts": {b: vars(v) for b, v in verdicts.items()},
            "replay": f".venv/bin/python scripts/fuzz.py --replay {d.relative_to(ROOT) if d.is_relative_to(ROOT) else d}"}
    (d / "case.json").write_text(json.dumps(info, indent=1) + "\n")
    readme = out / "README.md"
    if not readme.exists():
        readme.write_text("# Fuzz reproducers (scripts/fuzz.py)\n\nEach folder: `model.pt`, `inputs.npy` (the images), "
                          "`case.json` (lanes, stores, verdicts); re-check one with `scripts/fuzz.py --replay DIR`.\n\n"
                          "| folder | what happened |\n|---|---|\n")
    what = "; ".join(str(v).replace("|", "/") for v in bad)
    with open(readme, "a") as fh:
        fh.write(f"| `repro/{name}` | {what} |\n")
    return d


def replay(path: Path, sim: str, sanitize: bool) -> int:
    from runtime import modelfile

    info = json.loads((path / "case.json").read_text()) if (path / "case.json").is_file() else {}
    model = modelfile.load(path / "model.pt")
    if (path / "inputs.npy").is_file():
        images = np.load(path / "inputs.npy")
    else:                                       # a model alone: random images (seed 0)
        images = np.random.default_rng(0).integers(0, 256, size=(16, *model.input_shape)).astype(np.uint8)
    lanes = info.get("lanes", [2] * len(model.layers))
    store = info.get("store", ["rom"] * len(model.layers))
    case = fz.Case(model, images, lanes, store, rtl_seed=int(info.get("rtl_seed", 0)))
    backends = list(info.get("verdicts", {}).keys()) or ["ref", "c"] + (["c-san"] if sanitize else [])
    verdicts = fz.check(case, backends, work=ROOT / "build" / "fuzz" / "work", sim=sim)
    for v in verdicts.values():
        print(v)
    return 0 if all(v.ok for v in verdicts.values()) else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=100, help="cases through ref and C (default 100)")
    ap.add_argument("--rtl-models", type=int, default=0, help="small cases through ref, C and the RTL (default 0)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sanitize", action="store_true", help="also build every case with ASan+UBSan (c-san)")
    ap.add_argument("--sim", choices=["icarus", "verilator"], default="icarus", help="RTL simulator (default icarus)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes (default: every core)")
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "fuzz", help="reproducers and summary (default build/fuzz)")
    ap.add_argument("--replay", type=Path, help="re-check one saved reproducer folder and exit")
    args = ap.parse_args(argv)
    if args.replay:
        return replay(args.replay, args.sim, args.sanitize)
    if args.models < 0 or args.rtl_models < 0 or args.jobs < 1:
        ap.error("--models and --rtl-models must be >= 0, --jobs >= 1")
    from tqdm import tqdm

    t0 = time.perf_counter()
    c_backends = ["ref", "c"] + (["c-san"] if args.sanitize else [])
    print(f"generating {args.models} + {args.rtl_models} (small) cases, seed {args.seed} ...", flush=True)
    cases = generate(args.models, args.seed, small=False)
    small = generate(args.rtl_models, args.seed + 1_000_003, small=True)
    t_gen = time.perf_counter() - t0
    print(f"generated {len(cases)} + {len(small)} cases in {t_gen:.0f} s", flush=True)
    work = args.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    jobs = [(f"s{args.seed}-r{i}", c, c_backends + ["rtl"], args.sim, str(work)) for i, c in enumerate(small)]
    jobs += [(f"s{args.seed}-m{i}", c, c_backends, args.sim, str(work)) for i, c in enumerate(cases)]
    by_label = {j[0]: j[1] for j in jobs}

    counts = {b: collections.Counter() for b in fz.BACKENDS}
    refusals = {b: collections.Counter() for b in fz.BACKENDS}
    known = collections.Counter()
    tags = collections.Counter(t for c in cases + small for t in c.tags)
    failures, unknown_fail, seen_refusal = [], 0, set()
    os.environ["NUMBA_NUM_THREADS"] = "1"          # the workers (spawned now) use one thread each
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool, \
            tqdm(total=len(jobs), unit="model", desc="fuzz", dynamic_ncols=True) as bar:
        futs = [pool.submit(_check, j) for j in jobs]
        for fut in cf.as_completed(futs):
            label, verdicts, _ = fut.result()
            case = by_label.pop(label)
            save = False
            for b, v in verdicts.items():
                counts[b]["checked"] += 1
                counts[b][v.status] += 1
                if v.known:
                    known[f"{b}: {v.known}"] += 1
                if v.status == "refused":
                    r = _reason(v.detail)
                    refusals[b][r] += 1
                    save |= (b, r) not in seen_refusal        # the first refusal of each reason
                    seen_refusal.add((b, r))
                elif v.status in FAIL:
                    save = True
                    if not v.known:
                        unknown_fail += 1
            if save:
                d = save_repro(args.out, label, case, verdicts, args.seed)
                failures.append((label, d, [str(v) for v in verdicts.values() if not v.ok]))
                bar.write(f"{label}: {'; '.join(failures[-1][2])} -> {d}")
            bar.set_postfix(fail=sum(counts[b][s] for b in counts for s in FAIL), unknown=unknown_fail)
            bar.update()
    wall = time.perf_counter() - t0

    summary = {
        "command": " ".join([Path(sys.executable).name, "scripts/fuzz.py"] + (argv if argv is not None else sys.argv[1:])),
        "seed": args.seed, "generated": len(cases) + len(small), "rtl_sim": args.sim, "jobs": args.jobs,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "wall_s": round(wall, 1), "generate_s": round(t_gen, 1),
        "backends": {b: dict(c) for b, c in counts.items() if c},
        "refusals": {b: dict(r) for b, r in refusals.items() if r},
        "known": dict(known), "unknown_failures": unknown_fail, "tags": dict(sorted(tags.items())),
        "reproducers": [str(d) for _, d, _ in failures],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"summary-s{args.seed}.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"\n{summary['generated']} models generated ({len(cases)} for ref/C, {len(small)} small for the RTL), "
          f"wall {wall:.0f} s ({args.jobs} jobs)")
    print(f"{'backend':8} {'checked':>8} {'match':>8} {'mismatch':>9} {'compile':>8} {'ub':>5} {'crash':>6} {'error':>6} {'refused':>8}")
    for b, c in counts.items():
        if c:
            print(f"{b:8} {c['checked']:8} {c['match']:8} {c['mismatch']:9} {c['compile-error']:8} {c['ub']:5} "
                  f"{c['crash']:6} {c['error']:6} {c['refused']:8}")
    for b, r in refusals.items():
        for reason, k in r.most_common():
            print(f"  refused by {b} ({k}x): {reason}")
    for k, v in known.most_common():
        print(f"  known bug ({v}x) {k}")
    print(f"corners: {', '.join(f'{t} {k}' for t, k in sorted(tags.items()))}")
    print(f"unknown failures: {unknown_fail}; reproducers: {len(failures)} under {args.out / 'repro'}; "
          f"summary {args.out / f'summary-s{args.seed}.json'}")
    return 1 if unknown_fail else 0


if __name__ == "__main__":
    sys.exit(main())
