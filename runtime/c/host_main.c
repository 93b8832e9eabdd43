/*
 * host_main.c - host-side parity runner for generated one-spike C code.
 *
 * Build: cc -std=c99 -DOS_MODEL=<sym>_model -include <sym>_model.h host_main.c <sym>_model.c onespike.c
 * Usage: host_runner IMAGES.bin N OUT.bin [--trace]
 *   IMAGES.bin: N images of uint8 pixels (C, H, W), back to back.
 *   OUT.bin:    per image: int32 logits[n_logits], int32 class; with --trace, then every layer's
 *               output phases (input phases first), as the hook delivers them.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "onespike.h"

#ifndef OS_MODEL
#error "define OS_MODEL to the generated os_model_t symbol"
#endif

static FILE *g_out;

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
    }
    fclose(fi);
    if (fclose(g_out) != 0)
        return 3;
    return 0;
}
