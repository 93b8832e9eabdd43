/*
 * onespike.c - event-driven kernels of the one-spike integer specification (see onespike.h).
 * C99, integer only, no allocation, no division in the inner loops (Cortex-M0+ has no divider).
 *
 * Dense and conv2d layers work from a spike list: the spiking inputs a group of neurons can see,
 * as (weight offset, D[f]) pairs. Silent inputs cost one compare while the list is built and
 * nothing after; every list entry is a synaptic event for four output channels at a time, whose
 * accumulators stay in registers. Weights are stored in blocks of four output channels
 * ([O/4][inputs][4], zero-padded), so one 32-bit load fetches the four weights of an event.
 */
#include "onespike.h"

#include <limits.h>
#include <string.h>

/* Sizes up to runtime.spec.MAX_NEURONS (2^20) are held in int. */
#if INT_MAX < 0x7FFFFFFF
#error "onespike.c needs an int of at least 32 bits"
#endif

/* Layer kernels stay out of line: inlined into one function they starve the register allocator
 * (measured on Cortex-M4: twice the instructions per synaptic operation). */
#if defined(__GNUC__)
#define OS_NOINLINE __attribute__((noinline))
#else
#define OS_NOINLINE
#endif

/* Targets where a 4-byte memcpy from any address is one load (not on strict-alignment cores). */
#if defined(__ARM_FEATURE_UNALIGNED) || defined(__x86_64__) || defined(__i386__) || defined(__aarch64__)
#define OS_WORD_LOADS 1
#endif

/* The first phase f with acc >= theta[f], or T (no spike). theta is non-increasing, so this is
 * the number of entries greater than acc: one compare for the common silent case, then a
 * binary search. */
static uint8_t os_fire(int32_t acc, const int32_t *theta, int T)
{
    if (acc < theta[T - 1])
        return (uint8_t)T;
    int lo = 0, hi = T - 1;
    while (lo < hi) {
        int mid = (lo + hi) >> 1;
        if (theta[mid] > acc)
            lo = mid + 1;
        else
            hi = mid;
    }
    return (uint8_t)lo;
}

int os_argmax(const int32_t *v, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best])
            best = i;
    return best;
}

/* Accumulation is done in uint32_t, modulo 2^32, and is exact without any overflow:
 * the true accumulator B + sum W * D[f] of every output lies in int32 (the range analysis at
 * lowering bounds it over all inputs: acc_bits <= 32), but a single product W * D[f] need not
 * (W = 127, D[f] = 2^25 with a bias near -2^31), so signed int32 arithmetic could overflow, which
 * is undefined behaviour in C. Unsigned arithmetic is defined to wrap; the wrapped sum is congruent
 * to the true sum modulo 2^32, and the true sum is in [-2^31, 2^31), so os_s32 recovers it exactly.
 * It compiles to the same instructions as int32 would (LDR, SXTB/SBFX/ASR, MLA: 13 per event on
 * Cortex-M4 at -O2), and os_s32 to none. */

/* a * b modulo 2^32; the 1u keeps the product unsigned even where int is wider than 32 bits. */
#define OS_MULU(a, b) (1u * (a) * (b))

/* The int32 value congruent to u modulo 2^32, without implementation-defined conversion. */
static int32_t os_s32(uint32_t u)
{
    return u <= 0x7FFFFFFFu ? (int32_t)u : (int32_t)(u - 0x80000000u) + INT32_MIN;
}

/* acc[0..3] += the four weights at w[4 * off[e]] times d[e], for every list entry e (mod 2^32). */
static OS_NOINLINE void os_events4(uint32_t *acc4, const int8_t *w, const uint16_t *off, const int32_t *d, int n)
{
    uint32_t a0 = acc4[0], a1 = acc4[1], a2 = acc4[2], a3 = acc4[3];
    for (int e = 0; e < n; e++) {
        const int8_t *wp = w + 4 * (size_t)off[e];
        const uint32_t de = (uint32_t)d[e];
#ifdef OS_WORD_LOADS
        int8_t wb[4]; /* one 32-bit load */
        memcpy(wb, wp, sizeof wb);
#else
        const int8_t *wb = wp;
#endif
        /* (uint32_t) of a negative int8_t is defined: the value modulo 2^32 */
        a0 += OS_MULU((uint32_t)wb[0], de);
        a1 += OS_MULU((uint32_t)wb[1], de);
        a2 += OS_MULU((uint32_t)wb[2], de);
        a3 += OS_MULU((uint32_t)wb[3], de);
    }
    acc4[0] = a0, acc4[1] = a1, acc4[2] = a2, acc4[3] = a3;
}

/* Accumulate the four channels of block ob over the spike list, then fire them or write logits. */
static void os_block_out(const os_layer_t *L, int ob, const int8_t *wblock, const uint16_t *off, const int32_t *d,
                         int n, size_t out_index, size_t out_stride, uint8_t *out, int32_t *logits)
{
    const int O = (int)L->out_c;
    uint32_t acc4[4];
    for (int k = 0; k < 4; k++)
        acc4[k] = ob * 4 + k < O ? (uint32_t)L->bias[ob * 4 + k] : 0u;
    os_events4(acc4, wblock, off, d, n);
    for (int k = 0; k < 4 && ob * 4 + k < O; k++) {
        const size_t idx = out_index + (size_t)(ob * 4 + k) * out_stride;
        const int32_t acc = os_s32(acc4[k]);
        if (L->readout)
            logits[idx] = acc;
        else
            out[idx] = os_fire(acc, L->theta + (size_t)(ob * 4 + k) * L->T, L->T);
    }
}

static OS_NOINLINE void os_dense(const os_layer_t *L, const uint8_t *in, uint8_t *out, uint16_t *off, int32_t *d,
                                 int32_t *logits)
{
    const int n_in = (int)(L->in_c * L->in_h * L->in_w); /* <= 2^20 (runtime.spec.MAX_NEURONS) */
    const int blocks = (int)(L->out_c + 3) / 4;
    int n = 0;
    for (int j = 0; j < n_in; j++) {
        const uint8_t f = in[j];
        if (f != L->in_none) {
            off[n] = (uint16_t)j;
            d[n++] = L->in_decode[f];
        }
    }
    for (int ob = 0; ob < blocks; ob++)
        os_block_out(L, ob, L->weight + (size_t)ob * 4 * n_in, off, d, n, 0, 1, out, logits);
}

static OS_NOINLINE void os_conv2d(const os_layer_t *L, const uint8_t *in, uint8_t *out, uint16_t *off, int32_t *d,
                                  int32_t *logits)
{
    const int K = L->kernel, S = L->stride, P = L->padding;
    const int C = (int)L->in_c, H = (int)L->in_h, W = (int)L->in_w;
    const int OH = (int)L->out_h, OW = (int)L->out_w;
    const int blocks = (int)(L->out_c + 3) / 4;
    const size_t rf = (size_t)C * K * K;
    const size_t plane = (size_t)OH * OW;
    for (int oy = 0; oy < OH; oy++) {
        const int y0 = oy * S - P;
        const int ky_lo = y0 < 0 ? -y0 : 0, ky_hi = y0 + K > H ? H - y0 : K;
        for (int ox = 0; ox < OW; ox++) {
            const int x0 = ox * S - P;
            const int kx_lo = x0 < 0 ? -x0 : 0, kx_hi = x0 + K > W ? W - x0 : K;
            int n = 0; /* the spikes of this receptive field */
            for (int c = 0; c < C; c++) {
                for (int ky = ky_lo; ky < ky_hi; ky++) {
                    const uint8_t *row = in + ((size_t)c * H + (size_t)(y0 + ky)) * W;
                    const int base = (c * K + ky) * K;
                    for (int kx = kx_lo; kx < kx_hi; kx++) {
                        const uint8_t f = row[x0 + kx];
                        if (f != L->in_none) {
                            off[n] = (uint16_t)(base + kx);
                            d[n++] = L->in_decode[f];
                        }
                    }
                }
            }
            for (int ob = 0; ob < blocks; ob++)
                os_block_out(L, ob, L->weight + (size_t)ob * 4 * rf, off, d, n, (size_t)oy * OW + ox, plane, out, logits);
        }
    }
}

static OS_NOINLINE void os_pool(const os_layer_t *L, const uint8_t *in, uint8_t *out)
{
    const int K = L->kernel, S = L->stride, P = L->padding;
    const int C = (int)L->in_c, H = (int)L->in_h, W = (int)L->in_w, OH = (int)L->out_h, OW = (int)L->out_w;
    const uint8_t none = L->in_none;
    for (int c = 0; c < C; c++) {
        const uint8_t *inc = in + (size_t)c * H * W;
        uint8_t *outc = out + (size_t)c * OH * OW;
        for (int oy = 0; oy < OH; oy++) {
            const int y0 = oy * S - P;
            const int ky_lo = y0 < 0 ? -y0 : 0, ky_hi = y0 + K > H ? H - y0 : K;
            for (int ox = 0; ox < OW; ox++) {
                const int x0 = ox * S - P;
                const int kx_lo = x0 < 0 ? -x0 : 0, kx_hi = x0 + K > W ? W - x0 : K;
                if (L->kind == OS_MAXPOOL) {
                    uint8_t best = none; /* the earliest spike; padding is "no spike" */
                    for (int ky = ky_lo; ky < ky_hi; ky++) {
                        const uint8_t *r = inc + (y0 + ky) * W;
                        for (int kx = kx_lo; kx < kx_hi; kx++)
                            if (r[x0 + kx] < best)
                                best = r[x0 + kx];
                    }
                    outc[oy * OW + ox] = best;
                } else {
                    /* padding contributes 0; partial sums are >= 0 and at most the window's sum, which fits
                     * int32 by the range analysis: no overflow */
                    int32_t acc = 0;
                    for (int ky = ky_lo; ky < ky_hi; ky++) {
                        const uint8_t *r = inc + (y0 + ky) * W;
                        for (int kx = kx_lo; kx < kx_hi; kx++)
                            if (r[x0 + kx] != none)
                                acc += L->in_decode[r[x0 + kx]];
                    }
                    outc[oy * OW + ox] = os_fire(acc, L->theta + (size_t)c * L->T, L->T);
                }
            }
        }
    }
}

int os_infer_phases(const os_model_t *m, const uint8_t *phases, int32_t *logits, os_hook_t hook, void *ctx)
{
    const uint8_t *in = phases;
    for (int i = 0; i < m->n_layers; i++) {
        const os_layer_t *L = &m->layers[i];
        uint8_t *out = m->buf[L->out_buf];
        if (i > 0)
            in = m->buf[L->in_buf];
        switch (L->kind) {
        case OS_DENSE:
            os_dense(L, in, out, m->ev_off, m->ev_d, logits);
            break;
        case OS_CONV2D:
            os_conv2d(L, in, out, m->ev_off, m->ev_d, logits);
            break;
        default:
            os_pool(L, in, out);
            break;
        }
        if (hook && !L->readout)
            hook(ctx, i, out, (size_t)L->out_c * L->out_h * L->out_w);
    }
    return os_argmax(logits, (int)m->n_logits);
}

int os_infer(const os_model_t *m, const uint8_t *pixels, int32_t *logits, os_hook_t hook, void *ctx)
{
    const size_t n = (size_t)m->in_c * m->in_h * m->in_w;
    uint8_t *ph = m->buf[m->layers[0].in_buf];
    for (size_t i = 0; i < n; i++)
        ph[i] = m->encode[pixels[i]];
    if (hook)
        hook(ctx, -1, ph, n);
    return os_infer_phases(m, ph, logits, hook, ctx);
}

/* ---- detection head: runtime.spec.decode_detections, step by step ---- */

/* floor(a / 2^s) for 1 <= s <= 62. Right-shifting a negative signed value is implementation-defined
 * in C, so a negative a goes through its non-negative mirror: floor(a / 2^s) = -(((-a - 1) >> s)) - 1. */
static int64_t os_floor_shr(int64_t a, unsigned s)
{
    if (a >= 0)
        return a >> s;
    return -(int64_t)((uint64_t)(-(a + 1)) >> s) - 1;
}

static int64_t os_clamp(int64_t v, int64_t lo, int64_t hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

/* px(v) = floor((v * box_mult + 2^(box_shift - 1)) / 2^box_shift): |v * box_mult| < 2^62, so the sum
 * (< 2^62 + 2^61) is exact in int64. */
static int64_t os_box_px(const os_head_t *h, int32_t v)
{
    return os_floor_shr((int64_t)v * h->box_mult + ((int64_t)1 << (h->box_shift - 1)), h->box_shift);
}

/* 100 * inter > percent * union, areas in pixels (exact in int64: sides <= 1024). */
static int os_suppresses(const os_detection_t *a, const os_detection_t *b, int percent)
{
    const int64_t iw = (int64_t)(a->x1 < b->x1 ? a->x1 : b->x1) - (a->x0 > b->x0 ? a->x0 : b->x0);
    const int64_t ih = (int64_t)(a->y1 < b->y1 ? a->y1 : b->y1) - (a->y0 > b->y0 ? a->y0 : b->y0);
    const int64_t inter = iw > 0 && ih > 0 ? iw * ih : 0;
    const int64_t uni = (int64_t)(a->x1 - a->x0) * (a->y1 - a->y0) + (int64_t)(b->x1 - b->x0) * (b->y1 - b->y0) - inter;
    return 100 * inter > (int64_t)percent * uni;
}

int os_detect(const os_head_t *h, const int32_t *logits, os_cand_t *cand, os_detection_t *dets, int max)
{
    const int K = h->n_classes, GH = (int)h->grid_h, GW = (int)h->grid_w;
    const int64_t S = h->stride, H = h->in_h, W = h->in_w;
    const size_t plane = (size_t)GH * GW;
    const int lim = max < (int)h->max_detections ? max : (int)h->max_detections;
    if (lim <= 0)
        return 0;
    /* 1. every cell's class (first maximum of channels 1..K) and score L[c] - L[0] */
    for (int y = 0, i = 0; y < GH; y++) {
        for (int x = 0; x < GW; x++, i++) {
            int best = 1;
            for (int k = 2; k <= K; k++)
                if (logits[(size_t)k * plane + i] > logits[(size_t)best * plane + i])
                    best = k;
            cand[i].score = (int64_t)logits[(size_t)best * plane + i] - logits[i];
            cand[i].y = (uint16_t)y, cand[i].x = (uint16_t)x;
            cand[i].cls = (uint8_t)best, cand[i].peak = 0;
        }
    }
    /* 2. candidates: score >= threshold and (with h->peak) a 3x3 local maximum among the same class;
     * of equal neighbours only the first in raster order (> every earlier one, >= every later one) */
    for (int y = 0, i = 0; y < GH; y++) {
        for (int x = 0; x < GW; x++, i++) {
            const int64_t s = cand[i].score;
            if (s < h->score_threshold)
                continue;
            int peak = 1;
            for (int ny = y > 0 ? y - 1 : 0; h->peak && ny <= y + 1 && ny < GH && peak; ny++) {
                for (int nx = x > 0 ? x - 1 : 0; nx <= x + 1 && nx < GW; nx++) {
                    const int j = ny * GW + nx;
                    if (j == i || cand[j].cls != cand[i].cls)
                        continue;
                    if (j < i ? !(s > cand[j].score) : !(s >= cand[j].score)) {
                        peak = 0;
                        break;
                    }
                }
            }
            cand[i].peak = (uint8_t)peak;
        }
    }
    /* 3. the candidates moved to the front, sorted by score descending; a stable insertion sort of
     * cells taken in raster order, so equal scores keep the raster order. Entry i is read before
     * position n <= i is written, and every peak flag is already set. */
    int n = 0;
    for (size_t i = 0; i < plane; i++) {
        if (!cand[i].peak)
            continue;
        const os_cand_t e = cand[i];
        int p = n++;
        while (p > 0 && cand[p - 1].score < e.score) {
            cand[p] = cand[p - 1];
            p--;
        }
        cand[p] = e;
    }
    /* 4. boxes and greedy same-class suppression, in that order */
    int kept = 0;
    for (int e = 0; e < n && kept < lim; e++) {
        const size_t i = (size_t)cand[e].y * GW + cand[e].x;
        const int32_t *v = logits + (size_t)(1 + K) * plane + i;
        const int64_t cx = cand[e].x * S + os_clamp(os_box_px(h, v[0]), 0, S);
        const int64_t cy = cand[e].y * S + os_clamp(os_box_px(h, v[plane]), 0, S);
        const int64_t bw = os_clamp(os_box_px(h, v[2 * plane]), 1, W);
        const int64_t bh = os_clamp(os_box_px(h, v[3 * plane]), 1, H);
        const int64_t x0 = cx - (bw >> 1), y0 = cy - (bh >> 1); /* bw, bh >= 1: the shift is floor(w / 2) */
        os_detection_t d;
        d.cls = cand[e].cls - 1;
        d.x0 = (int32_t)os_clamp(x0, 0, W), d.y0 = (int32_t)os_clamp(y0, 0, H);
        d.x1 = (int32_t)os_clamp(x0 + bw, 0, W), d.y1 = (int32_t)os_clamp(y0 + bh, 0, H);
        d.score = cand[e].score;
        int keep = 1;
        for (int k = 0; k < kept && keep; k++)
            if (dets[k].cls == d.cls && os_suppresses(&dets[k], &d, h->nms_iou_percent))
                keep = 0;
        if (keep)
            dets[kept++] = d;
    }
    return kept;
}
