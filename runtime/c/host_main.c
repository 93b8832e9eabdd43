/*
 * host_main.c - host-side parity runner for generated one-spike C code.
 *
 * Build: cc -std=c99 -DOS_MODEL=<sym>_model -include <sym>_model.h host_main.c <sym>_model.c onespike.c
 * Usage: host_runner IMAGES.bin N OUT.bin [--trace]
 *   IMAGES.bin: N images of uint8 pixels (C, H, W), back to back.
 *   OUT.bin:    per image: int32 logits[n_logits], int32 class; with --trace, then every layer's
 *               output phases (input phases first), as the hook delivers them; for a detector
 *               (built with -DOS_DETECT=<sym>_detect -DOS_DETECT_LOGITS=<sym>_detect_logits
 *               -DOS_READOUT=<sym>_readout -DOS_INPUT_BUF=<sym>_input -DOS_MAX_DETECTIONS=<n>), then int32 count and count rows
 *               of 7 int32: class, x0, y0, x1, y1, score (low word, high word of the int64).
 * A detector's runner also checks that <sym>_detect (inference + decode in one call) gives the
 * same readout map and detections as os_infer + <sym>_detect_logits, and that a smaller max gives
 * a prefix of the list (exit 4 otherwise).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "onespike.h"

#ifndef OS_MODEL
#error "define OS_MODEL to the generated os_model_t symbol"
#endif

static FILE *g_out;

#ifdef OS_DETECT
int OS_DETECT(const uint8_t *pixels, os_detection_t *dets, int max);
int OS_DETECT_LOGITS(const int32_t *logits, os_detection_t *dets, int max);
const int32_t *OS_READOUT(void);
uint8_t *OS_INPUT_BUF(void);

static int same_detection(const os_detection_t *a, const os_detection_t *b)
{
    return a->cls == b->cls && a->x0 == b->x0 && a->y0 == b->y0 && a->x1 == b->x1 && a->y1 == b->y1 && a->score == b->score;
}

/* Decode the logits, cross-check the one-call API, write count + rows; 0 on success. */
static int write_detections(long image, const os_model_t *m, const uint8_t *pixels, const int32_t *logits)
{
    static os_detection_t dets[OS_MAX_DETECTIONS], again[OS_MAX_DETECTIONS];
    const int n = OS_DETECT_LOGITS(logits, dets, OS_MAX_DETECTIONS);
    /* the one-call API from the model's own input buffer, encoded in place (how firmware uses it) */
    memcpy(OS_INPUT_BUF(), pixels, (size_t)m->in_c * m->in_h * m->in_w);
    const int n2 = OS_DETECT(OS_INPUT_BUF(), again, OS_MAX_DETECTIONS);
    int ok = n >= 0 && n <= OS_MAX_DETECTIONS && n2 == n && memcmp(OS_READOUT(), logits, sizeof(int32_t) * m->n_logits) == 0;
    for (int k = 0; ok && k < n; k++)
        ok = same_detection(&dets[k], &again[k]);
    if (ok && n > 0) { /* a smaller max: the first max detections */
        ok = OS_DETECT_LOGITS(logits, again, n - 1) == n - 1;
        for (int k = 0; ok && k < n - 1; k++)
            ok = same_detection(&dets[k], &again[k]);
    }
    if (!ok) {
        fprintf(stderr, "host_runner: image %ld: the detect API calls disagree\n", image);
        return 4;
    }
    uint32_t row[7]; /* little-endian words on the host; signed -> unsigned conversion is defined */
    const int32_t count = n;
    if (fwrite(&count, sizeof count, 1, g_out) != 1)
        return 3;
    for (int k = 0; k < n; k++) {
        const uint64_t s = (uint64_t)dets[k].score; /* modulo 2^64: defined */
        row[0] = (uint32_t)dets[k].cls, row[1] = (uint32_t)dets[k].x0, row[2] = (uint32_t)dets[k].y0;
        row[3] = (uint32_t)dets[k].x1, row[4] = (uint32_t)dets[k].y1;
        row[5] = (uint32_t)(s & 0xFFFFFFFFu), row[6] = (uint32_t)(s >> 32);
        if (fwrite(row, sizeof row, 1, g_out) != 1)
            return 3;
    }
    return 0;
}
#endif

static void trace_hook(void *ctx, int layer, const uint8_t *phases, size_t n)
{
    (void)ctx;
    (void)layer;
    if (fwrite(phases, 1, n, g_out) != n) {
        fprintf(stderr, "host_runner: write failed\n");
        exit(3);
    }
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s IMAGES.bin N OUT.bin [--trace]\n", argv[0]);
        return 2;
    }
    const os_model_t *m = &OS_MODEL;
    const size_t in_size = (size_t)m->in_c * m->in_h * m->in_w;
    const long n = strtol(argv[2], NULL, 10);
    const int trace = argc > 4 && strcmp(argv[4], "--trace") == 0;
    FILE *fi = fopen(argv[1], "rb");
    g_out = fopen(argv[3], "wb");
    if (!fi || !g_out || n < 0) {
        fprintf(stderr, "host_runner: cannot open files\n");
        return 2;
    }
    /* the spec's limit on any activation (runtime.spec.MAX_NEURONS): inputs and logits */
    static uint8_t pixels[1 << 20];
    static int32_t logits[1 << 20];
    if (in_size > sizeof pixels || m->n_logits > sizeof logits / sizeof logits[0]) {
        fprintf(stderr, "host_runner: model too large for the runner\n");
        return 2;
    }
    for (long i = 0; i < n; i++) {
        if (fread(pixels, 1, in_size, fi) != in_size) {
            fprintf(stderr, "host_runner: short read at image %ld\n", i);
            return 2;
        }
        /* logits first, then the trace: write into a temporary order-preserving layout */
        int cls;
        if (trace) {
            long pos = ftell(g_out);
            int32_t zero[1] = {0};
            for (uint32_t k = 0; k <= m->n_logits; k++)
                fwrite(zero, sizeof zero, 1, g_out); /* placeholder for logits + class */
            cls = os_infer(m, pixels, logits, trace_hook, NULL);
            long end = ftell(g_out);
            fseek(g_out, pos, SEEK_SET);
            fwrite(logits, sizeof(int32_t), (size_t)m->n_logits, g_out);
            int32_t c32 = cls;
            fwrite(&c32, sizeof c32, 1, g_out);
            fseek(g_out, end, SEEK_SET);
        } else {
            cls = os_infer(m, pixels, logits, NULL, NULL);
            fwrite(logits, sizeof(int32_t), (size_t)m->n_logits, g_out);
            int32_t c32 = cls;
            fwrite(&c32, sizeof c32, 1, g_out);
        }
#ifdef OS_DETECT
        const int rc = write_detections(i, m, pixels, logits);
        if (rc != 0)
            return rc;
#endif
    }
    fclose(fi);
    if (fclose(g_out) != 0)
        return 3;
    return 0;
}
