/*
 * onespike.c - event-driven kernels of the one-spike integer specification (see onespike.h).
 * C99, integer only, no allocation, no division in the inner loops (Cortex-M0+ has no divider).
 */
#include "onespike.h"

#include <string.h>

/* Layer kernels and the synapse loop stay out of line: inlined into one function they starve the
 * register allocator (measured: 2x more instructions per synaptic operation on Cortex-M4). */
#if defined(__GNUC__)
#define OS_NOINLINE __attribute__((noinline))
#else
#define OS_NOINLINE
#endif

/* The first phase f with acc >= theta[f], or T (no spike). theta is non-increasing, so this is
 * the number of entries greater than acc: a binary search. */
static uint8_t os_fire(int32_t acc, const int32_t *theta, int T)
{
    if (acc < theta[T - 1])
        return (uint8_t)T; /* most neurons stay silent: one compare */
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


/* acc[o] += w[o] * d for o < n: the synaptic operations of one input spike. Kept out of line so
 * that the compiler gives this loop all the registers; unrolled by four. */
static OS_NOINLINE void os_scatter(int32_t *restrict acc, const int8_t *restrict w, int32_t d, int n)
{
    int o = 0;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ && \
    (defined(__ARM_FEATURE_UNALIGNED) || defined(__x86_64__) || defined(__i386__))
    /* eight weights per two 32-bit loads, sign-extended from their byte lanes (one SXTB/SBFX each
     * on Arm); the accumulators move in pairs (LDRD/STRD) */
    for (; o + 8 <= n; o += 8) {
        uint32_t wa, wb;
        memcpy(&wa, w + o, sizeof wa);
        memcpy(&wb, w + o + 4, sizeof wb);
        int32_t a0 = acc[o], a1 = acc[o + 1], a2 = acc[o + 2], a3 = acc[o + 3];
        int32_t a4 = acc[o + 4], a5 = acc[o + 5], a6 = acc[o + 6], a7 = acc[o + 7];
        a0 += (int32_t)(int8_t)(wa & 0xFFu) * d;
        a1 += (int32_t)(int8_t)((wa >> 8) & 0xFFu) * d;
        a2 += (int32_t)(int8_t)((wa >> 16) & 0xFFu) * d;
        a3 += (int32_t)(int8_t)(wa >> 24) * d;
        a4 += (int32_t)(int8_t)(wb & 0xFFu) * d;
        a5 += (int32_t)(int8_t)((wb >> 8) & 0xFFu) * d;
        a6 += (int32_t)(int8_t)((wb >> 16) & 0xFFu) * d;
        a7 += (int32_t)(int8_t)(wb >> 24) * d;
        acc[o] = a0, acc[o + 1] = a1, acc[o + 2] = a2, acc[o + 3] = a3;
        acc[o + 4] = a4, acc[o + 5] = a5, acc[o + 6] = a6, acc[o + 7] = a7;
    }
#else
    for (; o + 4 <= n; o += 4) {
        acc[o] += (int32_t)w[o] * d;
        acc[o + 1] += (int32_t)w[o + 1] * d;
        acc[o + 2] += (int32_t)w[o + 2] * d;
        acc[o + 3] += (int32_t)w[o + 3] * d;
    }
#endif
    for (; o < n; o++)
        acc[o] += (int32_t)w[o] * d;
}

int os_argmax(const int32_t *v, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best])
            best = i;
    return best;
}

static OS_NOINLINE void os_dense(const os_layer_t *L, const uint8_t *in, uint8_t *out, int32_t *acc, int32_t *logits)
{
    const int n_in = (int)L->in_c * L->in_h * L->in_w;
    const int n_out = L->out_c;
    for (int o = 0; o < n_out; o++)
        acc[o] = L->bias[o];
    for (int j = 0; j < n_in; j++) {
        const uint8_t f = in[j];
        if (f == L->in_none)
            continue;
        os_scatter(acc, L->weight + (size_t)j * n_out, L->in_decode[f], n_out);
    }
    if (L->readout) {
        for (int o = 0; o < n_out; o++)
            logits[o] = acc[o];
    } else {
        for (int o = 0; o < n_out; o++)
            out[o] = os_fire(acc[o], L->theta + (size_t)o * L->T, L->T);
    }
}

/* Ring of accumulator rows for conv2d: an input row only reaches output rows
 * [ceil((iy+P-K+1)/S), floor((iy+P)/S)], so ceil(K/S)+1 rows of (OW x O) accumulators suffice. */
#define OS_RING_ROWS(K, S) (((K) + (S) - 1) / (S) + 1)

static void os_conv_init_row(const os_layer_t *L, int32_t *row)
{
    const int O = L->out_c;
    for (int ox = 0; ox < L->out_w; ox++)
        for (int o = 0; o < O; o++)
            row[ox * O + o] = L->bias[o];
}

static void os_conv_retire_row(const os_layer_t *L, const int32_t *row, int oy, uint8_t *out, int32_t *logits)
{
    const int O = L->out_c, OH = L->out_h, OW = L->out_w;
    for (int o = 0; o < O; o++) {
        const int32_t *th = L->theta + (size_t)o * L->T;
        for (int ox = 0; ox < OW; ox++) {
            const size_t idx = ((size_t)o * OH + oy) * OW + ox;
            const int32_t a = row[ox * O + o];
            if (L->readout)
                logits[idx] = a;
            else
                out[idx] = os_fire(a, th, L->T);
        }
    }
}

static OS_NOINLINE void os_conv2d(const os_layer_t *L, const uint8_t *in, uint8_t *out, int32_t *acc, int32_t *logits)
{
    const int K = L->kernel, S = L->stride, P = L->padding;
    const int C = L->in_c, H = L->in_h, W = L->in_w;
    const int O = L->out_c, OH = L->out_h, OW = L->out_w;
    const int R = OS_RING_ROWS(K, S);
    const size_t row_sz = (size_t)OW * O;
    int next_init = 0, next_retire = 0;
    /* slot of output row oy in the ring = oy % R, kept incrementally (no division) */
    int init_slot = 0, retire_slot = 0;

    for (int iy = 0; iy < H; iy++) {
        /* output rows this input row reaches: oy in [lo, hi] */
        int hi = (iy + P) / S;
        if (hi > OH - 1)
            hi = OH - 1;
        while (next_init <= hi) {
            os_conv_init_row(L, acc + (size_t)init_slot * row_sz);
            next_init++;
            if (++init_slot == R)
                init_slot = 0;
        }
        /* ky0 = (iy + P) % S, oy0 = (iy + P - ky0) / S: the first kernel row and its output row */
        const int ky0 = (iy + P) % S;
        const int oy0 = (iy + P - ky0) / S;
        int slot0 = next_init - 1 - oy0; /* rows back from the newest initialised row */
        slot0 = init_slot - 1 - slot0;
        while (slot0 < 0)
            slot0 += R;
        while (slot0 >= R)
            slot0 -= R;
        for (int c = 0; c < C; c++) {
            const uint8_t *inrow = in + ((size_t)c * H + iy) * W;
            int kx0 = P % S, ox0 = P / S; /* for ix = 0, updated incrementally */
            for (int ix = 0; ix < W; ix++) {
                const uint8_t f = inrow[ix];
                if (f != L->in_none) {
                    const int32_t d = L->in_decode[f];
                    int slot = slot0;
                    for (int ky = ky0, oy = oy0; ky < K && oy >= 0; ky += S, oy--) {
                        if (oy < OH) {
                            int32_t *arow = acc + (size_t)slot * row_sz;
                            const int8_t *wrow = L->weight + ((size_t)(c * K + ky) * K) * O;
                            for (int kx = kx0, ox = ox0; kx < K && ox >= 0; kx += S, ox--) {
                                if (ox < OW)
                                    os_scatter(arow + (size_t)ox * O, wrow + (size_t)kx * O, d, O);
                            }
                        }
                        if (--slot < 0)
                            slot += R;
                    }
                }
                if (++kx0 == S) {
                    kx0 = 0;
                    ox0++;
                }
            }
        }
        /* rows below lo(iy + 1) receive nothing more: fire them */
        const int t = iy + 1 + P - K + 1;
        const int lo_next = t <= 0 ? 0 : (t + S - 1) / S;
        while (next_retire < lo_next && next_retire < next_init && next_retire < OH) {
            os_conv_retire_row(L, acc + (size_t)retire_slot * row_sz, next_retire, out, logits);
            next_retire++;
            if (++retire_slot == R)
                retire_slot = 0;
        }
    }
    while (next_retire < OH) { /* bottom rows (padding only or not yet fired) */
        if (next_init <= next_retire) {
            os_conv_init_row(L, acc + (size_t)init_slot * row_sz);
            next_init++;
            if (++init_slot == R)
                init_slot = 0;
        }
        os_conv_retire_row(L, acc + (size_t)retire_slot * row_sz, next_retire, out, logits);
        next_retire++;
        if (++retire_slot == R)
            retire_slot = 0;
    }
}

static OS_NOINLINE void os_pool(const os_layer_t *L, const uint8_t *in, uint8_t *out)
{
    const int K = L->kernel, S = L->stride, P = L->padding;
    const int H = L->in_h, W = L->in_w, OH = L->out_h, OW = L->out_w;
    const uint8_t none = L->in_none;
    for (int c = 0; c < L->in_c; c++) {
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
                    int32_t acc = 0; /* padding contributes 0 */
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
            os_dense(L, in, out, m->acc, logits);
            break;
        case OS_CONV2D:
            os_conv2d(L, in, out, m->acc, logits);
            break;
        default:
            os_pool(L, in, out);
            break;
        }
        if (hook && !L->readout)
            hook(ctx, i, out, (size_t)L->out_c * L->out_h * L->out_w);
    }
    return os_argmax(logits, m->n_logits);
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
