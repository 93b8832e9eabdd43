/* The UART driver of the ST NUCLEO-F446RE: USART2 on PA2 (TX) / PA3 (RX), alternate function 7,
 * the ST-LINK virtual COM port. Polling, 8N1, oversampling by 16.
 *
 * Registers (RM0390): USART2 at 0x40004400: SR +0x00 (bit 5 RXNE, bit 7 TXE), DR +0x04, BRR +0x08,
 * CR1 +0x0C (bit 13 UE, bit 3 TE, bit 2 RE). RCC at 0x40023800: AHB1ENR +0x30 (bit 0 GPIOA),
 * APB1ENR +0x40 (bit 17 USART2). GPIOA at 0x40020000: MODER +0x00, AFRL +0x20.
 *
 * The firmware sets up no PLL: the core and APB1 run on the 16 MHz HSI after reset. The same USART
 * block is the STM32F405's of QEMU -M netduinoplus2 (hw/char/stm32f2xx_usart.c; USART2 is its second
 * -serial), where the firmware runs as well (docs/deploy.md). */
#include "board_uart.h"

#define REG(a) (*(volatile uint32_t *)(a))
#define RCC_AHB1ENR REG(0x40023830u)
#define RCC_APB1ENR REG(0x40023840u)
#define GPIOA_MODER REG(0x40020000u)
#define GPIOA_AFRL REG(0x40020020u)
#define USART2_BASE 0x40004400u
#define USART_SR REG(USART2_BASE + 0x00u)
#define USART_DR REG(USART2_BASE + 0x04u)
#define USART_BRR REG(USART2_BASE + 0x08u)
#define USART_CR1 REG(USART2_BASE + 0x0Cu)

#define SR_RXNE (1u << 5)
#define SR_TXE (1u << 7)
#define CR1_UE (1u << 13)
#define CR1_TE (1u << 3)
#define CR1_RE (1u << 2)

void os_uart_init(uint32_t clock_hz, uint32_t baud)
{
    RCC_AHB1ENR |= 1u << 0;  /* GPIOA */
    RCC_APB1ENR |= 1u << 17; /* USART2 */
    (void)RCC_APB1ENR;       /* a read-back: the clock is on before the first register access */
    GPIOA_MODER = (GPIOA_MODER & ~(0xFu << 4)) | (0xAu << 4);    /* PA2, PA3: alternate function */
    GPIOA_AFRL = (GPIOA_AFRL & ~(0xFFu << 8)) | (0x77u << 8);    /* AF7: USART2 */
    USART_CR1 = 0;
    USART_BRR = baud ? (clock_hz + baud / 2u) / baud : 139u; /* USARTDIV * 16, rounded (16 MHz / 115200: 139) */
    USART_CR1 = CR1_UE | CR1_TE | CR1_RE;
}

int os_uart_getc(void)
{
    if (!(USART_SR & SR_RXNE))
        return -1;
    return (int)(USART_DR & 0xFFu);
}

void os_uart_putc(void *ctx, uint8_t byte)
{
    (void)ctx;
    while (!(USART_SR & SR_TXE)) {
    }
    USART_DR = byte;
}
