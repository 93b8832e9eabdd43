/* Parity / benchmark firmware: reads images over semihosting, runs the generated model, writes
 * int32 logits + class per image. os_mark() brackets each inference for instruction counting.
 *
 * images.bin: uint32 N, then N images of OS_INPUT_SIZE uint8 pixels. out.bin: per image
 * int32 logits[OS_N_LOGITS], int32 class. Built with -DOS_INFER=<sym>_infer and the sizes.
 *
 * A detector (also -DOS_DETECT=<sym>_detect -DOS_READOUT=<sym>_readout -DOS_INPUT_BUF=<sym>_input
 * -DOS_MAX_DETECTIONS=<n>) reads each image into the model's own input buffer (no copy in RAM);
 * os_mark() brackets <sym>_detect, inference and decode; after the logits and class (the argmax of
 * the readout map, outside the bracket) each record holds int32 count and count rows of 7 words:
 * class, x0, y0, x1, y1, score (low word, high word of the int64).
 *
 * A classifier-style build may define -DOS_INPUT_BUF=<fn> too (without OS_DETECT): each image is then
 * read into <fn>() (the network's own buffer, e.g. the CMSIS-NN baseline's SYM_input) and OS_INFER
 * gets that pointer, so the firmware holds no image buffer of its own. */
#include <stdint.h>

#include "semihost.h"

#ifndef OS_INFER
#error "define OS_INFER, OS_INPUT_SIZE and OS_N_LOGITS"
#endif
int OS_INFER(const uint8_t *pixels, int32_t *logits);

#ifdef OS_DETECT
#include "onespike.h"
int OS_DETECT(const uint8_t *pixels, os_detection_t *dets, int max);
const int32_t *OS_READOUT(void);
uint8_t *OS_INPUT_BUF(void);
static os_detection_t dets[OS_MAX_DETECTIONS];
static uint32_t det_out[1 + 7 * OS_MAX_DETECTIONS];
#endif

__attribute__((noinline)) void os_mark(int what)
{
    __asm__ volatile("" ::"r"(what) : "memory");
}

#ifndef OS_DETECT
#ifdef OS_INPUT_BUF
uint8_t *OS_INPUT_BUF(void);
#else
static uint8_t pixels[OS_INPUT_SIZE];
#endif
static int32_t out[OS_N_LOGITS + 1];
#endif

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
#if defined(OS_DETECT) || defined(OS_INPUT_BUF)
        /* the image goes straight into the network's own input buffer (a detector encodes it in place) */
        uint8_t *pixels = OS_INPUT_BUF();
        if (sh_read(fi, pixels, OS_INPUT_SIZE) != 0) {
#else
        if (sh_read(fi, pixels, sizeof pixels) != 0) {
#endif
            sh_puts("onespike: short read\n");
            return 2;
        }
#ifdef OS_DETECT
        os_mark(1);
        const int nd = OS_DETECT(pixels, dets, OS_MAX_DETECTIONS);
        os_mark(2);
        const int32_t *map = OS_READOUT();
        const int32_t cls = os_argmax(map, OS_N_LOGITS);
        det_out[0] = (uint32_t)nd;
        for (int k = 0; k < nd; k++) {
            uint32_t *row = det_out + 1 + 7 * k;
            const uint64_t s = (uint64_t)dets[k].score; /* modulo 2^64: defined */
            row[0] = (uint32_t)dets[k].cls, row[1] = (uint32_t)dets[k].x0, row[2] = (uint32_t)dets[k].y0;
            row[3] = (uint32_t)dets[k].x1, row[4] = (uint32_t)dets[k].y1;
            row[5] = (uint32_t)(s & 0xFFFFFFFFu), row[6] = (uint32_t)(s >> 32);
        }
        if (sh_write(fo, map, 4 * (size_t)OS_N_LOGITS) != 0 || sh_write(fo, &cls, sizeof cls) != 0 ||
            sh_write(fo, det_out, 4 * (1 + 7 * (size_t)nd)) != 0)
            return 3;
#else
        os_mark(1);
        out[OS_N_LOGITS] = OS_INFER(pixels, out);
        os_mark(2);
        if (sh_write(fo, out, sizeof out) != 0)
            return 3;
#endif
    }
    sh_close(fi);
    sh_close(fo);
    return 0;
}
