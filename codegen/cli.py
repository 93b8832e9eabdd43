"""The ``codegen`` command line: train, convert, inspect, run, emit.

Every user error is one line on stderr (``codegen: error: ...``) with exit code 2; ``-v`` adds the
traceback. Outputs are written atomically, so a failed command leaves no half-written file.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

TARGETS = ("lut", "c", "fpga")
IMPLEMENTED_TARGETS = ("lut", "c", "fpga")


def _model_name(path: Path) -> str:
    """``models/mnist-cnn.pt`` -> ``mnist-cnn``; ``build/mnist-cnn/model.pt`` -> ``mnist-cnn``."""
    name = path.name
    if name in ("model.pt", "ann.pt") and path.resolve().parent.name:
        return path.resolve().parent.name
    for suf in (".ann.pt", ".pt", ".pt2", ".onnx"):
        if name.endswith(suf):
            return name[: -len(suf)]
    return path.stem


def check_int(value, option: str, lo: int = 1, hi: int | None = None) -> int:
    """A numeric option in range, else a one-line error naming it ("--batch must be ... not 0")."""
    from runtime.errors import UserError

    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        want = ("a positive integer" if lo == 1 else "a non-negative integer" if lo == 0 else f"an integer >= {lo}") \
            if hi is None else f"an integer in {lo}..{hi}"
        raise UserError(f"{option} must be {want}, not {value}")
    return value


def check_number(option: str, value, ok, what: str) -> None:
    """A float option (None: not given) that is finite and ``ok``, else "--Q must be a number in (1, 2], not 3"."""
    import math

    from runtime.errors import UserError

    if value is not None and not (math.isfinite(value) and ok(value)):
        raise UserError(f"{option} must be {what}, not {value:g}")


def _F_option(value):
    """``--F``: None, ``"auto"`` (the F search) or an integer in 0..30; else the one-line UserError."""
    from runtime.errors import UserError

    if value is None or value == "auto":
        return value
    try:
        f = int(value)
    except ValueError:
        f = None
    if f is None or not 0 <= f <= 30:
        raise UserError(f"--F must be an integer in 0..30 or 'auto', not {value}")
    return f


def _load_images(args, model):
    """Images and labels for ``run``: a dataset split or a ``.npy`` of uint8 pixels."""
    from codegen.frontend import datasets, images
    from runtime import golden
    from runtime.errors import UserError

    if args.input and args.dataset:
        raise UserError("give --dataset NAME or --input FILE.npy, not both")
    if args.n is not None:
        check_int(args.n, "-n")
    if args.input:
        x, y = images.load_npy(args.input, model), None
    else:
        if not args.dataset:
            raise UserError("give --dataset NAME or --input FILE.npy")
        x, y = datasets.load(args.dataset, args.split)
    if args.n is not None:
        x = x[: args.n]
        y = None if y is None else y[: args.n]
    return golden.check_images(model, x), y


def _judge_model(src: Path):
    """An existing ``convert -o`` file: regenerated if converted from the same ANN file, else same kind."""
    def judge(path):
        from runtime import modelfile

        meta = modelfile.load(path).meta
        same = src.is_file() and meta.get("source_ann_sha256") == modelfile.file_sha256(src)
        return "regenerate" if same else "same-kind"
    return judge


def _judge_ann(arch: str):
    def judge(path):
        from codegen.frontend import ann

        _, _, meta = ann.load(path)
        return "regenerate" if meta.get("arch") == arch else "same-kind"
    return judge


def cmd_train(args) -> int:
    from codegen.frontend import ann
    from codegen.frontend import train

    from codegen import outputs

    from codegen.frontend import train_det

    if args.arch not in train.ARCHS and args.arch not in train_det.ARCHS:
        from runtime.errors import UserError

        raise UserError(f"unknown architecture {args.arch!r}; known: {', '.join(list(train.ARCHS) + list(train_det.ARCHS))}")
    if args.epochs is not None:
        check_int(args.epochs, "--epochs")
    check_int(args.seed, "--seed", lo=0)
    out = Path(args.output or f"build/{args.arch}.ann.pt")
    outputs.check_file(out, judge=_judge_ann(args.arch), force=args.force, kind="ANN file")
    if args.arch in train_det.ARCHS:
        model, meta = train_det.train(args.arch, seed=args.seed, epochs=args.epochs, progress=not args.quiet)
        w, h = meta["input_size"]
        ann.save(out, model, (meta["channels"], h, w), meta)
        v = meta["val"]
        print(f"{args.arch}: val mAP@0.5 {v['map50']:.3f}, mAP@[.5:.95] {v['map']:.3f}, AP@0.5 "
              + ", ".join(f"{k} {a:.3f}" for k, a in v["ap50"].items())
              + f"; FOMO F1 {v['fomo_f1']:.3f} at score threshold {meta['head']['score_threshold']:g} "
              + f"({'3x3 peaks' if meta['head']['peak'] else 'suppression alone'}); wrote {out}")
        return 0
    model, meta = train.train(args.arch, seed=args.seed, epochs=args.epochs, progress=not args.quiet)
    ann.save(out, model, (1, 28, 28), meta)
    print(f"{args.arch}: test accuracy {100 * meta['test_accuracy']:.2f}%, wrote {out}")
    return 0


def cmd_finetune(args) -> int:
    import numpy as np

    from codegen import outputs
    from codegen.frontend import ann, convert, datasets
    from codegen.frontend import finetune as ft
    from runtime.errors import UserError
    from runtime.spec import MAX_T

    # 1. every option, before anything is loaded
    check_number("--Q", args.Q, lambda v: 1 < v <= 2, "a number in (1, 2]")
    check_number("--T", args.T, lambda v: 1 <= v <= MAX_T, f"an integer in 1..{MAX_T}")
    if (args.Q is None) != (args.T is None):
        raise UserError("give --Q and --T together (or neither: the pair codegen convert picks for the ANN)")
    check_number("--input-Q", args.input_Q, lambda v: 1 < v <= 2, "a number in (1, 2]")
    check_number("--input-T", args.input_T, lambda v: 1 <= v <= MAX_T, f"an integer in 1..{MAX_T}")
    check_number("--budget", args.budget, lambda v: 0 < v <= 1, "a share of the start network's SOPs in (0, 1]")
    check_number("--lr", args.lr, lambda v: 0 < v < 1, "a learning rate in (0, 1)")
    check_number("--mu-step", args.mu_step, lambda v: 0 < v <= 1, "a step in (0, 1]")
    check_int(args.epochs, "--epochs")
    check_int(args.batch, "--batch")
    check_int(args.val, "--val", lo=100)
    check_int(args.calib, "--calib", lo=2)
    check_int(args.seed, "--seed", lo=0)
    if args.gradient not in ft.GRADIENTS:
        raise UserError(f"--gradient must be one of {', '.join(ft.GRADIENTS)}, not {args.gradient!r}")
    if (args.ann is None) == (args.scratch is None):
        raise UserError("give an ANN file to fine-tune or --scratch ARCH (direct training from random weights), one")
    if args.scratch is not None:
        from codegen.frontend import train

        if args.scratch not in train.ARCHS:
            raise UserError(f"--scratch: unknown architecture {args.scratch!r}; known: {', '.join(train.ARCHS)}")
    src = Path(args.ann) if args.ann is not None else None
    name = _model_name(src) if src is not None else args.scratch
    out = Path(args.output) if args.output else Path("build") / f"{name}-ft.ann.pt"

    def judge(path):
        _, _, meta = ann.load(path)
        same = meta.get("finetune", {}).get("source_ann_sha256") == (_sha(src) if src is not None else args.scratch)
        return "regenerate" if same else "same-kind"

    def _sha(path):
        from runtime import modelfile

        return modelfile.file_sha256(path) if Path(path).is_file() else None

    outputs.check_file(out, inputs=[src] if src is not None else [], judge=judge, force=args.force, kind="ANN file")
    if src is not None:
        from codegen.frontend import graph

        net, input_shape, meta, notes = graph.load_network(src)
        for n in notes:
            print(f"codegen: note: {n}", file=sys.stderr)
    else:                   # seed 003: the one-spike network trained directly, from the ANN's random init
        import torch

        from codegen.frontend import train

        builder, ds_name, _, shift = train.ARCHS[args.scratch]
        torch.manual_seed(args.seed)
        net, input_shape = builder().eval(), (1, 28, 28)
        meta = {"arch": args.scratch, "dataset": ds_name, "max_shift": shift, "from_scratch": True}
    if meta.get("task") == "detect":
        raise UserError(f"{src} is a detector: codegen finetune trains classifiers (mnist, fashion-mnist)")
    ds = datasets.canonical(args.dataset or meta.get("dataset") or "")
    low = convert.lower(net, input_shape)
    if any(st.kind == "avgpool" for st in low.stages):
        raise UserError("codegen finetune does not take average-pooling layers yet")
    # 2. the work (seeded: torch and numpy from --seed, 2 threads, deterministic algorithms)
    from codegen.frontend import train as _train

    _train.seeded(args.seed, 2)
    xtr, ytr = datasets.load(ds, "train")
    if args.val >= len(ytr) - 100:
        raise UserError(f"--val {args.val} leaves too few of the {len(ytr)} training images to train on")
    x_fit, y_fit = xtr[:len(ytr) - args.val], ytr[:len(ytr) - args.val]
    x_val, y_val = xtr[len(ytr) - args.val:], ytr[len(ytr) - args.val:]
    rng = np.random.default_rng(args.seed)
    calib = x_fit[np.sort(rng.choice(len(x_fit), size=min(args.calib, len(x_fit)), replace=False))]
    progress = not args.quiet
    in_Q, in_T = args.input_Q or 1.02, args.input_T or 255
    Q, T = args.Q, args.T
    if args.budget is None:
        args.budget = 1.0 if src is None else 0.5
    if Q is None and src is None:
        Q, T = 1.2, 16      # a random network has no code of its own to search for
    if Q is None:       # the code codegen convert would pick for this ANN
        conv = convert.convert(net, input_shape, calib, input_Q=in_Q, input_T=in_T, progress=progress)
        Q, T, normd = conv.model.Q, conv.model.T, conv.normalised
    else:
        convert.calibrate(low, calib, progress=progress)
        normd = convert.normalise(low)
    torch_threads = _torch_threads()
    onet = ft.OneSpikeNet(normd, Q, T, in_Q, in_T, args.gradient)
    max_shift = int(meta.get("max_shift", 0) or 0)
    res = ft.finetune(onet, x_fit, y_fit, x_val, y_val, epochs=args.epochs, lr=args.lr, batch_size=args.batch,
                      budget=args.budget, max_shift=max_shift, seed=args.seed, progress=progress,
                      mu_step=args.mu_step)
    xte, yte = datasets.load(ds, "test")
    test = ft.evaluate(onet, xte, yte)
    seq = onet.to_sequential()
    new_meta = dict(meta)
    new_meta.update({
        "dataset": ds, "onespike_code": {"normalised": True, "Q": float(Q), "T": int(T), "input_Q": float(in_Q),
                                         "input_T": int(in_T)},
        "finetune": {"source_ann_sha256": _sha(src) if src is not None else args.scratch, "gradient": args.gradient, "budget": args.budget,
                     "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch, "seed": args.seed,
                     "validation_images": args.val, "mu_step": args.mu_step, "best_epoch": res.best_epoch, "history": res.history,
                     "start_validation": res.start, "best_validation": res.best, "test_float_onespike": test,
                     "seconds_per_epoch": res.seconds_per_epoch, "torch_threads": torch_threads},
    })
    new_meta.pop("test_accuracy", None)      # the ANN's: not this network's (its float one-spike figure is above)
    ann.save(out, seq, input_shape, new_meta)
    s0, s1 = res.start, res.best
    print(f"{name}: one-spike float network at Q={Q:g}, T={T}, input code ({in_Q:g}, {in_T}), gradient "
          f"{args.gradient}")
    print(f"  validation ({args.val} held-out training images): accuracy {100 * s0['accuracy']:.2f}% -> "
          f"{100 * s1['accuracy']:.2f}%, SOPs per image {s0['sops']:,.0f} -> {s1['sops']:,.0f} "
          f"({s1['sops'] / max(s0['sops'], 1):.2f}x), epoch {res.best_epoch} of {args.epochs} kept")
    print(f"  test (float one-spike): accuracy {100 * test['accuracy']:.2f}%, SOPs per image {test['sops']:,.0f}; "
          f"{res.seconds_per_epoch:.1f} s per epoch (median)")
    print(f"wrote {out}; then: codegen convert {out} --dataset {ds}")
    return 0


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def cmd_convert(args) -> int:
    import numpy as np
    import torch

    from codegen import report
    from codegen.frontend import convert
    from codegen.frontend import datasets
    from runtime import golden, modelfile
    from runtime.errors import UserError
    from runtime.spec import MAX_T

    # 1. every option, before anything is loaded
    check_number("--Q", args.Q, lambda v: 1 < v <= 2, "a number in (1, 2]")
    check_number("--T", args.T, lambda v: 1 <= v <= MAX_T, f"an integer in 1..{MAX_T}")
    args.F = _F_option(args.F)
    check_number("--input-Q", args.input_Q, lambda v: 1 < v <= 2, "a number in (1, 2]")
    check_number("--input-T", args.input_T, lambda v: 1 <= v <= MAX_T, f"an integer in 1..{MAX_T}")
    check_number("--percentile", args.percentile, lambda v: 0 < v <= 100, "a number in (0, 100]")
    calib_n, calib_path = _calib_option(args.calib)
    check_number("--error-target", args.error_target, lambda v: 0 <= v <= 100, "a percentage in [0, 100]")
    check_number("--seed", args.seed, lambda v: v >= 0, "a non-negative integer")
    check_number("--score-threshold", args.score_threshold, lambda v: abs(v) <= 1000, "a number in -1000..1000 (logits)")
    from codegen.frontend import graph, images, voc

    import_opts = dict(mean=_floats(args.mean, "--mean"), std=_floats(args.std, "--std", positive=True),
                       input_scale=args.input_scale, image_shape=_shape_option(args.input_shape))
    check_number("--input-scale", args.input_scale, lambda v: v > 0, "a positive number (255: the graph takes raw pixels)")
    if args.test_labels and not args.test:
        raise UserError("--test-labels goes with --test IMAGES.npy")
    if args.dataset is None:
        if calib_path is None:
            raise UserError("give --dataset NAME, or your own calibration images with --calib FILE.npy|FOLDER "
                            "(and, for the accuracy report, --test)")
        detection_data = False
    else:
        detection_data = voc.is_detection_dataset(args.dataset)
        if detection_data:
            voc.canonical(args.dataset)
        else:
            datasets.canonical(args.dataset)
    if detection_data and (calib_path or args.test):
        raise UserError("--calib PATH and --test apply to classifiers; a detector calibrates on its --dataset's "
                        "train split (a VOC folder: --dataset voc:PATH)")
    src = Path(args.ann)
    out = Path(args.output) if args.output else Path("build") / _model_name(src) / "model.pt"
    # 2. the output can be written, and replaces nothing it may not (codegen.outputs)
    from codegen import outputs

    user_files = [Path(f) for f in (calib_path, args.test, args.test_labels) if f]
    outputs.check_file(out, inputs=[src] + user_files, judge=_judge_model(src), force=args.force,
                       kind="one-spike model")
    # 3. the network file, and whether the options can give a valid model at all
    net, input_shape, ann_meta, notes = graph.load_network(src, **import_opts)
    code = ann_meta.get("onespike_code") or {}      # an ANN from codegen finetune: its units and codes
    if args.norm is None:
        args.norm = "none" if code.get("normalised") else "percentile"
    if args.Q is None and args.T is None:          # the code it was trained at (else: searched as usual)
        args.Q, args.T = code.get("Q"), code.get("T")
    args.input_Q = code.get("input_Q", 1.02) if args.input_Q is None else args.input_Q
    args.input_T = code.get("input_T", 255) if args.input_T is None else args.input_T
    convert.check_options(Q=args.Q, T=args.T, F=args.F, norm=args.norm, percentile=args.percentile,
                          max_disagree=args.error_target, input_Q=args.input_Q, input_T=args.input_T)
    convert.lower(net, input_shape)  # every structural refusal before the datasets are read
    is_detector = ann_meta.get("task") == "detect"
    if is_detector != detection_data:
        raise UserError(f"{src} is a {'detector' if is_detector else 'classifier'} but {args.dataset!r} is a "
                        f"{'detection' if detection_data else 'classification'} dataset")
    if is_detector:
        return _convert_detector(args, net, input_shape, ann_meta, src, out)
    if args.score_threshold is not None:
        raise UserError("--score-threshold applies to detectors")
    # 4. the user's data (read and checked before the work)
    if calib_path is not None:
        xtr = images.load_user_images(calib_path, input_shape)
        if len(xtr) < 2:
            raise UserError(f"{calib_path}: {len(xtr)} calibration image; at least 2 are needed")
    else:
        xtr, _ = datasets.load(args.dataset, "train")
        xtr = images.to_nchw(xtr, input_shape, f"the {args.dataset} train split")
    if args.test:
        xte, yte = images.load_labelled(args.test, args.test_labels, input_shape)
        test_name = str(args.test)
    elif args.dataset is not None:
        xte, yte = datasets.load(args.dataset, "test")
        xte = images.to_nchw(xte, input_shape, f"the {args.dataset} test split")
        test_name = f"{datasets.canonical(args.dataset)} test split"
    else:
        xte, yte, test_name = None, None, None
    n_out = int(net[-1].out_features) if isinstance(net[-1], torch.nn.Linear) else None
    if yte is not None and n_out is not None and int(yte.max()) >= n_out:
        raise UserError(f"{args.test or args.dataset}: label {int(yte.max())} but the network has {n_out} outputs")
    for n in notes:
        print(f"codegen: note: {n}", file=sys.stderr)
    # 5. the work
    rng = np.random.default_rng(args.seed)
    calib = xtr[np.sort(rng.choice(len(xtr), size=min(calib_n, len(xtr)), replace=False))]
    progress = not args.quiet
    conv = convert.convert(net, input_shape, calib, Q=args.Q, T=args.T, F=args.F, norm=args.norm,
                           percentile=args.percentile, max_disagree=args.error_target, input_Q=args.input_Q,
                           input_T=args.input_T, progress=progress)
    m = conv.model
    m.meta.update({
        "name": _model_name(Path(args.output)) if args.output else _model_name(src),
        "dataset": datasets.canonical(args.dataset) if args.dataset else None,
        "calibration": str(calib_path) if calib_path else f"{datasets.canonical(args.dataset)} train split",
        "source_ann_sha256": modelfile.file_sha256(src),
        "ann_meta": ann_meta, "calibration_seed": args.seed,
        "search": conv.search,
    })
    if xte is not None:
        ann_acc = float((convert.ann_predict(conv.lowered, xte, progress=progress) == yte).mean())
        f1_acc = float((convert.onespike_predict(conv.normalised, xte, m.Q, m.T, input_Q=m.input_Q,
                                                 input_T=m.input_T, progress=progress) == yte).mean())
        res = golden.run_batched(m, xte, progress=progress, desc="integer model")
        st = report.stats(m, res, yte)
        m.meta.update({"test_set": test_name,
                       "test_accuracy": {"ann_float": ann_acc, "onespike_float": f1_acc, "integer": st["accuracy"]},
                       "spikes_per_neuron": st["spikes_per_neuron"]})
    modelfile.save(m, out)
    _warn_target_missed(m, conv, f"{args.error_target}% disagreement")
    print(f"converted {src} -> {out}: Q={m.Q:g} T={m.T} (input Q={m.input_Q:g} T={m.input_T}) F={m.F}, "
          f"accumulators {[l.acc_bits for l in m.layers if l.acc_bits]} bits")
    if xte is not None:
        print(f"test accuracy ({len(yte)} images, {test_name}): ANN float {100 * ann_acc:.2f}% | one-spike float "
              f"{100 * f1_acc:.2f}% | one-spike integer {100 * st['accuracy']:.2f}% | spikes per neuron "
              f"{st['spikes_per_neuron']:.4f}")
    else:
        print("no test set (--dataset or --test): accuracy not measured")
    return 0


def _calib_option(value) -> tuple[int, str | None]:
    """``--calib``: a count of train-split images (at least 2), or a path to the user's images (all used)."""
    from runtime.errors import UserError

    v = str(value)
    if v.lstrip("-").isdigit():
        if int(v) < 2:
            raise UserError(f"--calib must be an integer of at least 2 (images), not {v} (or the path of your own images)")
        return int(v), None
    return 10 ** 9, v


def _floats(value, option: str, positive: bool = False):
    """``--mean 0.1307`` or ``--mean 0.485,0.456,0.406`` -> a list of finite floats (None: not given)."""
    import math

    from runtime.errors import UserError

    if value is None:
        return None
    try:
        out = [float(x) for x in str(value).split(",")]
    except ValueError:
        out = []
    if not out or not all(math.isfinite(x) and (x > 0 or not positive) for x in out):
        want = "positive numbers" if positive else "numbers"
        raise UserError(f"{option} must be one or comma-separated {want} (one per channel), not {value}")
    return out


def _shape_option(value):
    """``--input-shape C,H,W`` -> a tuple of 3 positive integers (None: not given)."""
    from runtime.errors import UserError

    if value is None:
        return None
    parts = str(value).split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) >= 1 for p in parts):
        raise UserError(f"--input-shape must be C,H,W (three positive integers), not {value}")
    return tuple(int(p) for p in parts)


def _warn_target_missed(m, conv, target: str) -> None:
    if m.meta.get("error_target_met") is False:
        best = min(r["disagreement_percent"] for r in conv.search if r["disagreement_percent"] is not None)
        print(f"codegen: warning: no (Q, T) met the error target of {target}; using the most faithful one tried "
              f"({best}%)", file=sys.stderr)


def _convert_detector(args, net, input_shape, ann_meta, src: Path, out: Path) -> int:
    from codegen.detection import convert as det_convert
    from codegen.detection import evaluate
    from codegen.frontend import voc
    from runtime import modelfile

    used = ann_meta
    if args.score_threshold is not None:  # the ANN's own record (its val-chosen threshold) stays as it was
        used = dict(ann_meta, head=dict(det_convert.head_of(ann_meta, src), score_threshold=args.score_threshold))
    conv, figures = det_convert.convert(
        net, input_shape, used, args.dataset, src, calib=int(args.calib), seed=args.seed, progress=not args.quiet,
        Q=args.Q, T=args.T, F=args.F, norm=args.norm, percentile=args.percentile, max_disagree=args.error_target,
        input_Q=args.input_Q, input_T=args.input_T)
    m = conv.model
    m.meta.update({
        "name": _model_name(Path(args.output)) if args.output else _model_name(src),
        "dataset": voc.canonical(args.dataset), "source_ann_sha256": modelfile.file_sha256(src),
        "ann_meta": ann_meta, "calibration_seed": args.seed, "search": conv.search,
        "score_threshold_override": args.score_threshold,
        "figures": {split: {net_: evaluate.public(f) for net_, f in per.items()} for split, per in figures.items()},
    })
    modelfile.save(m, out)
    _warn_target_missed(m, conv, f"{args.error_target}% of the ANN's object cells")
    print(f"converted {src} -> {out}: detector, Q={m.Q:g} T={m.T} (input Q={m.input_Q:g} T={m.input_T}) F={m.F}, "
          f"accumulators {[l.acc_bits for l in m.layers if l.acc_bits]} bits, score threshold "
          f"{m.head.score_threshold} (units of {m.meta['readout_unit']:.3g})")
    for split in ("val", "test"):
        t = figures[split]
        print(evaluate.format_table({"ANN float": t["ann_float"], "one-spike float": t["onespike_float"],
                                     "one-spike integer": t["integer"]}, m.head.classes,
                                    title=f"{split} split ({t['integer']['images']} images)"))
    return 0


def cmd_export(args) -> int:
    """``codegen export MODEL.pt --to nir``: the model as a NIR graph (see codegen/nirgraph.py)."""
    import numpy as np

    from codegen import nirgraph, outputs
    from codegen.frontend import datasets
    from runtime import golden, modelfile
    from runtime.errors import UserError

    if args.to != "nir":
        raise UserError(f"--to must be nir, not {args.to}")
    if args.check is not None:
        check_int(args.check, "--check")
        check_int(args.steps, "--steps", hi=100000)
        if not args.dataset:
            raise UserError("--check N runs the exported graph on N test images: give --dataset NAME")
        datasets.canonical(args.dataset)
    src = Path(args.model)
    m = modelfile.load(src)
    if m.task != "classify":
        raise UserError(f"{src}: NIR export of detectors is not supported: NIR has no form for the detection "
                        f"head's decode")
    name = _model_name(src)
    out = Path(args.output) if args.output else Path("build") / name / f"{name}.nir"
    sha = modelfile.file_sha256(src)

    def judge(path):
        import nir

        try:
            meta = nir.read(str(path)).metadata or {}
        except Exception:  # noqa: BLE001 (not a NIR file: never replaced)
            return None
        if meta.get("format") != nirgraph.NIR_FORMAT:
            return None
        return "regenerate" if str(meta.get("source_sha256")) == sha else "same-kind"

    outputs.check_file(out, inputs=[src], judge=judge, force=args.force, kind="one-spike NIR graph")
    m.meta["source_sha256"] = sha
    nirgraph.write(m, out)
    print(f"exported {src} -> {out}: NIR graph of {len(m.layers)} layers (Affine/Conv2d + IF, maxpools as max trees); the "
          f"phase-code tables in its metadata")
    if args.check is not None:
        import nir

        x, _ = datasets.load(args.dataset, "test")
        x = golden.check_images(m, x[: args.check])
        gold = golden.run_batched(m, x, progress=False).classes
        got = nirgraph.run_sinabs(nir.read(str(out)), m, x, args.steps)
        back = nirgraph.from_nir(nir.read(str(out)))
        same = bool(np.array_equal(golden.run_batched(back, x, progress=False).logits,
                                   golden.run_batched(m, x, progress=False).logits))
        print(f"read back: integer model from the NIR file {'==' if same else '!='} {src} (logits on {len(x)} images)")
        print(f"time-stepped reading in sinabs ({args.steps} steps, rate code): class agrees with the golden model "
              f"on {int((got == gold).sum())}/{len(x)} images ({100 * float((got == gold).mean()):.1f}%)")
    return 0


def cmd_inspect(args) -> int:
    from codegen import report
    from runtime import modelfile

    print(report.describe_model(modelfile.load(args.model), args.model))
    return 0


def cmd_boards(args) -> int:
    from boards import registry

    print(registry.describe())
    return 0


def cmd_run(args) -> int:
    from codegen import report
    from runtime import golden, modelfile

    from codegen import outputs

    check_int(args.batch, "--batch")
    m = modelfile.load(args.model)
    name = _model_name(Path(args.model))
    out = Path(args.report) if args.report else Path("build") / name / "run"
    inputs = [args.model] + ([args.input] if args.input else [])
    outputs.check_dir(out, "run", inputs, force=args.force, option="--report")
    if m.task == "detect":
        return _run_detector(args, m, name, out)
    x, y = _load_images(args, m)
    res = golden.run_batched(m, x, batch=args.batch, progress=not args.quiet, desc="golden model")
    st = report.stats(m, res, y)
    print(report.format_text(name, st))
    sample = golden.run(m, x[: min(len(x), 256)])
    paths = report.write(out, name, st, report.plots(m, st, sample.phases), modelfile.file_sha256(args.model))
    print(f"report: {', '.join(str(p) for p in paths)}")
    return 0


def _run_detector(args, m, name: str, out: Path) -> int:
    from codegen import report
    from codegen.detection import report as det_report
    from codegen.frontend import images, voc
    from runtime import golden, modelfile
    from runtime.errors import UserError

    if args.input and args.dataset:
        raise UserError("give --dataset NAME or --input FILE.npy, not both")
    if args.n is not None:
        check_int(args.n, "-n")
    ds = None
    if args.input:
        x = images.load_npy(args.input, m)
    else:
        if not args.dataset:
            raise UserError("give --dataset NAME (bccd, raccoon or voc:PATH) or --input FILE.npy")
        if not voc.is_detection_dataset(args.dataset):
            raise UserError(f"{args.model} is a detector: --dataset must be a detection dataset (bccd, raccoon or "
                            f"voc:PATH), not {args.dataset!r}")
        c, h, w = m.input_shape
        ds = voc.load(args.dataset, args.split, (w, h), c, classes=list(m.head.classes), progress=not args.quiet)
        if args.n is not None:
            ds = ds.subset(args.n)
        x = ds.images
    if args.n is not None:
        x = x[: args.n]
    x = golden.check_images(m, x)
    res = golden.run_batched(m, x, batch=args.batch, progress=not args.quiet, desc="golden model")
    st = report.stats(m, res, None)
    figs = report.plots(m, st, golden.run(m, x[: min(len(x), 64)]).phases)
    text = f"{sum(len(d) for d in res.detections)} detections in {len(x)} images"
    if ds is None:  # the user's own images: the detections themselves go into report.json
        st["detections"] = [det_report.detections_json(d, m.head.classes, unit=det_report.readout_unit(m))
                            for d in res.detections]
    else:
        st["detection"], text, det_figs = det_report.detection_report(m, ds, res, full_split=args.n is None)
        figs.update(det_figs)
    print(report.format_text(name, st))
    print(text)
    paths = report.write(out, name, st, figs, modelfile.file_sha256(args.model), extra_text=text)
    print(f"report: {', '.join(str(p) for p in paths)}")
    return 0


def cmd_detect(args) -> int:
    import json

    from codegen import outputs
    from codegen.detection import report as det_report
    from codegen.frontend import images
    from codegen.lut import tool_versions, write_with_manifest
    from runtime import golden, modelfile
    from runtime.errors import UserError

    m = modelfile.load(args.model)
    if m.task != "detect":
        raise UserError(f"{args.model} is a classifier; codegen detect needs a detector (codegen run classifies)")
    if args.score_threshold is not None:
        import dataclasses
        import math

        from runtime.spec import validate

        unit = det_report.readout_unit(m)
        if unit is None:
            raise UserError(f"{args.model} records no readout unit: --score-threshold needs a model made by codegen convert")
        if not (math.isfinite(args.score_threshold) and abs(args.score_threshold) <= 1000):
            raise UserError(f"--score-threshold must be a number in -1000..1000 (logits), not {args.score_threshold:g}")
        m.head = dataclasses.replace(m.head, score_threshold=int(math.ceil(args.score_threshold / unit)))
        validate(m)
    name = _model_name(Path(args.model))
    out = Path(args.output) if args.output else Path("build") / name / "detect"
    outputs.check_dir(out, "detect", [args.model] + list(args.images), force=args.force)
    stems = [Path(p).stem for p in args.images]
    folded = [st.casefold() for st in stems]
    dup = sorted({st for st, f in zip(stems, folded) if folded.count(f) > 1})
    if dup:
        raise UserError(f"two images are named {dup[0]!r} (letter case aside): their outputs would collide; rename one")
    reserved = [st for st, f in zip(stems, folded) if f in ("detections", "manifest")]
    if reserved:
        raise UserError(f"an image named {reserved[0]!r} would overwrite the summary {reserved[0]}.json; rename it")
    x, sizes = images.load_pictures(args.images, m.input_shape)
    res = golden.run(m, x, keep_phases=False)
    c, h, w = m.input_shape
    unit = det_report.readout_unit(m)
    files, summary = {}, []
    for path, stem, img, size, dets in zip(args.images, stems, x, sizes, res.detections):
        rec = {"image": str(path), "size": list(size), "model_input": [w, h],
               "detections": det_report.detections_json(dets, m.head.classes, (size[0] / w, size[1] / h), unit)}
        files[f"{stem}.json"] = (json.dumps(rec, indent=2) + "\n").encode()
        files[f"{stem}.png"] = det_report.annotated_png(path, dets, m.head.classes, (size[0] / w, size[1] / h))
        summary.append(rec)
        counts = {}
        for d in rec["detections"]:
            counts[d["class"]] = counts.get(d["class"], 0) + 1
        print(f"{path}: {len(dets)} detections" + (f" ({', '.join(f'{v} {k}' for k, v in counts.items())})" if counts else ""))
    files["detections.json"] = (json.dumps(summary, indent=2) + "\n").encode()
    write_with_manifest(out, files, {"target": "detect", "model": {"name": name, "sha256": modelfile.file_sha256(args.model)},
                                     "tools": tool_versions()})
    print(f"wrote {out}")
    return 0


def _fifo_depth(text, default):
    """``--fifo-depth N`` or ``auto`` (``default`` when not given)."""
    from runtime.errors import UserError

    if text is None:
        return default
    if str(text).strip() == "auto":
        return "auto"
    try:
        v = int(text)
    except ValueError:
        v = None
    if v is None or v < 0:
        raise UserError(f"--fifo-depth must be a non-negative integer or auto, not {text!r}")
    return v


def cmd_emit(args) -> int:
    from codegen import outputs
    from codegen import lut
    from runtime import modelfile
    from runtime.errors import UserError

    if args.target not in IMPLEMENTED_TARGETS:
        raise UserError(f"target {args.target!r} is not available yet in this version; available: {', '.join(IMPLEMENTED_TARGETS)}")
    # every option is checked before the model is read and before anything is written
    if args.target != "fpga":
        for flag, given in (("--store", args.store is not None), ("--lanes", args.lanes is not None),
                            ("--fifo-depth", args.fifo_depth is not None), ("--synth", args.synth)):
            if given:
                raise UserError(f"{flag} applies to the fpga target, not {args.target}")
    if args.target != "c" and args.count_images is not None:
        raise UserError(f"--count-images applies to the c target, not {args.target}")
    if args.target == "lut" and args.board:
        raise UserError("--board applies to the c and fpga targets")
    if args.target != "c" and args.firmware is not None:
        raise UserError(f"--firmware applies to the c target, not {args.target}")
    uart = args.target == "c" and args.firmware == "uart"
    if uart:
        from codegen import deploy

        deploy.check_uart_board(args.board)   # one line, before anything else
        if args.count_images is not None:
            raise UserError("--count-images counts the semihosting parity firmware; not with --firmware uart")
    if args.target == "c":
        from boards import registry

        registry.mcu(args.board, "emit --target c")   # unknown board: one line, before anything else
        count = 10 if args.count_images is None else check_int(args.count_images, "--count-images", lo=0)
    if args.target == "fpga":
        from codegen import fpga

        lanes = fpga.parse_lanes(args.lanes) if args.lanes is not None else ("auto" if args.board else 8)
        if lanes != "auto":
            fpga.check_lanes(lanes)
        elif not args.board:
            raise UserError("--lanes auto needs --board (it picks the lanes per layer that fit the board)")
        fifo = _fifo_depth(args.fifo_depth, "auto" if lanes == "auto" else fpga.FIFO_DEPTH)
        if fifo == "auto" and lanes != "auto":
            raise UserError("--fifo-depth auto goes with --lanes auto (it picks both for the board)")
        if args.board:
            from boards import registry

            registry.fpga(args.board, "emit --target fpga")
        if args.synth and not args.board:
            raise UserError("--synth needs --board (icebreaker or ulx3s)")
    m = modelfile.load(args.model)
    name = _model_name(Path(args.model))
    out = Path(args.output) if args.output else Path("build") / name / ("c-uart" if uart else args.target)
    outputs.check_dir(out, args.target, [args.model], force=args.force)
    sha = modelfile.file_sha256(args.model)
    if uart:
        man = deploy.emit_uart(m, sha, name, out, args.board)
        print(deploy.format_emit(man, out))
        print(f"wrote {out}")
        return 0
    if args.target == "c":
        from codegen.c import report as c_report

        rep = c_report.emit_with_report(m, sha, name, out, args.board, n_count=count, progress=not args.quiet)
        print(c_report.format_text(rep))
        print(f"wrote {out}")
        bad = [opt for opt, e in rep["builds"].items()
               if (e.get("instructions_per_inference") or {}).get("outputs_equal_golden") is False]
        if bad:
            print(f"codegen: the firmware built with {', '.join(bad)} did not equal the golden model on the counted images; "
                  f"run codegen verify {args.model} --target c --board {rep['board']['name']}", file=sys.stderr)
            return 1
        return 0
    if args.target == "fpga":
        import inspect as _inspect

        kw = {"progress": not args.quiet} if "progress" in _inspect.signature(fpga.emit).parameters else {}
        man = fpga.emit(m, sha, name, out, board=args.board, lanes=lanes, fifo_depth=fifo, store=args.store or "auto",
                        **kw)
        print((out / "estimate.txt").read_text().rstrip())
        if args.synth:
            from codegen.fpga import synth

            print(synth.synthesize_into(out, m, args.board, man["lanes"], name, man["store"]["layers"],
                                        man["fifo_depth"]))
        print(f"wrote {out}")
        return 0
    man = lut.emit(m, sha, name, out)
    print(f"wrote {len(man['files']) + 1} files to {out}")
    return 0


def cmd_verify(args) -> int:
    from boards import registry
    from codegen import outputs
    from codegen.frontend import datasets, images
    from runtime import modelfile
    from runtime.errors import UserError

    # 1. every option, before the model is read and before any work
    if args.target == "lut":
        raise UserError("verify checks the c and fpga targets; the lut target is the tables themselves")
    on_fpga = args.target == "fpga"
    if not on_fpga:
        for flag, given in (("--sim", args.sim is not None), ("--lanes", args.lanes is not None),
                            ("--fifo-depth", args.fifo_depth is not None),
                            ("--store", args.store is not None), ("--waves", args.waves),
                            ("--clean", args.clean), ("--keep", args.keep), ("--bulk", args.bulk)):
            if given:
                raise UserError(f"{flag} applies to the fpga target, not {args.target}")
    if args.input and args.dataset:
        raise UserError("give --dataset NAME or --input FILE.npy, not both")
    if args.n is not None:
        check_int(args.n, "-n")
    if on_fpga:
        from codegen import fpga
        from codegen.fpga import sim as fpga_sim

        sim = "icarus" if args.sim is None else args.sim
        if sim not in fpga_sim.SIMULATORS:
            raise UserError(f"unknown simulator {sim!r}; supported: {', '.join(fpga_sim.SIMULATORS)}")
        if (args.workers is not None or args.cluster) and not args.bulk:
            if sim != "verilator":
                raise UserError("--workers and --cluster split the frames over the compiled Verilator harness "
                                "(--bulk): use them with --sim verilator")
            args.bulk = True                  # frames split over workers: the compiled harness
        if args.bulk and sim != "verilator":
            raise UserError("--bulk runs the compiled Verilator harness: use it with --sim verilator")
        if args.workers is not None:
            check_int(args.workers, "--workers", lo=1)
            args.workers = int(args.workers)
        lanes = fpga.parse_lanes(8 if args.lanes is None else args.lanes)
        if lanes == "auto":
            raise UserError("--lanes auto applies to codegen emit --board; give verify the lanes (N or one per layer)")
        fpga.check_lanes(lanes)
        args.fifo_depth = _fifo_depth(args.fifo_depth, fpga.FIFO_DEPTH)
        if args.fifo_depth == "auto":
            raise UserError("--fifo-depth auto applies to codegen emit --board; give verify the depth its manifest records")
        board = registry.fpga(args.board, "verify --target fpga") if args.board else None
    else:
        board = registry.mcu(args.board, "verify --target c") if args.board else None
    if args.input:
        from runtime.io import check_regular_file

        check_regular_file(Path(args.input), ".npy file")
    # 2. the model, and a work folder that can be written (a read-only working directory: one line)
    m = modelfile.load(args.model)
    name = _model_name(Path(args.model))
    work = Path(args.work) if args.work else Path("build") / name / ("verify-fpga" if on_fpga else "verify-c")
    outputs.check_work_folder(work)
    # 3. the images: a .npy of the model's input shape, or a dataset (the model's own by default)
    if args.input:
        x = images.load_npy(args.input, m)
        source = args.input
    else:
        ds = args.dataset or (m.meta.get("dataset") if isinstance(m.meta, dict) else None)
        if not ds:
            raise UserError("the model records no dataset: give --dataset NAME or --input FILE.npy")
        if m.task == "detect":
            from codegen.frontend import voc

            if not voc.is_detection_dataset(ds):
                raise UserError(f"{args.model} is a detector: --dataset must be a detection dataset (bccd, raccoon or "
                                f"voc:PATH), not {ds!r}")
            c, h, w = m.input_shape
            x = voc.load(ds, "test", (w, h), c, classes=list(m.head.classes), progress=not args.quiet).images
        else:
            x, _ = datasets.load(ds, "test")
        if tuple(x.shape[1:]) != tuple(m.input_shape):
            raise UserError(f"the {ds} test images are {'x'.join(map(str, x.shape[1:]))} but the model takes "
                            f"{'x'.join(map(str, m.input_shape))}: give --input FILE.npy")
        source = f"{ds} test set"
    total = len(x)
    if args.n is not None:
        x = x[: args.n]
    elif on_fpga:
        x = x[:20]
    if len(x) < total:
        print(f"images: the first {len(x)} of {total} ({source}){'; -n N for more' if args.n is None else ''}")
    if on_fpga:
        return _verify_fpga(args, m, x, sim, lanes, board, work)
    return _verify_c(args, m, name, x, board, work)


def _verify_fpga(args, m, x, sim: str, lanes: int, board, work: Path) -> int:
    from codegen import fpga
    from codegen.fpga import sim as fpga_sim

    # The same store as emit: resolved for --board when given (an FPGA board name), else "rom" for auto.
    store = fpga.resolve_store(m, board, lanes, args.store or "auto")
    if args.bulk:
        from codegen.fpga import bulk

        r = bulk.bulk_verify(m, x, lanes, fifo_depth=args.fifo_depth, store=store, work=work,
                             workers=args.workers or 1, cluster=args.cluster, progress=not args.quiet,
                             **({"gap": 0.0, "stall": 0.0} if args.clean else {"gap": 0.25, "stall": 0.3, "reset": True}))
        print(r.summary())
        for mm in r.mismatches[:5]:
            print(f"  mismatch: frame {mm[0]}, {mm[1]}, neuron {mm[2]}: expected {mm[3]}, got {mm[4]}")
        if r.error:
            print(f"  error: {r.error}")
        print(f"  build {r.build_s:.1f} s, simulation {r.sim_s:.1f} s; work folder: {work}")
        return 0 if r.passed else 1
    r = fpga_sim.verify(m, x, sim, lanes=lanes, store=store, waves=args.waves, work=work, keep=args.keep,
                        fifo_depth=args.fifo_depth,
                        keep_build=args.keep, progress=not args.quiet,
                        **({"gap": 0.0, "stall": 0.0, "reset": False} if args.clean else {}))
    print(r.summary())
    if r.first_mismatch is not None:
        print(f"  {r.first_mismatch}")
    if r.error:
        print(f"  error: {r.error}")
    if r.waves:
        print(f"  waves: {r.waves}")
    kept = ("kept" if args.keep else "the simulator build removed (--keep keeps it)") if r.passed \
        else "everything kept for a look"
    run_dir = getattr(r, "run_dir", None)
    print(f"  work folder: {work} ({f'this run: {run_dir}; ' if run_dir else ''}{kept})")
    return 0 if r.passed else 1


def _verify_c(args, m, name: str, x, board, work: Path) -> int:
    from codegen.c import emulators, firmware
    from codegen.c import host as c_host

    if board is not None:
        firmware.check_fit(m, board)
    matched, n, first = c_host.verify_host(m, name, x, work, trace=True)
    print(f"host (gcc, every layer's phases compared): {matched}/{n} matched")
    ok = matched == n
    if first is not None:
        print(f"  {first}")
    if board is not None:
        fw = firmware.build_firmware(m, name, board, work)
        if board.qemu_machine is None:
            print(f"{board.name}: firmware builds ({fw.sizes['flash_bytes']} B flash, {fw.sizes['ram_bytes']} B RAM); "
                  f"not emulated, so not run")
        else:
            nq = len(x) if args.n is not None else min(len(x), 200)
            matched_q, first_q = emulators.compare_qemu(m, fw, x[:nq])
            print(f"{board.name} under QEMU ({'logits and detections' if m.task == 'detect' else 'logits and class'}): {matched_q}/{nq} matched")
            if first_q:
                print(f"  {first_q}")
            ok &= matched_q == nq
    print(f"  work folder: {work}")
    return 0 if ok else 1


def cmd_sweep(args) -> int:
    import shlex

    from codegen import fpga, outputs
    from codegen.fpga import cycles as fpga_cycles
    from codegen.fpga import sweep
    from runtime import modelfile
    from runtime.errors import UserError

    # 1. every option, before the model is read and before any work
    lanes = sweep.parse_lanes_list(args.lanes)
    stores = sweep.parse_stores(args.store)
    boards = sweep.parse_boards(args.board)
    fifo = _fifo_depth(args.fifo_depth, fpga.FIFO_DEPTH)
    if fifo == "auto":
        raise UserError("--fifo-depth auto is emit's search; a sweep builds every point at one depth N (default 16)")
    n = check_int(args.n, "-n")
    workers = None if args.workers is None else check_int(args.workers, "--workers")
    if args.input:
        from runtime.io import check_regular_file

        check_regular_file(Path(args.input), ".npy file")
    sweep.check_tools(boards)
    # 2. the model; the output and work folders can be written, and replace nothing they may not
    m = modelfile.load(args.model)
    sweep.check_points(m, lanes)
    name = _model_name(Path(args.model))
    out = Path(args.out) if args.out else Path("build") / name / "sweep"
    work = Path(args.work) if args.work else Path("build") / name / "sweep-work"
    res_out = outputs.check_dir(out, sweep.OUTPUT_KIND, [args.model], force=args.force, option="--out")
    w = work.resolve()
    if w == res_out or res_out in w.parents or w in res_out.parents:
        raise UserError(f"--work {work} and --out {out} must be separate folders (the output folder is replaced "
                        f"as a whole)")
    outputs.check_work_folder(work)
    # 3. the frames of the cycle benchmark: --input, else the model's own test set
    if args.input:
        from codegen.frontend import images

        x, source = images.load_npy(args.input, m), args.input
    else:
        x = fpga_cycles.test_images(m, n)
        if x is None:
            raise UserError(f"{args.model}: no test set to benchmark on (the model records no dataset, or it is "
                            f"missing): give --input FILE.npy")
        source = f"the {m.meta['dataset']} test set"
    x = x[:n]
    points = sweep.make_points(boards, stores, lanes)
    if workers is None:
        workers = max(1, min(len(points), os.cpu_count() or 1))
    # 4. the work
    res = sweep.run_sweep(m, points, x, name=name, fifo_depth=fifo, work=work, workers=workers,
                          cluster=args.cluster, progress=not args.quiet, frames_source=f"the first {len(x)} of {source}")
    argv = ["codegen", "sweep", args.model, "--lanes", args.lanes, "--store", args.store, "--board", args.board]
    argv += (["--fifo-depth", str(args.fifo_depth)] if args.fifo_depth is not None else []) + ["-n", str(n)]
    argv += ["--input", args.input] if args.input else []
    argv += ["--workers", str(workers)] if args.cluster is None else ["--cluster", args.cluster]
    paths = sweep.write_outputs(out, res, name, modelfile.file_sha256(args.model), shlex.join(argv))
    print(sweep.format_table(res.records))
    print(res.summary())
    for line in res.lost:
        print(f"  lost: {line}")
    for r in res.failed_parity:
        print(f"  parity failed: {r['board']} lanes {r['lanes']} store {r['store']}: {r['parity']['matched']}/"
              f"{r['parity']['total']} matched")
    print(f"wrote {', '.join(str(p) for p in paths)}; work folder: {work}")
    return 1 if res.lost or res.failed_parity else 0


def cmd_build(args) -> int:
    from codegen import fpga, outputs
    from codegen.fpga import build as fbuild
    from runtime import modelfile

    # every option is checked before the model is read and before anything is written
    baud = check_int(args.baud, "--baud")
    fbuild.check_options(args.board, baud, args.store, args.clock)
    lanes = fpga.parse_lanes(args.lanes) if args.lanes is not None else "auto"
    if lanes != "auto":
        fpga.check_lanes(lanes)
    m = modelfile.load(args.model)
    name = _model_name(Path(args.model))
    out = Path(args.output) if args.output else Path("build") / name / f"bitstream-{args.board}"
    outputs.check_dir(out, fbuild.KIND, [args.model], force=args.force)
    sha = modelfile.file_sha256(args.model)
    rep = fbuild.build(m, sha, name, args.board, out, lanes=lanes, store=args.store, baud=baud, clock_mhz=args.clock)
    print(fbuild.format_report(rep))
    print(f"wrote {out}")
    if rep["ok"]:
        print(f"then: codegen deploy {args.model} --port {'/dev/ttyUSB1' if args.board == 'icebreaker' else '/dev/ttyUSB0'}"
              f" --baud {baud}")
    return 0 if rep["ok"] else 1


SIM_DEPLOY_TIMEOUT_S = 600.0   # a simulator is far slower than the board: Icarus takes ~10 s a MNIST frame


def cmd_deploy(args) -> int:
    from codegen import deploy
    from codegen.frontend import images
    from runtime import golden, modelfile
    from runtime.errors import UserError

    # every option is checked before the model is read and before the port is opened
    if (args.port is None) == (args.sim is None):
        raise UserError("give --port PORT (a board or an emulator) or --sim icarus|verilator (the FPGA board top "
                        "in a simulator), one of them")
    port = deploy.check_port(args.port) if args.port is not None else None
    if args.sim is not None:
        from codegen import fpga
        from codegen.fpga import build as fbuild

        if args.sim not in ("icarus", "verilator"):
            raise UserError(f"--sim must be icarus or verilator, not {args.sim!r}")
        board = args.board or "icebreaker"
        if board not in fbuild.BOARDS:
            raise UserError(f"--sim runs an FPGA board top: --board must be one of {', '.join(fbuild.BOARDS)}, "
                            f"not {board!r}")
        lanes = fpga.parse_lanes(args.lanes) if args.lanes is not None else "auto"
        if lanes != "auto":
            fpga.check_lanes(lanes)
    elif args.board is not None or args.lanes is not None or args.store != "auto" or args.clock is not None:
        raise UserError("--board, --lanes, --store and --clock choose the simulated board: they go with --sim")
    if args.input and args.dataset:
        raise UserError("give --dataset NAME or --input FILE.npy, not both")
    n = deploy.DEFAULT_FRAMES if args.n is None else check_int(args.n, "-n")
    timeout = deploy.check_timeout(args.timeout if args.timeout is not None else
                                   (5.0 if args.sim is None else SIM_DEPLOY_TIMEOUT_S))
    baud = check_int(args.baud, "--baud") if args.baud is not None else None
    if args.sim is not None:
        fbuild.check_options(board, baud or 115200, args.store, args.clock)
    m = modelfile.load(args.model)
    if args.input:
        x = images.load_npy(args.input, m)
    else:
        from codegen.c import report as c_report

        ds = args.dataset or m.meta.get("dataset")
        if not ds:
            raise UserError(f"{args.model} records no dataset: give --dataset NAME or --input FILE.npy")
        x = c_report._test_images(m, ds, n)
    x = golden.check_images(m, x[:n])
    board_sim = None
    try:
        if args.sim is None:
            res = deploy.deploy(m, args.model, x, port, baud=baud or deploy.DEFAULT_BAUD, timeout=timeout,
                                progress=not args.quiet)
        else:
            from codegen.fpga.board_sim import SimBoard

            board_sim = SimBoard(m, args.sim, board, lanes, args.store, baud, args.clock, name=_model_name(Path(args.model)),
                                 sha256=modelfile.file_sha256(args.model), work=args.work)
            print(f"{board_sim.describe()}: building", file=sys.stderr, flush=True)
            with board_sim:
                print(f"listening on {board_sim.url} (build {board_sim.build_s:.1f} s)", file=sys.stderr, flush=True)
                res = deploy.deploy(m, args.model, x, board_sim.url, baud=board_sim.baud, timeout=timeout,
                                    progress=not args.quiet)
    except deploy.LinkError as e:
        print(f"codegen: error: {e}".replace("\n", " "), file=sys.stderr)
        return deploy.LinkError.exit_code
    if board_sim is not None:
        r = board_sim.results or {}
        print(f"{board_sim.describe()}: {r.get('cycles', 0):,} cycles simulated in {board_sim.wall_s:.1f} s "
              f"(build {board_sim.build_s:.1f} s)")
    print(deploy.format_result(res, int(x[0].size)))
    return 0 if res.matched == res.n else 1


def show_progress() -> bool:
    """Progress bars go to stderr when it is a terminal, or when ``ONESPIKE_PROGRESS=1`` (``0`` hides them)."""
    env = os.environ.get("ONESPIKE_PROGRESS", "")
    if env in ("0", "1"):
        return env == "1"
    return sys.stderr.isatty()


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``codegen: error: ...``, exit 2), like every other error."""

    def error(self, message):
        self.exit(2, f"codegen: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="codegen", description="One-spike SNN toolchain: convert, run, inspect, emit.")
    p.add_argument("-v", "--verbose", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a shipped example ANN reproducibly (ARCH: mnist-mlp, mnist-cnn, fmnist-cnn; detectors bccd-det, raccoon-det)")
    t.add_argument("arch")
    t.add_argument("-o", "--output", help="ann.pt to write (default build/ARCH.ann.pt)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--epochs", type=int)
    t.add_argument("--force", action="store_true", help="replace an existing ANN file trained for another architecture")
    t.add_argument("-q", "--quiet", action="store_true")
    t.set_defaults(func=cmd_train)

    fp = sub.add_parser("finetune", help="spike-aware training of an ANN through the one-spike forward pass (STE or "
                                        "neighbourhood-aggregation gradients, a SOP budget); writes an ANN file "
                                        "for codegen convert")
    fp.add_argument("ann", nargs="?", help="the trained ANN file (onespike-ann) to start from")
    fp.add_argument("--scratch", help="instead of an ANN file: train this architecture (mnist-mlp, mnist-cnn, "
                                      "fmnist-cnn) from random weights, directly as a one-spike network")
    fp.add_argument("--dataset", help="mnist or fashion-mnist (default: the ANN's own)")
    fp.add_argument("-o", "--output", help="ANN file to write (default build/NAME-ft.ann.pt)")
    fp.add_argument("--force", action="store_true", help="replace an ANN file fine-tuned from another ANN")
    fp.add_argument("--Q", type=float, help="hidden phase base (with --T; default: the pair codegen convert picks; "
                                            "with --scratch 1.2 and 16)")
    fp.add_argument("--T", type=int, help="hidden phases (with --Q)")
    fp.add_argument("--input-Q", type=float, help="input code base (default 1.02)")
    fp.add_argument("--input-T", type=int, help="input code phases (default 255; fewer raise the lowest pixel that "
                                                "spikes, and so remove input spikes)")
    fp.add_argument("--gradient", default="ste", help="ste (straight through) or na (neighbourhood aggregation)")
    fp.add_argument("--budget", type=float,
                    help="target SOPs as a share of the start network's, in (0, 1]; 1: no SOP penalty (default 0.5; "
                         "with --scratch 1: a random start network's SOPs mean nothing)")
    fp.add_argument("--mu-step", type=float, default=0.005,
                    help="dual ascent step of the SOP penalty's weight, per batch (default 0.005; smaller: a "
                         "gentler descent to the budget, for larger networks)")
    fp.add_argument("--epochs", type=int, default=5)
    fp.add_argument("--lr", type=float, default=1e-3)
    fp.add_argument("--batch", type=int, default=128)
    fp.add_argument("--val", type=int, default=5000, help="the last N training images: validation (default 5000)")
    fp.add_argument("--calib", type=int, default=10000, help="calibration images for the start network (default 10000)")
    fp.add_argument("--seed", type=int, default=0)
    fp.add_argument("-q", "--quiet", action="store_true")
    fp.set_defaults(func=cmd_finetune)

    c = sub.add_parser("convert", help="convert a trained network (ann.pt, MODEL.onnx or a torch.export MODEL.pt2) "
                                       "into a one-spike model.pt")
    c.add_argument("ann", metavar="MODEL", help="an onespike-ann file (codegen train / finetune), an ONNX file or a "
                                                "torch.export archive (.pt2); see docs/import.md")
    c.add_argument("--dataset", help="mnist or fashion-mnist (a detector: bccd, raccoon or voc:PATH): calibration "
                                     "(train split) and report (test split; val too for a detector); not needed "
                                     "with --calib PATH")
    c.add_argument("-o", "--output", help="model.pt to write (default build/NAME/model.pt)")
    c.add_argument("--force", action="store_true", help="replace an existing model file converted from another ANN")
    c.add_argument("--Q", type=float, help="phase base in (1, 2] (default: searched; alone, T is searched for it)")
    c.add_argument("--T", type=int, help="phases per window, 1..255 (default: searched; alone, Q is searched for it)")
    c.add_argument("--F", help="fraction bits of the decode tables, 0..30, or 'auto': the smallest whose held-out "
                               "disagreement is within 0.05 points of the default's (default: largest <= 16 that "
                               "fits 32-bit accumulators)")
    c.add_argument("--input-Q", type=float, help="phase base of the input pixel code, in (1, 2] (default 1.02, or "
                                                 "the code an ANN from codegen finetune records)")
    c.add_argument("--input-T", type=int, help="phases of the input pixel code, 1..255 (default 255, or the code an "
                                               "ANN from codegen finetune records)")
    c.add_argument("--norm", choices=("max", "percentile", "none"), default=None,
                   help="activation normalisation (default percentile; none, lambda = 1, for an ANN from codegen "
                        "finetune, which is the default for such a file)")
    c.add_argument("--percentile", type=float, default=99.99, help="percentile of --norm percentile, in (0, 100] "
                                                                   "(default 99.99)")
    c.add_argument("--calib", default="10000", metavar="N|PATH",
                   help="calibration: N images of the --dataset train split (at least 2; default 10000), or your own "
                        "images: a .npy of uint8 pixels (N,C,H,W / N,H,W,C / N,H,W), a folder of JPEG/PNG images "
                        "or a VOC folder")
    c.add_argument("--test", metavar="PATH", help="the accuracy report on your own test set: a .npy of uint8 images "
                                                  "(with --test-labels) or a folder with one sub-folder per class")
    c.add_argument("--test-labels", metavar="LABELS.npy", help="integer class labels of --test IMAGES.npy")
    c.add_argument("--mean", help="ONNX / torch.export: normalisation the graph expects outside it, x' = (x - mean) "
                                  "/ std with x = pixels / 255 (times --input-scale); one value or one per channel")
    c.add_argument("--std", help="ONNX / torch.export: see --mean (default 1)")
    c.add_argument("--input-scale", type=float, default=1.0,
                   help="ONNX / torch.export: 255 if the graph takes raw pixels 0..255 (default 1: pixels / 255)")
    c.add_argument("--input-shape", metavar="C,H,W", help="ONNX / torch.export: the image shape of a graph that "
                                                          "takes flat (N, features) input")
    c.add_argument("--error-target", type=float, default=0.2,
                   help="max %% of held-out calibration images whose class differs from the ANN, in [0, 100] "
                        "(Q/T search; default 0.2)")
    c.add_argument("--seed", type=int, default=0, help="seed of the calibration sample (non-negative)")
    c.add_argument("--score-threshold", type=float, help="detectors: the decode's score threshold in logit units "
                                                          "(default: the one training chose on val)")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    c.set_defaults(func=cmd_convert)

    x = sub.add_parser("export", help="write a model.pt in another tool's format: NIR (neuromorphic tools)")
    x.add_argument("model")
    x.add_argument("--to", required=True, choices=("nir",), help="nir: a NIR graph (Affine/Conv2d + IF, max trees for maxpools, "
                                                                  "the integer tables in its metadata)")
    x.add_argument("-o", "--output", help="file to write (default build/NAME/NAME.nir)")
    x.add_argument("--force", action="store_true", help="replace a NIR file exported from another model")
    x.add_argument("--check", type=int, metavar="N", help="run the exported graph time-stepped in sinabs on N test "
                                                          "images of --dataset and read it back: agreement with the "
                                                          "golden model")
    x.add_argument("--dataset", help="mnist or fashion-mnist (for --check)")
    x.add_argument("--steps", type=int, default=16, help="time steps of the --check reading (default 16)")
    x.set_defaults(func=cmd_export)

    i = sub.add_parser("inspect", help="print layers, shapes, Q, T and accumulator widths of a model.pt")
    i.add_argument("model")
    i.set_defaults(func=cmd_inspect)

    r = sub.add_parser("run", help="run the golden model: accuracy, spikes per neuron, synaptic ops, energy")
    r.add_argument("model")
    r.add_argument("--dataset", help="mnist or fashion-mnist; for a detector bccd, raccoon or voc:PATH")
    r.add_argument("--split", choices=("test", "train", "val"), default="test",
                   help="test (default), train, or val (detection datasets)")
    r.add_argument("--input", help=".npy of uint8 pixels (N, C, H, W) instead of a dataset")
    r.add_argument("-n", type=int, help="first N images only")
    r.add_argument("--batch", type=int, default=1000)
    r.add_argument("--report", help="folder for report.json/.txt and PNG plots (default build/NAME/run)")
    r.add_argument("--force", action="store_true", help="replace an earlier report folder even if it was modified")
    r.add_argument("-q", "--quiet", action="store_true")
    r.set_defaults(func=cmd_run)

    d = sub.add_parser("detect", help="run a detector on JPEG/PNG images: detections as JSON and annotated PNGs")
    d.add_argument("model")
    d.add_argument("images", nargs="+", metavar="IMAGE")
    d.add_argument("-o", "--output", help="output folder (default build/NAME/detect)")
    d.add_argument("--force", action="store_true", help="replace an earlier detect output even if it was modified")
    d.add_argument("--score-threshold", type=float, help="score threshold in logit units for this run (default: the "
                                                          "model's; a higher one gives fewer, surer detections)")
    d.set_defaults(func=cmd_detect)

    bo = sub.add_parser("boards", help="list the boards --board can name (MCU and FPGA), with their resources")
    bo.set_defaults(func=cmd_boards)

    e = sub.add_parser("emit", help="generate code/tables for a target")
    e.add_argument("model")
    e.add_argument("--target", choices=TARGETS, required=True)
    e.add_argument("-o", "--output", help="output folder (default build/NAME/TARGET)")
    e.add_argument("--board", help="C target: mps2-an386 (default), nucleo-f446re, rp2040-pico; "
                                   "FPGA target: icebreaker (iCE40 UP5K), ulx3s (ECP5-25k)")
    e.add_argument("--lanes", help="FPGA: synapse lanes of every layer (N), of each layer (N,N,...), or auto: the lanes "
                                  "per layer that fit --board, the slowest layer first (default: auto with --board, else 8)")
    e.add_argument("--fifo-depth", help="FPGA: the event FIFO in front of every engine (N), or auto with --lanes auto: "
                                       "the depth and lanes of the lowest estimated latency that fit --board "
                                       "(default: auto with --lanes auto, else 16)")
    e.add_argument("--store", choices=("auto", "rom", "ram"),
                   help="FPGA: weights in block RAM (rom), in SPRAM loaded at run time from weights.bin (ram, "
                        "iCE40 UP5K), or auto (default: rom unless it does not fit the board and the board has SPRAM)")
    e.add_argument("--synth", action="store_true", help="FPGA: also run Yosys + nextpnr for --board and report resources and Fmax")
    e.add_argument("--count-images", type=int, help="test images whose instructions are counted (C target; default 10, 0 skips)")
    e.add_argument("--firmware", choices=("semihost", "uart"),
                   help="C target: semihost (default: the semihosting parity firmware, its report and instruction "
                        "counts) or uart (the device-protocol firmware for codegen deploy, built to an ELF; "
                        "mps2-an386, nucleo-f446re; default folder build/NAME/c-uart)")
    e.add_argument("--force", action="store_true",
                   help="replace an earlier output of the same target even if files in it were changed")
    e.add_argument("-q", "--quiet", action="store_true")
    e.set_defaults(func=cmd_emit)

    v = sub.add_parser("verify", help="check a backend against the golden model, exactly")
    v.add_argument("model")
    v.add_argument("--target", choices=TARGETS, required=True)
    v.add_argument("--board", help="C target: also build for this MCU board (mps2-an386, nucleo-f446re, rp2040-pico) "
                                   "and, if it is emulated, run under QEMU; FPGA target: the board --store auto "
                                   "resolves for (icebreaker, ulx3s)")
    v.add_argument("--dataset", help="test set (default: the model's own)")
    v.add_argument("--input", help=".npy of uint8 images (N, C, H, W) of the model's input shape, instead of a dataset")
    v.add_argument("-n", type=int, help="first N images (default: C all on the host and 200 under QEMU; FPGA 20)")
    v.add_argument("--work", help="work folder (default build/NAME/verify-fpga or build/NAME/verify-c)")
    v.add_argument("--keep", action="store_true", help="FPGA: keep the simulator build and the run's inputs after a "
                                                       "passing run (default: removed)")
    v.add_argument("--sim", help="FPGA simulator: icarus or verilator (default icarus)")
    v.add_argument("--lanes", help="FPGA: synapse lanes of every layer (N) or of each layer (N,N,...; default 8)")
    v.add_argument("--fifo-depth", help="FPGA: the event FIFO in front of every engine (default 16; as the "
                                       "emitted manifest records it)")
    v.add_argument("--store", choices=("auto", "rom", "ram"),
                   help="FPGA: as for emit (auto, the default, resolves for --board when given, else rom)")
    v.add_argument("--waves", action="store_true", help="FPGA: write a waveform of the run")
    v.add_argument("--clean", action="store_true", help="FPGA: no input gaps, output stalls or reset (for cycle counts)")
    v.add_argument("--workers", type=int, help="FPGA --bulk: split the frames over N worker processes (an embedded Dask cluster)")
    v.add_argument("--cluster", help="FPGA --bulk: the address of a running Dask scheduler (tcp://HOST:8786) to run them on")
    v.add_argument("--bulk", action="store_true",
                   help="FPGA: the compiled Verilator harness instead of cocotb (whole test sets: every result and every "
                        "layer's phases compared with the golden model; input gaps and result stalls unless --clean, "
                        "no reset; the cocotb bench checks event order, time stamps and the reset)")
    v.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    v.set_defaults(func=cmd_verify)
    dp = sub.add_parser("deploy", help="run a model on a board over its UART (device protocol v1; an emulator via "
                                       "socket://HOST:PORT) and check every result against the golden model")
    dp.add_argument("model")
    dp.add_argument("--port", help="serial device (/dev/ttyACM0, COM3) or pyserial URL "
                                   "(socket://127.0.0.1:5555 for QEMU's TCP serial)")
    dp.add_argument("--sim", help="instead of --port: the FPGA board top of codegen build under this simulator "
                                  "(icarus or verilator), its UART on a local socket")
    dp.add_argument("--board", help="with --sim: icebreaker (default) or ulx3s")
    dp.add_argument("--lanes", help="with --sim: synapse lanes, as codegen build (default auto)")
    dp.add_argument("--store", choices=("auto", "rom", "ram"), default="auto", help="with --sim: as codegen build")
    dp.add_argument("--clock", type=float, help="with --sim: the design clock in MHz, as codegen build")
    dp.add_argument("--work", help="with --sim: folder of the simulator builds (default build/board_sim)")
    dp.add_argument("--dataset", help="test images of this dataset (default: the model's own)")
    dp.add_argument("--input", help=".npy of uint8 images (N, C, H, W) instead of a dataset")
    dp.add_argument("-n", type=int, help="first N images (default 100)")
    dp.add_argument("--timeout", type=float, help="seconds to wait for each reply (default 5; with --sim 600)")
    dp.add_argument("--baud", type=int, help="baud rate of a serial device (default 115200; with --sim the "
                                             "fastest of 3M, 2M, 1M ... the board clock makes)")
    dp.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    dp.set_defaults(func=cmd_deploy)
    sw = sub.add_parser("sweep", help="FPGA design-space sweep: synthesis, cycle benchmark and parity for every "
                                      "point of lanes x store x board; a table and a Pareto plot (LUTs vs latency)")
    sw.add_argument("model")
    sw.add_argument("--lanes", required=True,
                    help="comma-separated points, each N (every layer), N/N/... (one per layer) or auto (the lanes "
                         "fit_lanes picks for the board), e.g. 2,4,4/1/8/1/4/4,auto")
    sw.add_argument("--store", default="auto", help="comma-separated stores: auto, rom, ram (default auto)")
    sw.add_argument("--board", required=True, help="comma-separated FPGA boards: icebreaker, ulx3s")
    sw.add_argument("--fifo-depth", help="the event FIFO in front of every engine, every point (default 16)")
    sw.add_argument("-n", type=int, default=20, help="frames of the cycle benchmark and parity check (default 20, "
                                                     "the first of the model's test set)")
    sw.add_argument("--input", help=".npy of uint8 frames (N, C, H, W) instead of the model's test set")
    sw.add_argument("--workers", type=int, help="points in parallel on an embedded Dask cluster of N worker "
                                               "processes (default: one per CPU core, at most one per point; "
                                               "1: in this process)")
    sw.add_argument("--cluster", help="the address of a running Dask scheduler (tcp://HOST:8786) to run the points on")
    sw.add_argument("--out", help="output folder: sweep.json, sweep.md, sweep.csv, pareto.png (default "
                                  "build/NAME/sweep)")
    sw.add_argument("--work", help="work folder of the points' synthesis and benchmark builds (default "
                                   "build/NAME/sweep-work)")
    sw.add_argument("--force", action="store_true", help="replace an earlier sweep output even if it was modified")
    sw.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    sw.set_defaults(func=cmd_sweep)
    bd = sub.add_parser("build", help="FPGA bitstream of the board top (the model behind the device protocol on the "
                                      "board's USB UART): iceprog / openFPGALoader it, then codegen deploy")
    bd.add_argument("model")
    bd.add_argument("--board", required=True, help="icebreaker or ulx3s")
    bd.add_argument("--lanes", help="synapse lanes: N, one per layer (N,N,...) or auto (default: auto, what fits)")
    bd.add_argument("--store", choices=("auto", "rom", "ram"), default="auto",
                    help="weights in block RAM (rom), in SPRAM loaded from the flash (ram, iCEBreaker) or auto "
                         "(default)")
    bd.add_argument("--baud", type=int, default=115200, help="UART baud rate (default 115200)")
    bd.add_argument("--clock", type=float, help="design clock in MHz (default: the board oscillator, 12 or 25; "
                                                "the iCEBreaker's PLL makes others exactly, e.g. 18)")
    bd.add_argument("-o", "--output", help="output folder (default build/NAME/bitstream-BOARD)")
    bd.add_argument("--force", action="store_true", help="replace an earlier build even if files in it were changed")
    bd.set_defaults(func=cmd_build)
    for sp in sub.choices.values():    # -v before or after the subcommand
        sp.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from runtime.errors import UserError

    if hasattr(args, "quiet") and not args.quiet and not show_progress():
        args.quiet = True      # progress bars only on a terminal: a log or a pipe gets the results alone

    def fail(msg: str) -> int:
        if args.verbose:
            traceback.print_exc()
        print(f"codegen: error: {msg}".replace("\n", " "), file=sys.stderr)
        return UserError.exit_code

    try:
        return args.func(args)
    except UserError as e:
        return fail(str(e))
    except OSError as e:   # the disk, not the model: a full disk, a folder that vanished, permissions
        where = f"{e.filename}: " if e.filename else ""
        return fail(f"{where}{e.strerror or e}")
    except MemoryError:
        return fail("out of memory (the model or the input is too large for this machine)")
    except KeyboardInterrupt:
        print("codegen: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
