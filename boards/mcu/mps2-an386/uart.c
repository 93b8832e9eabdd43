/* The UART driver of the Arm MPS2 AN385/AN386 (QEMU -M mps2-an386): CMSDK APB UART0 at 0x40004000.
 *
 * Registers: DATA +0x00, STATE +0x04 (bit 0 TX buffer full, bit 1 RX buffer full), CTRL +0x08
 * (bit 0 TX enable, bit 1 RX enable), INTSTATUS +0x0C, BAUDDIV +0x10 (the peripheral clock over the
 * baud rate, at least 16). QEMU models it (hw/char/cmsdk-apb-uart.c) as the board's first serial
 * port (-serial ...); it does not model the baud rate: bytes move as fast as the host sends them. */
#include "board_uart.h"

#define UART0_BASE 0x40004000u
#define UART_DATA (*(volatile uint32_t *)(UART0_BASE + 0x00u))
#define UART_STATE (*(volatile uint32_t *)(UART0_BASE + 0x04u))
#define UART_CTRL (*(volatile uint32_t *)(UART0_BASE + 0x08u))
#define UART_BAUDDIV (*(volatile uint32_t *)(UART0_BASE + 0x10u))

#define STATE_TX_FULL 0x1u
#define STATE_RX_FULL 0x2u
#define CTRL_TX_EN 0x1u
#define CTRL_RX_EN 0x2u

void os_uart_init(uint32_t clock_hz, uint32_t baud)
{
    uint32_t div = baud ? clock_hz / baud : 16u;
    if (div < 16u)
        div = 16u;
    UART_CTRL = 0;
    UART_BAUDDIV = div;
    UART_CTRL = CTRL_TX_EN | CTRL_RX_EN;
}

int os_uart_getc(void)
{
    if (!(UART_STATE & STATE_RX_FULL))
        return -1;
    return (int)(UART_DATA & 0xFFu);
}

void os_uart_putc(void *ctx, uint8_t byte)
{
    (void)ctx;
    while (UART_STATE & STATE_TX_FULL) {
    }
    UART_DATA = byte;
}
