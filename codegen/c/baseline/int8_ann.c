/* int8_ann.c - BASELINE ONLY (see int8_ann.h): a plain, dense int8 ANN in C99. */
#include "int8_ann.h"

#if defined(__GNUC__)
#define I8_NOINLINE __attribute__((noinline))
#else
#define I8_NOINLINE
#endif

static uint8_t requant(int32_t acc, int32_t mult, int shift)
{
    int64_t v = (int64_t)acc * mult + ((int64_t)1 << (shift - 1));
    v >>= shift;
    if (v < 0)
        return 0;
    if (v > 255)
        return 255;
    return (uint8_t)v;
}

static I8_NOINLINE void dense(const i8_layer_t *L, const uint8_t *in, uint8_t *out, int32_t *logits)
{
    const int n_in = (int)L->in_c * L->in_h * L->in_w;
    for (int o = 0; o < L->out_c; o++) {
        const int8_t *w = L->weight + (long)o * n_in;
        int32_t acc = L->bias[o];
        for (int j = 0; j < n_in; j++)
            acc += (int32_t)w[j] * in[j];
        if (L->readout)
            logits[o] = acc;
        else
            out[o] = requant(acc, L->mult[o], L->shift[o]);
    }
}

static I8_NOINLINE void conv2d(const i8_layer_t *L, const uint8_t *in, uint8_t *out, int32_t *logits)
{
    const int K = L->kernel, S = L->stride, P = L->padding, H = L->in_h, W = L->in_w;
    for (int o = 0; o < L->out_c; o++) {
        for (int oy = 0; oy < L->out_h; oy++) {
            const int y0 = oy * S - P;
            const int ky_lo = y0 < 0 ? -y0 : 0, ky_hi = y0 + K > H ? H - y0 : K;
            for (int ox = 0; ox < L->out_w; ox++) {
                const int x0 = ox * S - P;
                const int kx_lo = x0 < 0 ? -x0 : 0, kx_hi = x0 + K > W ? W - x0 : K;
                int32_t acc = L->bias[o];
                const int nkx = kx_hi - kx_lo;
                for (int c = 0; c < L->in_c; c++) {
                    const int8_t *w = L->weight + (((long)o * L->in_c + c) * K + ky_lo) * K + kx_lo;
                    const uint8_t *x = in + ((long)c * H + y0 + ky_lo) * W + x0 + kx_lo;
                    for (int ky = ky_lo; ky < ky_hi; ky++, w += K, x += W) {
                        const int8_t *wp = w;
                        const uint8_t *xp = x;
                        for (int k = 0; k < nkx; k++)
                            acc += (int32_t)*wp++ * *xp++;
                    }
                }
                const long idx = ((long)o * L->out_h + oy) * L->out_w + ox;
                if (L->readout)
                    logits[idx] = acc;
                else
                    out[idx] = requant(acc, L->mult[o], L->shift[o]);
            }
        }
    }
}

static I8_NOINLINE void maxpool(const i8_layer_t *L, const uint8_t *in, uint8_t *out)
{
    const int K = L->kernel, S = L->stride, P = L->padding, H = L->in_h, W = L->in_w;
    for (int c = 0; c < L->in_c; c++)
        for (int oy = 0; oy < L->out_h; oy++)
            for (int ox = 0; ox < L->out_w; ox++) {
                uint8_t best = 0; /* inputs are post-ReLU, >= 0 */
                for (int ky = 0; ky < K; ky++)
                    for (int kx = 0; kx < K; kx++) {
                        const int iy = oy * S - P + ky, ix = ox * S - P + kx;
                        if (iy >= 0 && iy < H && ix >= 0 && ix < W && in[((long)c * H + iy) * W + ix] > best)
                            best = in[((long)c * H + iy) * W + ix];
                    }
                out[((long)c * L->out_h + oy) * L->out_w + ox] = best;
            }
}

int i8_infer(const i8_model_t *m, const uint8_t *pixels, int32_t *logits)
{
    const uint8_t *in = pixels;
    for (int i = 0; i < m->n_layers; i++) {
        const i8_layer_t *L = &m->layers[i];
        if (i > 0)
            in = m->buf[L->in_buf];
        uint8_t *out = m->buf[L->out_buf];
        if (L->kind == I8_DENSE)
            dense(L, in, out, logits);
        else if (L->kind == I8_CONV2D)
            conv2d(L, in, out, logits);
        else
            maxpool(L, in, out);
    }
    int best = 0;
    for (int k = 1; k < m->n_logits; k++)
        if (logits[k] > logits[best])
            best = k;
    return best;
}
