/*
 * The packed heap, in checkpt's preload (libcheckpt-nouring.so, with nouring.c): V8 asks for each
 * 256 KiB page of the JS heap at a random address (an mmap hint), so a 2 GB heap is 8,000
 * mappings, and CRIU's dump and restore pay for each (the restore of a 2 GB heap: ~50 ms of its
 * ~70). Dropping the hint of a private anonymous read-write mapping lets the kernel place it next
 * to the one before, where it merges with it: the same heap is ~190 mappings. A hint is only a
 * hint: V8 takes any address the kernel gives (as when the hinted place is taken). Only private
 * anonymous mappings of up to 16 MiB, read-write or not yet accessible, not at a fixed place.
 *
 * What the program gives up: V8's scattering of its heap pages over the address space (a
 * defence in depth against heap spraying; the address space itself stays randomized).
 * CHECKPT_PACK_HEAP=0 keeps V8's hints. Packed mappings are marked MADV_NOHUGEPAGE: scattered
 * 256 KiB mappings never got transparent huge pages, and packed ones must not start to (with THP
 * "always" the kernel could fill 2 MiB around a page the program never touched).
 *
 * Like nouring.c: the kernel's syscall instruction, glibc's errno rule, no other libc call in
 * mmap (built with -mgeneral-regs-only); the constructor looks the rest up once, at load.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/types.h>

#if !defined(__x86_64__)
#error "the packed heap is written for x86-64"
#endif

static int packing;

/* Only in a process that embeds Node (its executable exports N-API): the preload reaches every
 * program `checkpt run` starts and all they start, and other programs' hints may matter (a JIT
 * keeping its code within a jump of its other code, as LuaJIT does, retries until its hint is
 * met). Off as src/common/config.ts reads a switch: 0, false, no or off, any case, spaces around. */
__attribute__((constructor)) static void packheap_setting(void) {
  packing = dlsym(RTLD_DEFAULT, "napi_module_register") != NULL;
  const char *v = getenv("CHECKPT_PACK_HEAP");
  if (!v) return;
  while (*v == ' ' || *v == '\t') v++;
  size_t n = strlen(v);
  while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t')) n--;
  static const char *const off[] = {"0", "false", "no", "off"};
  for (size_t i = 0; i < sizeof off / sizeof off[0]; i++)
    if (strlen(off[i]) == n && strncasecmp(v, off[i], n) == 0) packing = 0;
}

static long raw6(long nr, long a, long b, long c, long d, long e, long f) {
  long ret;
  register long r10 __asm__("r10") = d;
  register long r8 __asm__("r8") = e;
  register long r9 __asm__("r9") = f;
  __asm__ volatile("syscall"
                   : "=a"(ret)
                   : "0"(nr), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                   : "rcx", "r11", "memory");
  return ret;
}

/* V8 maps each 256 KiB page as 512 KiB less 4 and trims it to an aligned page: read-write from
 * Node 24 on, PROT_NONE and opened afterwards before. Its large reservations (the code range, 64
 * MiB and more, hinted near Node's binary for short calls) keep their hints. */
#define PACK_MAX (16UL << 20)

#define NR_MMAP 9
#define NR_MADVISE 28

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
  int pack = packing && addr != NULL && len <= PACK_MAX && (flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)) == 0 &&
             (flags & (MAP_ANONYMOUS | MAP_TYPE)) == (MAP_ANONYMOUS | MAP_PRIVATE) &&
             (prot == (PROT_READ | PROT_WRITE) || prot == PROT_NONE);
  long r = raw6(NR_MMAP, pack ? 0 : (long)addr, (long)len, prot, flags, fd, off);
  if ((unsigned long)r >= -4095UL) {
    errno = (int)-r;
    return MAP_FAILED;
  }
  // Its result does not matter: a kernel without transparent huge pages says EINVAL.
  if (pack) raw6(NR_MADVISE, r, (long)len, MADV_NOHUGEPAGE, 0, 0, 0);
  return (void *)r;
}

void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off) __attribute__((alias("mmap")));
