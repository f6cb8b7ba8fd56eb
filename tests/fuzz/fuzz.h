/* fuzz.h: what the libFuzzer harnesses share. The readers under test take paths, so each input is
 * written to a memfd and read back through /proc/self/fd: no disk, one file reused for every run.
 * Logging is off: a harness runs millions of inputs, most of them errors. */
#ifndef MOE_FUZZ_H
#define MOE_FUZZ_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/common.h"

/* The input as a file; its path stays valid for the process. */
static inline const char *fuzz_file(const uint8_t *data, size_t size)
{
    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        moe_log_init(0, MOE_LOG_SILENT);
        fd = memfd_create("moe_fuzz", 0);
        if (fd < 0) abort();
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    if (ftruncate(fd, 0) != 0 || pwrite(fd, data, size, 0) != (ssize_t)size) abort();
    return path;
}

#endif
