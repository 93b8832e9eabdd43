/*
 * onespike.h - one-spike SNN inference kernels (C99, integer only, no malloc).
 *
 * Implements the integer specification of docs/spec.md (runtime/spec.py) bit-exactly:
 *   phases are uint8 codes 0..T-1 (a spike at phase f) or T (no spike);
 *   dense / conv2d: acc = B + sum W * D[f_in]; avgpool: acc = sum D[f_in];
 *   fire: the first f with acc >= Theta[c][f], else no spike; maxpool: earliest spike;
 *   the last layer (readout) does not fire: its accumulators are the logits.
 * The kernels are event-driven: each dense/conv2d output group gathers the list of spiking inputs it
 * can see, and only those cost multiply-accumulates. Accumulators are int32: the range analysis
 * at lowering proves every accumulator fits for any input; the kernels sum modulo 2^32 in uint32_t,
 * which is exact then (a single product W * D[f] may exceed int32; see onespike.c).
 *
 * Generated code (codegen emit --target c) provides the tables, one os_model_t and the static
 * buffers, plus a two-call API (NAME_init, NAME_infer) declared in its own header.
 */
#ifndef ONESPIKE_H
#define ONESPIKE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
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
    const int32_t *bias;      /* [out_c], accumulator units */
    const int32_t *theta;     /* [out_c][T], non-increasing in the phase */
} os_layer_t;

typedef struct {
    uint16_t n_layers;
    const os_layer_t *layers;
    const uint8_t *encode;    /* 256 entries: pixel -> input phase */
    uint32_t in_c, in_h, in_w;
    uint32_t n_logits;
    uint8_t *buf[2];          /* activation (phase) buffers */
    uint16_t *ev_off;         /* spike list scratch: weight offsets of the spiking inputs (fan-in <= 65536) ... */
    int32_t *ev_d;            /* ... and their decoded values D[f] (largest fan-in entries each) */
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

#ifdef __cplusplus
}
#endif
#endif /* ONESPIKE_H */
