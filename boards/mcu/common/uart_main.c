/* UART inference firmware: the device side of the onespike device protocol (docs/protocol.md) over
 * the board's UART (board_uart.h; boards/mcu/<board>/uart.c), polling, no interrupt but SysTick.
 *
 * Loop: every received byte goes to os_proto_feed; while none arrives os_proto_tick runs the
 * inter-byte timeout. An INFO request gets the INFO reply; an INFER (the pixels are already in the
 * model's own input buffer, stored in (C, H, W) order as they arrive: no second image buffer) runs
 * the model and gets a RESULT: the logits and class of a classifier, or the detections of a detector
 * (NAME_detect; class = the argmax of its readout map, as fw_main.c computes it). Every bad frame
 * gets its ERROR reply and the parser hunts for the next magic.
 *
 * Time: SysTick on the processor clock (OS_CLOCK_HZ) interrupts every millisecond (the protocol's
 * millisecond clock); the device cycles of an inference are SysTick ticks between its start and end
 * (milliseconds * OS_CLOCK_HZ / 1000 plus the current count), reported in the RESULT (flag CYCLES).
 * Under QEMU SysTick runs on QEMU's virtual clock (host time without -icount): the figure is the
 * emulated time at OS_CLOCK_HZ, not a cycle count of real silicon.
 *
 * Built with (codegen emit --target c --firmware uart): -DOS_INFER=<sym>_infer
 * -DOS_INPUT_BUF=<sym>_input -DOS_INPUT_C/H/W=... -DOS_N_LOGITS=... -DOS_CLOCK_HZ=... -DOS_BAUD=...
 * -DOS_TIMEOUT_MS=... -DOS_MODEL_SHA256=0x..,0x..(32 bytes) -DOS_MODEL_NAME='"name"'
 * -DOS_BOARD_NAME='"board"'; a detector also -DOS_DETECT=<sym>_detect -DOS_READOUT=<sym>_readout
 * -DOS_MAX_DETECTIONS=<n>. */
#include <stdint.h>

#include "board_uart.h"
#include "onespike.h"
#include "protocol.h"

#if !defined(OS_INFER) || !defined(OS_INPUT_BUF) || !defined(OS_INPUT_C) || !defined(OS_INPUT_H) || \
    !defined(OS_INPUT_W) || !defined(OS_N_LOGITS) || !defined(OS_MODEL_SHA256)
#error "define OS_INFER, OS_INPUT_BUF, OS_INPUT_C/H/W, OS_N_LOGITS and OS_MODEL_SHA256"
#endif
#ifndef OS_CLOCK_HZ
#define OS_CLOCK_HZ 25000000u
#endif
#ifndef OS_BAUD
#define OS_BAUD 115200u
#endif
#ifndef OS_TIMEOUT_MS
#define OS_TIMEOUT_MS 100u
#endif
#ifndef OS_MODEL_NAME
#define OS_MODEL_NAME ""
#endif
#ifndef OS_BOARD_NAME
#define OS_BOARD_NAME ""
#endif

#define OS_INPUT_BYTES ((uint32_t)(OS_INPUT_C) * (uint32_t)(OS_INPUT_H) * (uint32_t)(OS_INPUT_W))

int OS_INFER(const uint8_t *pixels, int32_t *logits);
uint8_t *OS_INPUT_BUF(void);

#ifdef OS_DETECT
int OS_DETECT(const uint8_t *pixels, os_detection_t *dets, int max);
const int32_t *OS_READOUT(void);
static os_detection_t dets[OS_MAX_DETECTIONS];
#else
static int32_t logits[OS_N_LOGITS];
#endif

/* ---- SysTick: the millisecond clock and the cycle count ---- */

#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)
#define TICK_CYCLES ((uint32_t)(OS_CLOCK_HZ) / 1000u)

static volatile uint32_t ms_ticks;

void os_systick_handler(void);
void os_systick_handler(void)
{
    ms_ticks++;
}

static void systick_init(void)
{
    SYST_CSR = 0;
    SYST_RVR = TICK_CYCLES - 1u; /* <= 2^24 - 1 for clocks up to 16.7 GHz */
    SYST_CVR = 0;
    SYST_CSR = 0x7u; /* ENABLE | TICKINT | CLKSOURCE = processor clock */
}

/* processor cycles since start-up, modulo 2^32 */
static uint32_t cycles_now(void)
{
    uint32_t ms, v;
    do {
        ms = ms_ticks;
        v = SYST_CVR;
    } while (ms != ms_ticks);
    return ms * TICK_CYCLES + (TICK_CYCLES - 1u - v);
}

/* ---- the protocol loop ---- */

static const uint8_t model_sha256[32] = {OS_MODEL_SHA256};
static os_proto_t rx;
static os_proto_writer_t tx;

int main(void)
{
#ifdef OS_DETECT
    const os_proto_info_t info = {OS_TASK_DETECT, OS_RESULT_DETECTIONS, OS_FLAG_CYCLES, OS_INPUT_C, OS_INPUT_H,
                                  OS_INPUT_W, OS_MAX_DETECTIONS, OS_N_LOGITS, OS_CLOCK_HZ, OS_INPUT_BYTES,
                                  OS_TIMEOUT_MS, model_sha256, OS_MODEL_NAME, OS_BOARD_NAME};
#else
    const os_proto_info_t info = {OS_TASK_CLASSIFY, OS_RESULT_LOGITS, OS_FLAG_CYCLES, OS_INPUT_C, OS_INPUT_H,
                                  OS_INPUT_W, 0, OS_N_LOGITS, OS_CLOCK_HZ, OS_INPUT_BYTES,
                                  OS_TIMEOUT_MS, model_sha256, OS_MODEL_NAME, OS_BOARD_NAME};
#endif
    uint8_t *const pixels = OS_INPUT_BUF(); /* the network's own input buffer: INFER pixels land there */

    systick_init();
    os_uart_init(OS_CLOCK_HZ, OS_BAUD);
    os_proto_init(&rx, os_proto_model_id(model_sha256), OS_INPUT_BYTES, pixels, OS_INPUT_BYTES, OS_TIMEOUT_MS);
    if (OS_INPUT_C > 1)
        os_proto_set_chw(&rx, OS_INPUT_C, OS_INPUT_H, OS_INPUT_W); /* camera order (H, W, C) -> (C, H, W) */
    os_proto_writer_put(&tx, os_uart_putc, 0);

    for (;;) {
        const int c = os_uart_getc();
        const uint32_t now = ms_ticks;
        const int r = c >= 0 ? os_proto_feed(&rx, (uint8_t)c, now) : os_proto_tick(&rx, now);
        if (r == OS_MSG_INFO_REQUEST) {
            os_proto_write_info(&tx, rx.model_id, &info);
        } else if (r == OS_MSG_INFER) {
            const uint32_t t0 = cycles_now();
#ifdef OS_DETECT
            const int nd = OS_DETECT(pixels, dets, OS_MAX_DETECTIONS);
            const uint32_t cyc = cycles_now() - t0;
            const int cls = os_argmax(OS_READOUT(), OS_N_LOGITS);
            os_proto_write_detections(&tx, rx.model_id, (uint16_t)cls, cyc, dets, nd > 0 ? (uint32_t)nd : 0u);
#else
            const int cls = OS_INFER(pixels, logits);
            const uint32_t cyc = cycles_now() - t0;
            os_proto_write_result(&tx, rx.model_id, OS_RESULT_LOGITS, (uint16_t)cls, cyc, logits, OS_N_LOGITS);
#endif
        } else if (r < 0) {
            os_proto_write_error(&tx, rx.model_id, (uint8_t)-r, rx.err_type, rx.err_detail);
        }
    }
}
