/*
 * libcheckpt-nouring.so: loaded with LD_PRELOAD, makes io_uring_setup fail for this process so
 * libuv (Node 22/24) falls back to epoll, which CRIU can checkpoint. libuv reaches the kernel
 * through glibc's syscall(), so interposing that one function is enough. Unlike a seccomp
 * filter it leaves ptrace alone: CRIU must suspend seccomp to dump, which it may not do when
 * it was itself started under the filter.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425
#endif

long syscall(long nr, ...) {
  va_list ap;
  va_start(ap, nr);
  long a1 = va_arg(ap, long), a2 = va_arg(ap, long), a3 = va_arg(ap, long);
  long a4 = va_arg(ap, long), a5 = va_arg(ap, long), a6 = va_arg(ap, long);
  va_end(ap);
  if (nr == __NR_io_uring_setup) {
    errno = ENOSYS;
    return -1;
  }
  static long (*next)(long, ...);
  if (!next) next = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
  return next(nr, a1, a2, a3, a4, a5, a6);
}
