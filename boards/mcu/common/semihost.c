#include "semihost.h"

static int sh_call(int op, void *arg)
{
    register int r0 __asm__("r0") = op;
    register void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

static size_t sh_strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

int sh_open(const char *path, int mode)
{
    uint32_t a[3] = {(uint32_t)(uintptr_t)path, (uint32_t)mode, (uint32_t)sh_strlen(path)};
    return sh_call(0x01, a);
}

int sh_close(int fd)
{
    uint32_t a[1] = {(uint32_t)fd};
    return sh_call(0x02, a);
}

int sh_read(int fd, void *buf, size_t n)
{
    uint32_t a[3] = {(uint32_t)fd, (uint32_t)(uintptr_t)buf, (uint32_t)n};
    return sh_call(0x06, a);
}

int sh_write(int fd, const void *buf, size_t n)
{
    uint32_t a[3] = {(uint32_t)fd, (uint32_t)(uintptr_t)buf, (uint32_t)n};
    return sh_call(0x05, a);
}

void sh_puts(const char *s)
{
    sh_call(0x04, (void *)s);
}

void sh_exit(int code)
{
    /* SYS_EXIT_EXTENDED: ADP_Stopped_ApplicationExit with an exit code */
    uint32_t a[2] = {0x20026u, (uint32_t)code};
    sh_call(0x20, a);
    for (;;) {
    }
}
