/*
 * int8_ann.h - BASELINE ONLY: a straightforward int8 ANN (TFLite-Micro-style quantisation, written
 * for this project as the comparison point of docs/benchmarks.md; not CMSIS-NN). uint8 activations
 * (zero point 0 after ReLU), int8 per-channel weights, int32 accumulators, fixed-point requantisation.
 */
#ifndef INT8_ANN_H
#define INT8_ANN_H
#include <stdint.h>

enum { I8_DENSE = 0, I8_CONV2D = 1, I8_MAXPOOL = 2 };

typedef struct {
    uint8_t kind, readout, kernel, stride, padding, in_buf, out_buf;
    uint16_t in_c, in_h, in_w, out_c, out_h, out_w;
    const int8_t *weight;  /* dense [out][in]; conv [out][in_c][ky][kx] */
    const int32_t *bias;   /* [out] */
    const int32_t *mult;   /* [out] requantisation multiplier, Q31 */
    const uint8_t *shift;  /* [out] total right shift (31 + exponent) */
} i8_layer_t;

typedef struct {
    uint16_t n_layers, n_logits;
    const i8_layer_t *layers;
    uint8_t *buf[2];
} i8_model_t;

int i8_infer(const i8_model_t *m, const uint8_t *pixels, int32_t *logits);
#endif
