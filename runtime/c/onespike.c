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
#define OS_INLINE __inline__ __attribute__((always_inline))
#else
#define OS_NOINLINE
#define OS_INLINE
#endif

/* Targets where a 4-byte memcpy from any address is one load (not on strict-alignment cores). */
#if defined(__ARM_FEATURE_UNALIGNED) || defined(__x86_64__) || defined(__i386__) || defined(__aarch64__)
#define OS_WORD_LOADS 1
#endif


/* The first phase f with acc >= theta[f], or T (no spike). theta is non-increasing, so this is
 * the number of entries greater than acc: one compare for the common silent case, then a binary
 * search by powers of two from top (the largest power of two <= T - 1), unrolled: a step is five
 * Cortex-M4 instructions. The rows are padded by code generation (codegen/c/emit.py, theta_layout)
 * to at least 2 * top - 1 entries with copies of theta[T - 1], which no acc that got here exceeds, so
 * the search never reads past its row and never counts a pad. */
static OS_INLINE uint8_t os_fire(int32_t acc, const int32_t *theta, int T, int top)
{
    if (acc < theta[T - 1])
        return (uint8_t)T;
    const int32_t *p = theta; /* theta[0 .. p - theta - 1] > acc */
#define OS_STEP(k) if (p[(k) - 1] > acc) p += (k)
    switch (top) {
    case 128: OS_STEP(128); /* fall through */
    case 64: OS_STEP(64); /* fall through */
    case 32: OS_STEP(32); /* fall through */
    case 16: OS_STEP(16); /* fall through */
    case 8: OS_STEP(8); /* fall through */
    case 4: OS_STEP(4); /* fall through */
    case 2: OS_STEP(2); /* fall through */
    case 1: OS_STEP(1); /* fall through */
    default: break;
    }
#undef OS_STEP
    return (uint8_t)(p - theta);
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

/* Output channels per call of the accumulation kernels (their accumulators: a stack array). */
#define OS_CHUNK 64

/* The direct kernel: for each of the nblk blocks of four channels (weights w + b * wstride, biases
 * bias[4b..4b+3], zero-padded), acc = bias + the four weights at w[4 * off[e]] times d[e], over
 * every list entry e (mod 2^32). */
static OS_NOINLINE void os_events(uint32_t *acc, const int8_t *w, size_t wstride, int nblk, const int32_t *bias,
                                  const uint16_t *off, const int32_t *d, int n)
{
    for (int b = 0; b < nblk; b++, w += wstride, bias += 4, acc += 4) {
        uint32_t a0 = (uint32_t)bias[0], a1 = (uint32_t)bias[1], a2 = (uint32_t)bias[2], a3 = (uint32_t)bias[3];
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
        acc[0] = a0, acc[1] = a1, acc[2] = a2, acc[3] = a3;
    }
}

#if OS_LANES
/* ---- the phase-bucket kernel ----
 * An input spike's value is one of T table entries D[f], so for one output channel
 *     B + sum_e W[e] * D[f_e]  =  B + sum_f D[f] * (sum of the weights of the spikes of phase f).
 * The spike list is sorted by phase (a counting sort, os_bucket), and each phase bucket's weights
 * are summed four channels at a time: one 32-bit load fetches the four int8 weights of an event and
 * two SXTAB16 add them, sign-extended, into two registers of two 16-bit lanes each (channels 0, 2 and
 * 1, 3). Each lane sum is then multiplied by D[f] once and added to the channel's uint32
 * accumulator (modulo 2^32, exact as above).
 * A lane wraps modulo 2^16, so it must hold the exact sum: a bucket holds at most L->lane_max events
 * (os_bucket splits a longer phase). lane_max is proved at code generation (codegen/c/emit.py,
 * lane_max): for every output channel, the sum of its lane_max largest positive weights is at most
 * 32767 and that of its lane_max most negative weights at least -32768; the events of one list have
 * distinct inputs, so any lane_max of them sum within int16. It is at least 258 (|w| <= 127). */

/* The four bytes at p as a little-endian word (one load where the compiler merges them). */
static uint32_t os_load4(const int8_t *p)
{
    return (uint32_t)(uint8_t)p[0] | (uint32_t)(uint8_t)p[1] << 8 | (uint32_t)(uint8_t)p[2] << 16 |
           (uint32_t)(uint8_t)p[3] << 24;
}

static uint32_t os_load4u(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* byte 0 of w, sign-extended, modulo 2^32 */
static uint32_t os_sx8(uint32_t w)
{
    return ((w & 0xFFu) ^ 0x80u) - 0x80u;
}

#if defined(__ARM_FEATURE_SIMD32) && defined(__GNUC__) && !defined(__ARM_BIG_ENDIAN)
#include <arm_acle.h>
#if defined(__thumb2__)
#define OS_LANES_ASM 1 /* os_lanes' bucket loop in Thumb-2 */
#endif
/* lanes (lo, hi) += (sign-extended byte 0, byte 2) of w; the odd form: bytes 1 and 3 */
#define OS_ADD_EVEN(s, w) __sxtab16((s), (w))
static inline uint32_t os_add_odd(uint32_t s, uint32_t w)
{
    uint32_t r;
    __asm__("sxtab16 %0, %1, %2, ror #8" : "=r"(r) : "r"(s), "r"(w));
    return r;
}
#define OS_ADD_ODD(s, w) os_add_odd((s), (w))
/* byte 3, sign-extended (ASR #24) */
static inline uint32_t os_sx8_top(uint32_t w)
{
    uint32_t r;
    __asm__("asr %0, %1, #24" : "=r"(r) : "r"(w));
    return r;
}
#define OS_SX8_TOP(w) os_sx8_top(w)
/* the high lane, sign-extended (ASR #16 is an arithmetic shift on Arm) */
static inline uint32_t os_hi16(uint32_t s)
{
    uint32_t r;
    __asm__("asr %0, %1, #16" : "=r"(r) : "r"(s));
    return r;
}
#else
/* SXTAB16 read in C: each 16-bit lane of s plus a sign-extended byte of w, modulo 2^16 */
static uint32_t os_sxtab16(uint32_t s, uint32_t w)
{
    return ((s + os_sx8(w)) & 0xFFFFu) | (((s >> 16) + os_sx8(w >> 16)) & 0xFFFFu) << 16;
}
#define OS_ADD_EVEN(s, w) os_sxtab16((s), (w))
#define OS_ADD_ODD(s, w) os_sxtab16((s), (w) >> 8)
#define OS_SX8_TOP(w) os_sx8((w) >> 24)
static uint32_t os_hi16(uint32_t s)
{
    return ((s >> 16) ^ 0x8000u) - 0x8000u;
}
#endif
#ifndef OS_LANES_ASM
/* the low lane, sign-extended, modulo 2^32 (compiles to SXTH) */
static uint32_t os_lo16(uint32_t s)
{
    return ((s & 0xFFFFu) ^ 0x8000u) - 0x8000u;
}
#endif

/* The phase-bucket kernel: for each of the nblk blocks (as os_events), acc = bias + sum over the nb
 * buckets k (entries bk[k - 1].end .. bk[k].end - 1 of sorted, each at most lane_max long) of bk[k].d times the sum of the bucket's weights, plus the ns single spikes of a phase that
 * follow them in sorted (values sd[0..ns-1]), one multiply-accumulate each as in os_events. */
static OS_NOINLINE void os_lanes(uint32_t *acc, const int8_t *w, size_t wstride, int nblk, const int32_t *bias,
                                 const uint16_t *sorted, const os_bucket_t *bk, int nb, int nwide,
                                 const uint16_t *singles, const int32_t *sd, int ns)
{
    const os_bucket_t *const bk_last = bk + nb;
    for (int b = 0; b < nblk; b++, w += wstride, bias += 4, acc += 4) {
        uint32_t a0 = (uint32_t)bias[0], a1 = (uint32_t)bias[1], a2 = (uint32_t)bias[2], a3 = (uint32_t)bias[3];
        const uint16_t *p = sorted;
#ifdef OS_LANES_ASM
        /* the loops below, in Thumb-2: a bucket costs 15 instructions (19 with an odd count), 11 when
         * its value fits int16 (SMLABB / SMLATB: no lane extraction), and two events 10; the
         * compiler's reading of the C spills around the event loop */
        const os_bucket_t *k = bk, *const bk_wide = bk + nwide;
        uint32_t s02, s13, t, d;
        const uint16_t *pe;
#define OS_BUCKET_SUMS                                  \
        "ldrd %[pe], %[d], [%[k]], #8\n\t"             \
        "movs %[s02], #0\n\t"                           \
        "movs %[s13], #0\n\t"                           \
        "subs %[t], %[pe], %[p]\n\t"                    \
        "tst %[t], #2\n\t"                              \
        "beq 2f\n\t"                                    \
        "ldrh %[t], [%[p]], #2\n\t"                     \
        "ldr %[t], [%[w], %[t], lsl #2]\n\t"            \
        "sxtab16 %[s02], %[s02], %[t]\n\t"              \
        "sxtab16 %[s13], %[s13], %[t], ror #8\n\t"      \
        "2:\n\t"                                        \
        "cmp %[p], %[pe]\n\t"                           \
        "beq 3f\n\t"                                    \
        "4:\n\t"                                        \
        "ldrh %[t], [%[p]], #2\n\t"                     \
        "ldr %[t], [%[w], %[t], lsl #2]\n\t"            \
        "sxtab16 %[s02], %[s02], %[t]\n\t"              \
        "sxtab16 %[s13], %[s13], %[t], ror #8\n\t"      \
        "ldrh %[t], [%[p]], #2\n\t"                     \
        "ldr %[t], [%[w], %[t], lsl #2]\n\t"            \
        "sxtab16 %[s02], %[s02], %[t]\n\t"              \
        "sxtab16 %[s13], %[s13], %[t], ror #8\n\t"      \
        "cmp %[p], %[pe]\n\t"                           \
        "bne 4b\n\t"                                    \
        "3:\n\t"
#define OS_BUCKET_OPERANDS                                                                                    \
        : [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2), [a3] "+r"(a3), [p] "+r"(p), [k] "+r"(k),               \
          [s02] "=&r"(s02), [s13] "=&r"(s13), [t] "=&r"(t), [d] "=&r"(d), [pe] "=&r"(pe)                      \
        : [w] "r"(w), [kend] "r"(kend)                                                                        \
        : "cc", "memory"
        if (nwide > 0) {
            const os_bucket_t *const kend = bk_wide;
            __asm__ volatile(
                "1:\n\t" OS_BUCKET_SUMS
                "sxth %[t], %[s02]\n\t"
                "mla %[a0], %[t], %[d], %[a0]\n\t"
                "asrs %[t], %[s02], #16\n\t"
                "mla %[a2], %[t], %[d], %[a2]\n\t"
                "sxth %[t], %[s13]\n\t"
                "mla %[a1], %[t], %[d], %[a1]\n\t"
                "asrs %[t], %[s13], #16\n\t"
                "mla %[a3], %[t], %[d], %[a3]\n\t"
                "cmp %[k], %[kend]\n\t"
                "bne 1b\n\t"
                OS_BUCKET_OPERANDS);
        }
        if (nb > nwide) {
            const os_bucket_t *const kend = bk_last;
            __asm__ volatile(
                "1:\n\t" OS_BUCKET_SUMS
                "smlabb %[a0], %[s02], %[d], %[a0]\n\t"
                "smlatb %[a2], %[s02], %[d], %[a2]\n\t"
                "smlabb %[a1], %[s13], %[d], %[a1]\n\t"
                "smlatb %[a3], %[s13], %[d], %[a3]\n\t"
                "cmp %[k], %[kend]\n\t"
                "bne 1b\n\t"
                OS_BUCKET_OPERANDS);
        }
#undef OS_BUCKET_SUMS
#undef OS_BUCKET_OPERANDS
#else
        (void)nwide;
        for (const os_bucket_t *k = bk; k != bk_last; k++) {
            const uint32_t d = (uint32_t)k->d;
            const uint16_t *const pe = k->end; /* buckets are never empty */
            uint32_t s02 = 0, s13 = 0;
            if ((pe - p) & 1) {
                const uint32_t x = os_load4(w + 4 * (size_t)*p++);
                s02 = OS_ADD_EVEN(s02, x);
                s13 = OS_ADD_ODD(s13, x);
            }
            for (; p != pe; p += 2) {
                const uint32_t x = os_load4(w + 4 * (size_t)p[0]), y = os_load4(w + 4 * (size_t)p[1]);
                s02 = OS_ADD_EVEN(s02, x);
                s13 = OS_ADD_ODD(s13, x);
                s02 = OS_ADD_EVEN(s02, y);
                s13 = OS_ADD_ODD(s13, y);
            }
            a0 += OS_MULU(os_lo16(s02), d);
            a2 += OS_MULU(os_hi16(s02), d);
            a1 += OS_MULU(os_lo16(s13), d);
            a3 += OS_MULU(os_hi16(s13), d);
        }
#endif
        for (int e = 0; e < ns; e++) {
            const uint32_t x = os_load4(w + 4 * (size_t)singles[-e]), d = (uint32_t)sd[e];
            a0 += OS_MULU(os_sx8(x), d);
            a1 += OS_MULU(os_sx8(x >> 8), d);
            a2 += OS_MULU(os_sx8(x >> 16), d);
            a3 += OS_MULU(OS_SX8_TOP(x), d);
        }
        acc[0] = a0, acc[1] = a1, acc[2] = a2, acc[3] = a3;
    }
}

/* The bucket plan of a counting sort by phase, from the counts bk_pos[f] (f < T) of n spikes: the
 * phases with two or more spikes get places from the front of ev_sorted, bucket by bucket (bk: end,
 * D[f]; a phase of more than lane_max spikes split into several), those with one spike from the back
 * (place n - 1 - s for the s-th, its value D[f] in bk_sd[s]). bk_pos[f] becomes the place of the
 * phase's first spike. Returns the number of buckets; *ns: of single spikes (places n - ns .. n - 1);
 * *nwide: of the first buckets, those whose D[f] exceeds int16 (the others' are below it). */
static int os_bucket_plan(const os_model_t *m, int n, int T, const int32_t *dec, uint32_t lane_max, int *ns,
                          int *nwide)
{
    uint32_t *pos = m->bk_pos, at = 0, single = (uint32_t)n;
    int nb = 0;
    *nwide = 0;
    for (int f = 0; f < T; f++) {
        const uint32_t c = pos[f];
        if (c > 1) {
            pos[f] = at;
            for (uint32_t left = c; left; ) { /* pieces of at most lane_max */
                const uint32_t piece = left > lane_max ? lane_max : left;
                at += piece, left -= piece;
                m->bk[nb].end = m->ev_sorted + at;
                m->bk[nb++].d = dec[f];
            }
            /* the specification's decode tables are positive and non-increasing (runtime.spec.validate):
             * the buckets beyond int16 are the first ones */
            if (dec[f] > 32767)
                *nwide = nb;
        } else if (c) {
            pos[f] = --single;
            m->bk_sd[n - 1 - single] = dec[f];
        }
    }
    *ns = n - (int)single;
    return nb;
}

/* The counting sort of n listed entries (offset off[e] - adj modulo 2^16, phase ph[e]) whose phase
 * counts are in bk_pos: the plan, the offsets into ev_sorted, and bk_pos back to all zero. */
static int os_bucket(const os_model_t *m, const uint16_t *off, const uint8_t *ph, int n, unsigned adj, int T,
                     const int32_t *dec, uint32_t lane_max, int *ns, int *nwide)
{
    uint32_t *pos = m->bk_pos;
    const int nb = os_bucket_plan(m, n, T, dec, lane_max, ns, nwide);
    for (int e = 0; e < n; e++)
        m->ev_sorted[pos[ph[e]]++] = (uint16_t)(off[e] - adj);
    for (int e = 0; e < n; e++)
        pos[ph[e]] = 0;
    return nb;
}
#endif /* OS_LANES */

/* One receptive field's spike list: direct entries (ev_off, ev_d, n) or, when nb >= 0, the phase
 * buckets in m's scratch. */
typedef struct {
    int n;
    int nb; /* -1: direct */
    int ns; /* single spikes after the buckets */
    int nwide; /* the first buckets, whose D[f] lies outside int16 */
} os_list_t;

/* Accumulate every output channel of one receptive field over its spike list, OS_CHUNK channels at a
 * time, then fire them (output index out_index + c * out_stride) or write them as logits. */
static void os_field_out(const os_model_t *m, const os_layer_t *L, const int8_t *weight, size_t wstride, os_list_t ls,
                         size_t out_index, size_t out_stride, uint8_t *out, int32_t *logits)
{
    const int O = (int)L->out_c, T = L->T;
    uint32_t acc[OS_CHUNK];
    for (int c0 = 0; c0 < O; c0 += OS_CHUNK) {
        const int nc = O - c0 < OS_CHUNK ? O - c0 : OS_CHUNK;
        const int8_t *w = weight + (size_t)(c0 / 4) * wstride;
#if OS_LANES
        if (ls.nb >= 0)
            os_lanes(acc, w, wstride, (nc + 3) / 4, L->bias + c0, m->ev_sorted, m->bk, ls.nb, ls.nwide,
                     m->ev_sorted + (ls.ns ? ls.n - 1 : 0), m->bk_sd, ls.ns);
        else
#endif
            os_events(acc, w, wstride, (nc + 3) / 4, L->bias + c0, m->ev_off, m->ev_d, ls.n);
        if (L->readout) {
            for (int c = 0; c < nc; c++)
                logits[out_index + (size_t)(c0 + c) * out_stride] = os_s32(acc[c]);
        } else {
            const int row = L->theta_row, top = L->theta_top; /* locals: the byte stores below may alias *L */
            const int32_t *th = L->theta + (size_t)c0 * row;
            uint8_t *o = out + out_index + (size_t)c0 * out_stride;
            for (int c = 0; c < nc; c++, th += row, o += out_stride)
                *o = os_fire(os_s32(acc[c]), th, T, top);
        }
    }
}

static OS_NOINLINE void os_dense(const os_model_t *m, const os_layer_t *L, const uint8_t *in, uint8_t *out,
                                 int32_t *logits)
{
    const int n_in = (int)(L->in_c * L->in_h * L->in_w); /* <= 2^20 (runtime.spec.MAX_NEURONS) */
    const uint8_t none = L->in_none;
    uint16_t *off = m->ev_off;
    os_list_t ls = { 0, -1, 0, 0 };
    int n = 0;
#if OS_LANES
    if (L->lane_max) {
        /* sorted straight from the input, in two passes (no list: the widest dense fan-in sets the
         * RAM); four silent inputs cost one compare */
        uint32_t *cnt = m->bk_pos;
        uint16_t *sorted = m->ev_sorted;
        const uint32_t none4 = none * 0x01010101u;
        int j = 0;
        for (; j + 4 <= n_in; j += 4) {
            const uint32_t x = os_load4u(in + j);
            if (x != none4)
                for (int k = 0; k < 32; k += 8)
                    if ((uint8_t)(x >> k) != none)
                        cnt[(uint8_t)(x >> k)]++, n++;
        }
        for (; j < n_in; j++)
            if (in[j] != none)
                cnt[in[j]]++, n++;
        ls.nb = os_bucket_plan(m, n, none, L->in_decode, L->lane_max, &ls.ns, &ls.nwide);
        for (j = 0; j + 4 <= n_in; j += 4) {
            const uint32_t x = os_load4u(in + j);
            if (x != none4)
                for (int k = 0; k < 4; k++)
                    if ((uint8_t)(x >> 8 * k) != none)
                        sorted[cnt[(uint8_t)(x >> 8 * k)]++] = (uint16_t)(j + k);
        }
        for (; j < n_in; j++)
            if (in[j] != none)
                sorted[cnt[in[j]]++] = (uint16_t)j;
        for (int f = 0; f < none; f++)
            cnt[f] = 0;
    } else
#endif
    {
        int32_t *d = m->ev_d;
        for (int j = 0; j < n_in; j++) {
            const uint8_t f = in[j];
            if (f != none) {
                off[n] = (uint16_t)j;
                d[n++] = L->in_decode[f];
            }
        }
    }
    ls.n = n;
    os_field_out(m, L, L->weight, 4 * (size_t)n_in, ls, 0, 1, out, logits);
}

/* conv2d, one output row at a time. The band of input rows that row reads (every channel) is listed
 * once, column by column, as (offset, phase) entries whose offset (c * K + ky) * K + x holds the
 * absolute column x; the spikes of the window at x0 are then the contiguous slice of columns
 * max(x0, 0) .. min(x0 + K, W) - 1, and offset - x0 (modulo 2^16: the true value is a weight offset,
 * 0 .. C * K * K - 1) is the weight offset in the window. Each input is read once per output row, not
 * once per window. */
static OS_NOINLINE void os_conv2d(const os_model_t *m, const os_layer_t *L, const uint8_t *in, uint8_t *out,
                                  int32_t *logits)
{
    const int K = L->kernel, S = L->stride, P = L->padding;
    const int C = (int)L->in_c, H = (int)L->in_h, W = (int)L->in_w;
    const int OH = (int)L->out_h, OW = (int)L->out_w;
    const uint8_t none = L->in_none;
    const size_t rf = (size_t)C * K * K;
    const size_t plane = (size_t)OH * OW;
    const size_t cstride = (size_t)H * W;
    uint16_t *const boff = m->band_off;
    uint8_t *const bph = m->band_ph;
    uint32_t *const col = m->band_col;
    /* a window without spikes: every accumulator is its bias, so the outputs are the same each time */
    const int O = (int)L->out_c;
    uint8_t empty[OS_CHUNK];
    int have_empty = 0;
    for (int oy = 0; oy < OH; oy++) {
        const int y0 = oy * S - P;
        const int ky_lo = y0 < 0 ? -y0 : 0, ky_hi = y0 + K > H ? H - y0 : K;
        const int rows = ky_hi - ky_lo;
        uint32_t nband = 0;
        for (int x = 0; x < W; x++) {
            col[x] = nband;
            const uint8_t *px = in + (size_t)(y0 + ky_lo) * W + x;
            for (int c = 0; c < C; c++, px += cstride) {
                const uint8_t *q = px;
                unsigned o = (unsigned)((c * K + ky_lo) * K + x);
                for (int r = 0; r < rows; r++, q += W, o += (unsigned)K) {
                    const uint8_t f = *q;
                    if (f != none) {
                        boff[nband] = (uint16_t)o; /* modulo 2^16 */
                        bph[nband++] = f;
                    }
                }
            }
        }
        col[W] = nband;
        for (int ox = 0; ox < OW; ox++) {
            const int x0 = ox * S - P;
            const int xa = x0 < 0 ? 0 : x0, xb = x0 + K > W ? W : x0 + K;
            const uint32_t e0 = col[xa];
            const int n = (int)(col[xb] - e0);
            const unsigned adj = (unsigned)x0 & 0xFFFFu; /* x0 modulo 2^16 */
            if (n == 0 && !L->readout && O <= OS_CHUNK) {
                if (!have_empty) {
                    for (int c = 0; c < O; c++)
                        empty[c] = os_fire(L->bias[c], L->theta + (size_t)c * L->theta_row, L->T, L->theta_top);
                    have_empty = 1;
                }
                uint8_t *o = out + (size_t)oy * OW + ox;
                for (int c = 0; c < O; c++, o += plane)
                    *o = empty[c];
                continue;
            }
            os_list_t ls = { n, -1, 0, 0 };
#if OS_LANES
            if (L->lane_max) {
                uint32_t *cnt = m->bk_pos;
                for (int e = 0; e < n; e++)
                    cnt[bph[e0 + e]]++;
                ls.nb = os_bucket(m, boff + e0, bph + e0, n, adj, none, L->in_decode, L->lane_max, &ls.ns, &ls.nwide);
            } else
#endif
            {
                uint16_t *off = m->ev_off;
                int32_t *d = m->ev_d;
                for (int e = 0; e < n; e++) {
                    off[e] = (uint16_t)(boff[e0 + e] - adj);
                    d[e] = L->in_decode[bph[e0 + e]];
                }
            }
            os_field_out(m, L, L->weight, 4 * rf, ls, (size_t)oy * OW + ox, plane, out, logits);
        }
    }
}

static OS_NOINLINE void os_pool(const os_layer_t *L, const uint8_t *in, uint8_t *out)
{
    const int K = L->kernel, S = L->stride, P = L->padding;
    const int C = (int)L->in_c, H = (int)L->in_h, W = (int)L->in_w, OH = (int)L->out_h, OW = (int)L->out_w;
    const uint8_t none = L->in_none;
    if (L->kind == OS_MAXPOOL && K == 2 && S == 2 && P == 0) {
        /* the common 2x2 max-pool: every window inside the input (2 * OH <= H, 2 * OW <= W) */
        for (int c = 0; c < C; c++) {
            const uint8_t *inc = in + (size_t)c * H * W;
            uint8_t *o = out + (size_t)c * OH * OW;
            for (int oy = 0; oy < OH; oy++) {
                const uint8_t *r0 = inc + (size_t)(2 * oy) * W, *r1 = r0 + W;
                for (int ox = 0; ox < OW; ox++) {
                    const uint8_t a = r0[2 * ox] < r0[2 * ox + 1] ? r0[2 * ox] : r0[2 * ox + 1];
                    const uint8_t b = r1[2 * ox] < r1[2 * ox + 1] ? r1[2 * ox] : r1[2 * ox + 1];
                    *o++ = a < b ? a : b;
                }
            }
        }
        return;
    }
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
                    outc[oy * OW + ox] = os_fire(acc, L->theta + (size_t)c * L->theta_row, L->T, L->theta_top);
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
            os_dense(m, L, in, out, logits);
            break;
        case OS_CONV2D:
            os_conv2d(m, L, in, out, logits);
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
