/* board_uart.h - the board UART driver the UART inference firmware (uart_main.c) runs on.
 *
 * One file per board implements it (boards/mcu/<board>/uart.c): mps2-an386 (the CMSDK APB UART0,
 * emulated by QEMU) today; an STM32 USART2 (nucleo-f446re) or the RP2040 UART0 plug in the same way.
 * Polling only: no interrupt, no FIFO of our own (the protocol's host sends one request at a time). */
#ifndef OS_BOARD_UART_H
#define OS_BOARD_UART_H

#include <stdint.h>

/* Enables the UART at `baud` (8N1) for a peripheral clock of `clock_hz`. */
void os_uart_init(uint32_t clock_hz, uint32_t baud);

/* A received byte 0..255, or -1 when none is waiting. Never blocks. */
int os_uart_getc(void);

/* Sends one byte, waiting while the transmitter is full (an os_proto_put_t: ctx is unused). */
void os_uart_putc(void *ctx, uint8_t byte);

#endif /* OS_BOARD_UART_H */
