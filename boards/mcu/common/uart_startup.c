/* Start-up code of the UART inference firmware (uart_main.c): vector table with the SysTick
 * handler, .data/.bss set-up, FPU enable. No semihosting (the semihosting parity firmware keeps
 * startup.c): a fault parks the core, and the host sees a device that stops answering. */
#include <stdint.h>

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;
int main(void);
void os_systick_handler(void); /* uart_main.c */

void Reset_Handler(void);
void Fault_Handler(void);

void Fault_Handler(void)
{
    for (;;) {
    }
}

void Reset_Handler(void)
{
#if defined(__ARM_FP)
    /* CPACR: full access to CP10/CP11, or the first FP instruction faults (NOCP) */
    *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20;
    __asm__ volatile("dsb\n isb" ::: "memory");
#endif
    uint32_t *src = &_sidata, *dst = &_sdata;
    while (dst < &_edata)
        *dst++ = *src++;
    for (dst = &_sbss; dst < &_ebss; dst++)
        *dst = 0;
    (void)main();
    for (;;) {
    }
}

__attribute__((section(".isr_vector"), used)) void (*const os_vectors[16])(void) = {
    (void (*)(void))(&_estack), Reset_Handler, Fault_Handler, Fault_Handler,
    Fault_Handler, Fault_Handler, Fault_Handler, 0, 0, 0, 0,
    Fault_Handler, Fault_Handler, 0, Fault_Handler, os_systick_handler,
};
