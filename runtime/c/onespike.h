/*
 * onespike.h - one-spike SNN inference kernels (C99, integer only, no malloc).
 *
 * Implements the integer specification of docs/spec.md (runtime/spec.py) bit-exactly:
 *   phases are uint8 codes 0..T-1 (a spike at phase f) or T (no spike);
 *   dense / conv2d: acc = B + sum W * D[f_in]; avgpool: acc = sum D[f_in];
 *   fire: the first f with acc >= Theta[c][f], else no spike; maxpool: earliest spike;
 *   the last layer (readout) does not fire: its accumulators are the logits.
 * The kernels are event-driven: each dense/conv2d output group gathers the list of spiking inputs it
 * can see, and only those cost work: a multiply-accumulate per event and output channel, or, in the
 * phase-bucket kernel (Cortex-M4 and other cores with the DSP extension, or -DOS_LANES=1), two 16-bit
 * adds per event and four channels, and one multiply per phase and channel. Accumulators are int32: the range analysis
 * at lowering proves every accumulator fits for any input; the kernels sum modulo 2^32 in uint32_t,
 * which is exact then (a single product W * D[f] may exceed int32; see onespike.c).
 *
 * A detector (docs/spec.md, "detection head") decodes its readout map into a list of detections
 * with os_detect: integers only (int64 scores and box products), no allocation.
 *
 * Generated code (codegen emit --target c) provides the tables, one os_model_t and the static
 * buffers, plus a two-call API (NAME_init, NAME_infer; a detector also NAME_detect) declared in
 * its own header.
 */
#ifndef ONESPIKE_H
#define ONESPIKE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The phase-bucket kernel (onespike.c, os_lanes): on by default where the core has the DSP
 * extension's SIMD instructions (Cortex-M4/M7/M33: SXTAB16), off elsewhere (Cortex-M0+, host);
 * -DOS_LANES=1 forces it on with a portable C reading of the same lane arithmetic (the host tests run
 * both kernels). Defined here so that generated code sizes its scratch for the kernel compiled. */
#ifndef OS_LANES
#if defined(__ARM_FEATURE_SIMD32)
#define OS_LANES 1
#else
#define OS_LANES 0
#endif
#endif

enum { OS_DENSE = 0, OS_CONV2D = 1, OS_MAXPOOL = 2, OS_AVGPOOL = 3 };

typedef struct {
    uint8_t kind;      /* OS_DENSE, OS_CONV2D, OS_MAXPOOL, OS_AVGPOOL */
    uint8_t readout;   /* 1 for the last layer: writes logits instead of phases */
    uint8_t kernel, stride, padding;
    uint8_t in_none;   /* no-spike code of the input (T_in before the first firing layer, else T) */
    uint8_t out_none;  /* no-spike code of the output (T when the layer fires, in_none for maxpool) */
    uint8_t T;         /* phases of the hidden code: length of each threshold row */
    uint8_t in_buf, out_buf; /* which activation buffer holds the input / receives the output */
    uint32_t in_c, in_h, in_w;   /* dense: in_c = fan-in, in_h = in_w = 1 */
    uint32_t out_c, out_h, out_w;
    const int32_t *in_decode; /* decode table of the input's code, in_none + 1 entries, last = 0 */
    const int8_t *weight;     /* blocks of four output channels, zero-padded:
                               * dense [out/4][in][4]; conv2d [out/4][in_c][ky][kx][4] */
    const int32_t *bias;      /* [out_c rounded up to 4], accumulator units, zero-padded */
    const int32_t *theta;     /* [out_c][theta_row], non-increasing in the phase (entries T.. repeat T-1) */
    uint32_t lane_max;        /* dense/conv2d: at most this many weights of one output channel sum within
                               * int16 (proved at code generation); 0: the layer's input code has too many
                               * phases for the phase-bucket kernel (see onespike.c, OS_LANES) */
    uint16_t theta_row;       /* entries per threshold row: max(T, 2 * theta_top - 1) */
    uint8_t theta_top;        /* the largest power of two <= T - 1 (0 when T = 1): the search's first step */
} os_layer_t;

/* A phase bucket of the spike list (onespike.c, os_bucket): its end in ev_sorted and its value D[f]. */
typedef struct {
    const uint16_t *end;
    int32_t d;
} os_bucket_t;

typedef struct {
    uint16_t n_layers;
    const os_layer_t *layers;
    const uint8_t *encode;    /* 256 entries: pixel -> input phase */
    uint32_t in_c, in_h, in_w;
    uint32_t n_logits;
    uint8_t *buf[2];          /* activation (phase) buffers */
    uint16_t *ev_off;         /* the direct kernel's spike list: weight offsets of the spiking inputs (fan-in <= 65536) ... */
    int32_t *ev_d;            /* ... and their decoded values D[f] (the direct kernel's layers only) */
    /* phase-bucket scratch (layers with lane_max > 0; largest such fan-in / phase count entries) */
    uint16_t *ev_sorted;      /* the weight offsets sorted by phase */
    uint32_t *bk_pos;         /* per phase: spike count, then bucket start (T + 1 entries, zero between uses) */
    os_bucket_t *bk;          /* the buckets (T + fan-in / lane_max entries) */
    int32_t *bk_sd;           /* the values D[f] of the single spikes (T entries) */
    /* conv2d scratch: one output row's band of input rows, column by column (largest C * K * W) */
    uint16_t *band_off;       /* (c * K + ky) * K + x, modulo 2^16 */
    uint8_t *band_ph;         /* the phase */
    uint32_t *band_col;       /* per column x: its first entry (largest input width + 1 entries) */
} os_model_t;

/* Called after each layer with its output phases (debug / trace mode); may be NULL. */
typedef void (*os_hook_t)(void *ctx, int layer, const uint8_t *phases, size_t n);

/* Encode uint8 pixels (C, H, W) and run the network. Writes n_logits int32 logits and returns
 * the class (argmax, ties to the lowest index). */
int os_infer(const os_model_t *m, const uint8_t *pixels, int32_t *logits, os_hook_t hook, void *ctx);

/* Same, from input phases already encoded with the model's input code. */
int os_infer_phases(const os_model_t *m, const uint8_t *phases, int32_t *logits, os_hook_t hook, void *ctx);

/* argmax with ties to the lowest index */
int os_argmax(const int32_t *v, int n);

/* ---- detection head (runtime.spec.DetectHead, decode_detections) ----
 * The readout map L is (1 + K + 4, GH, GW) int32 logits: background, K class scores, dx, dy, w, h. */
typedef struct {
    uint16_t n_classes;       /* K, 1..64 */
    uint16_t max_detections;  /* 1..256 */
    uint8_t box_shift;        /* 1..62 */
    uint8_t nms_iou_percent;  /* 0..100 */
    uint8_t peak;             /* 1: candidates are 3x3 same-class local maxima; 0: every cell above the threshold */
    uint32_t grid_h, grid_w;  /* GH, GW: the readout map's height and width */
    uint32_t stride;          /* input pixels per grid cell */
    uint32_t in_h, in_w;      /* H, W: the input size (boxes are clamped to it) */
    int32_t box_mult;         /* 1..2^31-1 */
    int64_t score_threshold;  /* |.| <= 2^32 */
} os_head_t;

/* One detection: class 0..K-1, box in input pixels (x1, y1 exclusive), score L[c] - L[0]. */
typedef struct {
    int32_t cls, x0, y0, x1, y1;
    int64_t score;
} os_detection_t;

/* Scratch entry of os_detect: a cell's score, position and class (GH * GW entries, 16 bytes each). */
typedef struct {
    int64_t score;
    uint16_t y, x;  /* grid cell (sides <= 1024) */
    uint8_t cls;    /* 1..K (the logit channel) */
    uint8_t peak;
} os_cand_t;

/* Decode one readout map into at most min(max, h->max_detections) detections, in the
 * specification's order (score descending, then raster index; greedy same-class NMS); returns
 * their number. cand: h->grid_h * h->grid_w scratch entries. Limiting max below
 * h->max_detections gives a prefix of the full list. */
int os_detect(const os_head_t *h, const int32_t *logits, os_cand_t *cand, os_detection_t *dets, int max);

#ifdef __cplusplus
}
#endif
#endif /* ONESPIKE_H */
