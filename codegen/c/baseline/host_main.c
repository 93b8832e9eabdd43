/* host_main.c - BASELINE host runner: IMAGES.bin N OUT.bin -> per image int32 logits, int32 class. */
#include <stdio.h>
#include <stdlib.h>

#include "int8_ann.h"

extern const i8_model_t I8_MODEL;

int main(int argc, char **argv)
{
    if (argc < 4)
        return 2;
    const i8_model_t *m = &I8_MODEL;
    const i8_layer_t *L0 = &m->layers[0];
    const size_t in_size = (size_t)L0->in_c * L0->in_h * L0->in_w;
    long n = strtol(argv[2], NULL, 10);
    FILE *fi = fopen(argv[1], "rb"), *fo = fopen(argv[3], "wb");
    static uint8_t px[1 << 20];
    static int32_t out[65536 + 1];
    if (!fi || !fo || in_size > sizeof px)
        return 2;
    for (long i = 0; i < n; i++) {
        if (fread(px, 1, in_size, fi) != in_size)
            return 2;
        out[m->n_logits] = i8_infer(m, px, out);
        fwrite(out, sizeof(int32_t), (size_t)m->n_logits + 1, fo);
    }
    fclose(fi);
    return fclose(fo) == 0 ? 0 : 3;
}
