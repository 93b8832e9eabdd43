/* Parity / benchmark firmware: reads images over semihosting, runs the generated model, writes
 * int32 logits + class per image. os_mark() brackets each inference for instruction counting.
 *
 * images.bin: uint32 N, then N images of OS_INPUT_SIZE uint8 pixels. out.bin: per image
 * int32 logits[OS_N_LOGITS], int32 class. Built with -DOS_INFER=<sym>_infer and the sizes. */
#include <stdint.h>

#include "semihost.h"

#ifndef OS_INFER
#error "define OS_INFER, OS_INPUT_SIZE and OS_N_LOGITS"
#endif
int OS_INFER(const uint8_t *pixels, int32_t *logits);

__attribute__((noinline)) void os_mark(int what)
{
    __asm__ volatile("" ::"r"(what) : "memory");
}

static uint8_t pixels[OS_INPUT_SIZE];
static int32_t out[OS_N_LOGITS + 1];

int main(void)
{
    int fi = sh_open("images.bin", 1);
    int fo = sh_open("out.bin", 5);
    uint32_t n = 0;
    if (fi < 0 || fo < 0 || sh_read(fi, &n, sizeof n) != 0) {
        sh_puts("onespike: cannot open images.bin / out.bin\n");
        return 2;
    }
    for (uint32_t i = 0; i < n; i++) {
        if (sh_read(fi, pixels, sizeof pixels) != 0) {
            sh_puts("onespike: short read\n");
            return 2;
        }
        os_mark(1);
        out[OS_N_LOGITS] = OS_INFER(pixels, out);
        os_mark(2);
        if (sh_write(fo, out, sizeof out) != 0)
            return 3;
    }
    sh_close(fi);
    sh_close(fo);
    return 0;
}
