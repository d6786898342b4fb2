/*
 * Zeroed memory for the helper's large tables (a chunk table: 1.2 MB for 2 GB of memory) in 2 MiB
 * transparent huge pages where the kernel allows them: on a guest whose page tables the host
 * shadows, each 4 KiB page costs a trap on its first touch (1.2 MB: ~3 ms here) and again in each
 * forked child; one huge page costs ~0.2 ms. Elsewhere (THP off) it is plain anonymous memory.
 */
#ifndef CHECKPT_BIGMEM_H
#define CHECKPT_BIGMEM_H
#include <stddef.h>
#include <stdint.h>
#include <sys/mman.h>

#define BIGMEM_HUGE ((size_t)2 << 20)
/* Below this a 2 MiB page is not worth its memory: plain pages. */
#define BIGMEM_MIN ((size_t)128 << 10)

static inline size_t bigmem_size(size_t n) {
  if (n == 0) n = 1;
  return n < BIGMEM_MIN ? n : (n + BIGMEM_HUGE - 1) & ~(BIGMEM_HUGE - 1);
}

/* Zeroed, populated memory of n bytes; NULL when there is none. Freed with bigmem_free(p, n). */
static inline void *bigmem_alloc(size_t n) {
  size_t size = bigmem_size(n);
  if (size < BIGMEM_MIN) {
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    return p == MAP_FAILED ? NULL : p;
  }
  /* Aligned to a huge page: map more, then give back the ends. */
  uint8_t *raw = mmap(NULL, size + BIGMEM_HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return NULL;
  uint8_t *p = (uint8_t *)(((uintptr_t)raw + BIGMEM_HUGE - 1) & ~(uintptr_t)(BIGMEM_HUGE - 1));
  if (p > raw) munmap(raw, (size_t)(p - raw));
  size_t tail = (size_t)(raw + size + BIGMEM_HUGE - (p + size));
  if (tail) munmap(p + size, tail);
  if (madvise(p, size, MADV_HUGEPAGE) != 0) { /* no THP here: 4 KiB pages, as before */ }
#ifdef MADV_POPULATE_WRITE
  if (madvise(p, size, MADV_POPULATE_WRITE) != 0) { /* faulted in on first touch instead */ }
#endif
  return p;
}

static inline void bigmem_free(void *p, size_t n) {
  if (p) munmap(p, bigmem_size(n));
}
#endif
