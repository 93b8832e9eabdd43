"""``codegen emit --target c``: C99 for microcontrollers over the hand-written kernels in runtime/c.

The emitter is thin: it writes the model's integer tables as ``const`` data (flash), one
``os_model_t`` describing the layers, statically sized buffers (RAM), and a two-call API:

    NAME_init();                                   // (re)initialise the buffers
    int cls = NAME_infer(pixels, logits);          // uint8 pixels (C, H, W) -> int32 logits, class

plus ``NAME_infer_phases`` (pre-encoded input phases) and ``NAME_infer_traced`` (a hook receives
every layer's output phases). A detector (``model.task == "detect"``) also gets its head constants
(one ``os_head_t``), the decode's scratch buffer and

    int n = NAME_detect(pixels, dets, max);        // inference, then the integer decode -> n detections
    int n = NAME_detect_logits(logits, dets, max); // the decode of a readout map already computed

The kernels (``onespike.c``/``onespike.h``) are copied next to the
generated files so the folder builds on its own.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.spec import IntModel

from ..lut import layer_summary, tool_versions, write_with_manifest

C_DIR = Path(__file__).resolve().parents[2] / "runtime" / "c"
KERNEL_FILES = ("onespike.h", "onespike.c")
KIND_ENUM = {"dense": "OS_DENSE", "conv2d": "OS_CONV2D", "maxpool": "OS_MAXPOOL", "avgpool": "OS_AVGPOOL"}


def c_symbol(name: str) -> str:
    s = re.sub(r"[^0-9a-zA-Z_]", "_", name).lower()
    if not s or s[0].isdigit():
        s = "m_" + s
    return s


def blocked_weights(layer) -> np.ndarray:
    """Weights in blocks of four output channels, zero-padded: [O/4][fan-in][4] (see onespike.h)."""
    o = layer.weight.shape[0]
    w = layer.weight.reshape(o, -1)
    blocks = (o + 3) // 4
    padded = np.zeros((blocks * 4, w.shape[1]), dtype=np.int8)
    padded[:o] = w
    return padded.reshape(blocks, 4, -1).transpose(0, 2, 1)


def fan_in(layer) -> int:
    return int(np.prod(layer.weight.shape[1:])) if layer.weight is not None else 0


# The phase-bucket kernel (onespike.c, OS_LANES) serves every dense layer (one sort per layer) and the
# conv2d layers whose input code has at most this many phases: it sorts every receptive field's spikes
# by phase, a pass over the phases.
LANES_MAX_T = 64
INT16_MAX = (1 << 15) - 1


def lane_max(layer) -> int:
    """The most events one 16-bit lane of the phase-bucket kernel may sum (the static bound of onespike.c).

    For every output channel, the sum of its ``L`` largest positive weights must be at most 32767 and
    the sum of its ``L`` most negative weights at least -32768; then any ``L`` distinct inputs' weights
    sum within int16, whatever the spikes. The largest such ``L``, capped at the fan-in (no lane ever
    holds more). At least 258, since ``|w| <= 127``."""
    w = layer.weight.reshape(layer.weight.shape[0], -1).astype(np.int64)
    n = w.shape[1]
    pos = -np.sort(-np.clip(w, 0, None), axis=1).cumsum(axis=1)  # sums of the L largest positive weights
    neg = np.sort(np.clip(w, None, 0), axis=1).cumsum(axis=1)  # sums of the L most negative weights
    ok = (pos <= INT16_MAX) & (neg >= -INT16_MAX - 1)  # (O, n), monotone in L along each row
    per_channel = ok.sum(axis=1)  # the number of prefixes that fit = the largest L
    return int(min(int(per_channel.min()), n))


def theta_layout(T: int) -> tuple[int, int]:
    """(row length, first step) of the C threshold rows (onespike.c, os_fire): the search by powers of
    two from ``top``, the largest power of two <= T - 1, reads up to entry 2 * top - 2."""
    top = 1 << ((T - 1).bit_length() - 1) if T >= 2 else 0
    return max(T, 2 * top - 1), top


def padded_theta(theta: np.ndarray) -> np.ndarray:
    """Threshold rows padded to theta_layout's length with copies of their last entry."""
    row, _ = theta_layout(theta.shape[1])
    return np.concatenate([theta, np.repeat(theta[:, -1:], row - theta.shape[1], axis=1)], axis=1)


def lanes_layers(model: IntModel) -> list[bool]:
    """For each layer, True when the phase-bucket kernel serves it (see LANES_MAX_T)."""
    codes = model.input_codes()
    return [l.kind == "dense" or (l.kind == "conv2d" and (model.input_T if codes[i] else model.T) <= LANES_MAX_T)
            for i, l in enumerate(model.layers)]


# Limits of the C target's own types (onespike.h), beyond the spec's (runtime.spec.MAX_*): spike-list
# entries store a weight offset into the receptive field in uint16 (ev_off); kernel, stride, padding
# and the phase codes are uint8; sizes are uint32.
MAX_FAN_IN = 1 << 16
MAX_U8 = 255


def check_limits(model: IntModel) -> None:
    """Refuse, before generating anything, a model whose numbers do not fit the C target's types."""
    from runtime.errors import UserError

    for i, l in enumerate(model.layers):
        n = fan_in(l)
        if n > MAX_FAN_IN:
            raise UserError(f"C target: layer {i} ({l.kind})'s fan-in {n} exceeds {MAX_FAN_IN} "
                            f"(uint16 event offsets in onespike.h)")
        for what, v in (("kernel", l.kernel), ("stride", l.stride), ("padding", l.padding)):
            if not 0 <= v <= MAX_U8:
                raise UserError(f"C target: layer {i} ({l.kind})'s {what} {v} exceeds {MAX_U8} (uint8 in onespike.h)")
    if max(model.T, model.input_T) > MAX_U8:
        raise UserError(f"C target: T {max(model.T, model.input_T)} exceeds {MAX_U8} (uint8 phases)")


@dataclass
class Memory:
    """Static memory of a generated model, in bytes (before compilation)."""

    flash_tables: int
    ram_buffers: int
    buf_sizes: tuple[int, int]
    event_entries: int
    logits: int
    lane_entries: int = 1  # phase-bucket scratch: the largest fan-in ...
    lane_phases: int = 1  # ... and input phase count of the layers the bucket kernel serves
    lane_buckets: int = 1  # ... and their most buckets (os_bucket_t entries)
    band_entries: int = 1  # conv2d band scratch: the largest C * min(K, H) * W ...
    band_columns: int = 1  # ... and input width + 1
    direct_entries: int = 1  # the bucket kernel's build: the largest fan-in of the layers it leaves direct
    # a detector: os_cand_t entries (one per grid cell) and the bytes of the decode's RAM (the
    # candidate buffer and NAME_detect's readout map; included in ram_buffers)
    candidates: int = 0
    detect_ram: int = 0
    max_detections: int = 0


OS_LAYER_T_BYTES = 60  # sizeof(os_layer_t) on a 32-bit target
OS_HEAD_T_BYTES = 40  # sizeof(os_head_t)
OS_CAND_T_BYTES = 16  # sizeof(os_cand_t)
OS_DETECTION_T_BYTES = 32  # sizeof(os_detection_t) (int64 score aligned to 8)


def plan_memory(model: IntModel) -> Memory:
    check_limits(model)
    sizes = [int(np.prod(model.input_shape))] + [int(np.prod(l.out_shape)) for l in model.layers[:-1]]
    buf = [0, 0]
    for pos, n in enumerate(sizes):  # activation pos lives in buffer pos % 2
        buf[pos % 2] = max(buf[pos % 2], n)
    ev = max([fan_in(l) for l in model.layers] + [1])
    flash = 256 + 4 * (model.T + 1) * any(not c for c in model.input_codes()) + 4 * (model.input_T + 1)
    for l in model.layers:
        if l.weight is not None:
            flash += 4 * ((l.weight.shape[0] + 3) // 4) * (fan_in(l) + 4)
        if l.theta is not None:
            flash += 4 * l.theta.shape[0] * theta_layout(l.theta.shape[1])[0]
        flash += OS_LAYER_T_BYTES
    lanes = lanes_layers(model)
    codes = model.input_codes()
    lane_ev = max([fan_in(l) for l, b in zip(model.layers, lanes) if b] + [1])
    lane_t = max([model.input_T if c else model.T for b, c in zip(lanes, codes) if b] + [1])
    # buckets: one per phase, plus one per lane_max (>= 258) spikes of a split phase
    lane_bk = max([(model.input_T if c else model.T) + fan_in(l) // lane_max(l)
                   for l, b, c in zip(model.layers, lanes, codes) if b] + [1])
    convs = [l for l in model.layers if l.kind == "conv2d"]
    band = max([l.in_shape[0] * min(l.kernel, l.in_shape[1]) * l.in_shape[2] for l in convs] + [1])
    band_cols = max([l.in_shape[2] + 1 for l in convs] + [1])
    direct_ev = max([fan_in(l) for l, b in zip(model.layers, lanes) if not b and l.weight is not None] + [1])
    # the larger of the two kernels' scratch: the direct one's ev_off + ev_d, or the bucket kernel's
    # ev_off + ev_d (its direct layers), ev_sorted, bk_pos (T + 1), bk, bk_sd; then band_off + band_ph, band_col
    lanes_ram = 6 * direct_ev + 2 * lane_ev + 4 * (lane_t + 1) + 8 * lane_bk + 4 * lane_t
    ram = buf[0] + buf[1] + max(6 * ev, lanes_ram) + 3 * band + 4 * band_cols
    common = dict(buf_sizes=(buf[0], buf[1]), event_entries=int(ev), logits=model.num_classes,
                  lane_entries=int(lane_ev), lane_phases=int(lane_t), lane_buckets=int(lane_bk),
                  band_entries=int(band), band_columns=int(band_cols), direct_entries=int(direct_ev))
    if not is_detector(model):
        return Memory(flash_tables=int(flash), ram_buffers=int(ram), **common)
    _, gh, gw = model.layers[-1].out_shape
    cells = int(gh * gw)
    det_ram = OS_CAND_T_BYTES * cells + 4 * model.num_classes
    flash += OS_HEAD_T_BYTES + sum(4 + len(c.encode()) + 1 for c in model.head.classes)
    return Memory(flash_tables=int(flash), ram_buffers=int(ram + det_ram), candidates=cells, detect_ram=int(det_ram),
                  max_detections=int(model.head.max_detections), **common)


def is_detector(model: IntModel) -> bool:
    return getattr(model, "task", "classify") == "detect" and getattr(model, "head", None) is not None


_C_SAFE = set(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _.,:;+=()[]{}<>!#$%&'^|~@-")


def c_string(s: str) -> str:
    """A C string literal of ``s`` (UTF-8): bytes outside a safe set as 3-digit octal escapes, so the
    literal holds no quote, backslash, trigraph (``??``), comment delimiter or non-ASCII byte."""
    return '"' + "".join(chr(b) if b in _C_SAFE else f"\\{b:03o}" for b in s.encode()) + '"'


def _c_int(x: int) -> str:
    # -2147483648 is the negation of a constant too wide for int: write INT32_MIN as an int expression
    return "(-2147483647 - 1)" if x == -(1 << 31) else str(x)


def _array(ctype: str, name: str, values: np.ndarray, per_line: int = 16) -> str:
    v = np.asarray(values).ravel().tolist()
    lines = []
    for i in range(0, len(v), per_line):
        lines.append("    " + ", ".join(map(_c_int, v[i:i + per_line])) + ",")
    body = "\n".join(lines) if lines else "    0"
    return f"static const {ctype} {name}[{max(1, len(v))}] = {{\n{body}\n}};\n"


def generate(model: IntModel, name: str) -> dict[str, bytes]:
    sym = c_symbol(name)
    mem = plan_memory(model)
    up = sym.upper()
    codes = model.input_codes()
    # Only the decode tables some layer reads: an unused static table is a -Werror failure
    # (-Wunused-const-variable); the hidden one is unused when no layer fires before the readout.
    c_parts = [f'/* Generated by onespike codegen for model "{name}". Do not edit. */\n',
               f'#include "{sym}_model.h"\n\n',
               _array("uint8_t", f"{sym}_encode", model.encode)]
    if not all(codes):
        c_parts.append(_array("int32_t", f"{sym}_decode", model.decode))
    c_parts.append(_array("int32_t", f"{sym}_input_decode", model.input_decode))
    layer_inits = []
    lanes = lanes_layers(model)
    for i, l in enumerate(model.layers):
        pre = f"{sym}_l{i}"
        w = b = th = "NULL"
        if l.weight is not None:
            c_parts.append(_array("int8_t", f"{pre}_weight", blocked_weights(l)))  # [O/4][fan-in][4]
            w = f"{pre}_weight"
        if l.bias is not None:
            c_parts.append(_array("int32_t", f"{pre}_bias", np.pad(l.bias, (0, -len(l.bias) % 4))))  # zero-padded to blocks
            b = f"{pre}_bias"
        if l.theta is not None:
            c_parts.append(_array("int32_t", f"{pre}_theta", padded_theta(l.theta)))
            th = f"{pre}_theta"
        in_none = model.input_T if codes[i] else model.T
        out_none = model.T if l.fires else in_none
        dec = f"{sym}_input_decode" if codes[i] else f"{sym}_decode"
        if l.kind == "dense":
            ic, ih, iw = int(np.prod(l.in_shape)), 1, 1
            oc, oh, ow = l.out_shape[0], 1, 1
        else:
            ic, ih, iw = l.in_shape
            oc, oh, ow = l.out_shape
        layer_inits.append(
            f"    {{ {KIND_ENUM[l.kind]}, {int(l.readout)}, {l.kernel}, {l.stride}, {l.padding}, {in_none}, {out_none}, "
            f"{model.T}, {i % 2}, {(i + 1) % 2}, {ic}, {ih}, {iw}, {oc}, {oh}, {ow}, {dec}, {w}, {b}, {th}, "
            f"{lane_max(l) if lanes[i] else 0}, {theta_layout(model.T)[0]}, {theta_layout(model.T)[1]} }}, /* {i}: {l.kind} */")
    c_parts.append(f"\nstatic const os_layer_t {sym}_layers[{len(model.layers)}] = {{\n" + "\n".join(layer_inits) + "\n};\n\n")
    c_parts.append(f"static uint8_t {sym}_buf0[{max(1, mem.buf_sizes[0])}];\n")
    c_parts.append(f"static uint8_t {sym}_buf1[{max(1, mem.buf_sizes[1])}];\n")
    # scratch of the kernel compiled (onespike.h, OS_LANES): the bucket kernel's, or the direct one's
    c_parts.append(f"#if OS_LANES\nstatic uint16_t {sym}_ev_off[{mem.direct_entries}];\n"
                   f"static int32_t {sym}_ev_d[{mem.direct_entries}];\n"
                   f"static uint16_t {sym}_ev_sorted[{mem.lane_entries}];\n"
                   f"static uint32_t {sym}_bk_pos[{mem.lane_phases + 1}];\n"
                   f"static os_bucket_t {sym}_bk[{mem.lane_buckets}];\n"
                   f"static int32_t {sym}_bk_sd[{mem.lane_phases}];\n#else\n"
                   f"static uint16_t {sym}_ev_off[{mem.event_entries}];\n"
                   f"static int32_t {sym}_ev_d[{mem.event_entries}];\n"
                   f"static uint16_t {sym}_ev_sorted[1];\nstatic uint32_t {sym}_bk_pos[1];\n"
                   f"static os_bucket_t {sym}_bk[1];\nstatic int32_t {sym}_bk_sd[1];\n#endif\n")
    c_parts.append(f"static uint16_t {sym}_band_off[{mem.band_entries}];\n")
    c_parts.append(f"static uint8_t {sym}_band_ph[{mem.band_entries}];\n")
    c_parts.append(f"static uint32_t {sym}_band_col[{mem.band_columns}];\n\n")
    C, H, W = model.input_shape
    c_parts.append(
        f"const os_model_t {sym}_model = {{\n    {len(model.layers)}, {sym}_layers, {sym}_encode, {C}, {H}, {W}, "
        f"{model.num_classes},\n    {{ {sym}_buf0, {sym}_buf1 }}, {sym}_ev_off, {sym}_ev_d,\n    "
        f"{sym}_ev_sorted, {sym}_bk_pos, {sym}_bk, {sym}_bk_sd,\n    "
        f"{sym}_band_off, {sym}_band_ph, {sym}_band_col\n}};\n\n")
    det = is_detector(model)
    if det:
        c_parts.append(_detector_c(model, sym, mem))
    c_parts.append(f"""void {sym}_init(void)
{{
    size_t i;
    for (i = 0; i < sizeof {sym}_buf0; i++) {sym}_buf0[i] = 0;
    for (i = 0; i < sizeof {sym}_buf1; i++) {sym}_buf1[i] = 0;
    for (i = 0; i < sizeof {sym}_ev_off / sizeof {sym}_ev_off[0]; i++) {sym}_ev_off[i] = 0;
    for (i = 0; i < sizeof {sym}_ev_d / sizeof {sym}_ev_d[0]; i++) {sym}_ev_d[i] = 0;
    for (i = 0; i < sizeof {sym}_bk_pos / sizeof {sym}_bk_pos[0]; i++) {sym}_bk_pos[i] = 0;{_detector_init(sym) if det else ""}
}}

int {sym}_infer(const uint8_t *pixels, int32_t *logits)
{{
    return os_infer(&{sym}_model, pixels, logits, NULL, NULL);
}}

int {sym}_infer_phases(const uint8_t *phases, int32_t *logits)
{{
    return os_infer_phases(&{sym}_model, phases, logits, NULL, NULL);
}}

int {sym}_infer_traced(const uint8_t *pixels, int32_t *logits, os_hook_t hook, void *ctx)
{{
    return os_infer(&{sym}_model, pixels, logits, hook, ctx);
}}

uint8_t *{sym}_input(void)
{{
    return {sym}_buf0; /* the first layer's input buffer: os_infer encodes it in place */
}}
""")
    h = f"""/* Generated by onespike codegen for model "{name}". Do not edit.
 *
 * API (no malloc, no floating point, static buffers):
 *   {sym}_init();                                  re-initialise the buffers (optional at start-up)
 *   int cls = {sym}_infer(pixels, logits);         pixels: uint8 [{up}_INPUT_SIZE] in (C, H, W) order
 *                                                  logits: int32 [{up}_N_LOGITS]; returns the class
 *   {sym}_infer_phases(phases, logits);            input already encoded to phases (code {model.input_T} = no spike)
 *   {sym}_infer_traced(pixels, logits, hook, ctx); hook(ctx, layer, phases, n) after every layer (-1: input)
 *   uint8_t *img = {sym}_input();                  the network's own input buffer ({up}_INPUT_SIZE bytes): an
 *                                                  image written there and passed to {sym}_infer needs no
 *                                                  RAM of its own (it is encoded in place)
{_detector_api_comment(model, sym, up) if det else ""} */
#ifndef {up}_MODEL_H
#define {up}_MODEL_H

#include "onespike.h"

#define {up}_INPUT_C {C}
#define {up}_INPUT_H {H}
#define {up}_INPUT_W {W}
#define {up}_INPUT_SIZE {C * H * W}
#define {up}_N_LOGITS {model.num_classes}
#define {up}_N_LAYERS {len(model.layers)}
#define {up}_T {model.T}
#define {up}_INPUT_T {model.input_T}

extern const os_model_t {sym}_model;

void {sym}_init(void);
int {sym}_infer(const uint8_t *pixels, int32_t *logits);
int {sym}_infer_phases(const uint8_t *phases, int32_t *logits);
int {sym}_infer_traced(const uint8_t *pixels, int32_t *logits, os_hook_t hook, void *ctx);
uint8_t *{sym}_input(void);
{_detector_h(model, sym, up) if det else ""}
#endif
"""
    files = {f"{sym}_model.c": "".join(c_parts).encode(), f"{sym}_model.h": h.encode()}
    for k in KERNEL_FILES:
        files[k] = (C_DIR / k).read_bytes()
    return files


def _detector_c(model: IntModel, sym: str, mem: Memory) -> str:
    """The head constants, the decode's static buffers and the detector entry points (model.c)."""
    hd = model.head
    _, gh, gw = model.layers[-1].out_shape
    _, H, W = model.input_shape
    names = ",\n".join(f"    {c_string(c)}" for c in hd.classes)
    return f"""/* detection head (runtime.spec.DetectHead): {len(hd.classes)} classes, a {gh}x{gw} grid at stride {hd.stride} */
static const os_head_t {sym}_head = {{
    {len(hd.classes)}, {int(hd.max_detections)}, {int(hd.box_shift)}, {int(hd.nms_iou_percent)}, {int(hd.peak)}, {gh}, {gw}, {int(hd.stride)}, {H}, {W},
    {int(hd.box_mult)}, INT64_C({int(hd.score_threshold)})
}};

const char *const {sym}_class_names[{len(hd.classes)}] = {{
{names}
}};

static os_cand_t {sym}_cand[{mem.candidates}];    /* the decode's scratch: one entry per grid cell */
static int32_t {sym}_map[{model.num_classes}];    /* {sym}_detect's readout map (C, GH, GW) */

int {sym}_detect_logits(const int32_t *logits, os_detection_t *dets, int max)
{{
    return os_detect(&{sym}_head, logits, {sym}_cand, dets, max);
}}

int {sym}_detect(const uint8_t *pixels, os_detection_t *dets, int max)
{{
    (void)os_infer(&{sym}_model, pixels, {sym}_map, NULL, NULL);
    return os_detect(&{sym}_head, {sym}_map, {sym}_cand, dets, max);
}}


const int32_t *{sym}_readout(void)
{{
    return {sym}_map;
}}

"""


def _detector_init(sym: str) -> str:
    return f"""
    for (i = 0; i < sizeof {sym}_map / sizeof {sym}_map[0]; i++) {sym}_map[i] = 0;
    for (i = 0; i < sizeof {sym}_cand / sizeof {sym}_cand[0]; i++) {{
        {sym}_cand[i].score = 0, {sym}_cand[i].y = 0, {sym}_cand[i].x = 0, {sym}_cand[i].cls = 0, {sym}_cand[i].peak = 0;
    }}"""


def _detector_api_comment(model: IntModel, sym: str, up: str) -> str:
    names = ", ".join(c_string(c) for c in model.head.classes)
    return f""" *
 * Detector ({len(model.head.classes)} classes: {names}):
 *   os_detection_t dets[{up}_MAX_DETECTIONS];
 *   int n = {sym}_detect(pixels, dets, {up}_MAX_DETECTIONS);
 *       inference, then the decode: n detections in the specification's order (score descending),
 *       each class 0..K-1, x0, y0, x1, y1 in input pixels (x1, y1 exclusive) and an int64 score;
 *       {sym}_readout() is the readout map (C, GH, GW) it decoded
 *   int n = {sym}_detect_logits(logits, dets, max);
 *       the decode alone, of the logits of {sym}_infer
 *   {sym}_class_names[cls] names the classes; a max below {up}_MAX_DETECTIONS gives the first max detections
 *   uint8_t *img = {sym}_input();                  {up}_INPUT_SIZE bytes: write the image there and call
 *   int n = {sym}_detect(img, dets, max);          the encode runs in place: no second image buffer in RAM
 *                                                  (the image is consumed; any other pixels pointer works too)
"""


def _detector_h(model: IntModel, sym: str, up: str) -> str:
    hd = model.head
    _, gh, gw = model.layers[-1].out_shape
    return f"""
/* detector */
#define {up}_DETECTOR 1
#define {up}_N_CLASSES {len(hd.classes)}
#define {up}_MAX_DETECTIONS {int(hd.max_detections)}
#define {up}_GRID_H {gh}
#define {up}_GRID_W {gw}

extern const char *const {sym}_class_names[{up}_N_CLASSES];

int {sym}_detect(const uint8_t *pixels, os_detection_t *dets, int max);
int {sym}_detect_logits(const int32_t *logits, os_detection_t *dets, int max);
const int32_t *{sym}_readout(void);
"""


def emit(model: IntModel, model_sha256: str, model_name: str, out_dir: Path, board: str | None = None) -> dict:
    files = generate(model, model_name)
    mem = plan_memory(model)
    manifest = {
        "target": "c", "board": board,
        "model": {"name": model_name, "sha256": model_sha256, "symbol": c_symbol(model_name)},
        "tools": tool_versions(), "layers": layer_summary(model),
        "memory_estimate_bytes": {"flash_tables": mem.flash_tables, "ram_buffers": mem.ram_buffers},
    }
    write_with_manifest(out_dir, files, manifest)
    return manifest
