/* Minimal Arm semihosting (BKPT 0xAB): file I/O and exit on QEMU, a debugger, or the Unicorn runner. */
#ifndef OS_SEMIHOST_H
#define OS_SEMIHOST_H
#include <stddef.h>
#include <stdint.h>

int sh_open(const char *path, int mode); /* mode 1 = "rb", 5 = "wb" */
int sh_close(int fd);
int sh_read(int fd, void *buf, size_t n);        /* returns bytes NOT read (0 = all) */
int sh_write(int fd, const void *buf, size_t n); /* returns bytes NOT written */
void sh_puts(const char *s);
void sh_exit(int code) __attribute__((noreturn));
#endif
