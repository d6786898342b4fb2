/*
 * checkpt-helper serve-pages: the page server CRIU's lazy-pages daemon reads a copy's memory from
 * (`criu lazy-pages --page-server --ps-socket 4`), in native code so that a page fault costs a
 * few microseconds instead of a turn of Node's event loop (docs/PERFORMANCE.md).
 *
 * It only sends bytes that passed their check, from the staged pages images (block by block, as
 * src/engine/staged-pages.ts fills them). A block is staged either by checkpt, which says STAGED,
 * or, for a plain or zstd chunk whose digest the plan gives, by this server's checker thread:
 * read from the checkpoint file, hashed, decoded, written to the staged image, and only then
 * marked. The checker takes the blocks requests wait for first, then the rest (`backward`), so
 * most faults find their page staged; the serving loop never waits for a check it does not need.
 *
 *   fd 3  the daemon's socket (CRIU's protocol, criu/page-xfer.c; see src/engine/page-server.ts)
 *   fd 4  checkpt's control socket: first the plan, then 16-byte messages both ways
 *   fd 5  the checkpoint file, readable (for the blocks this server checks)
 *   fd 6+ the staged pages images, in the plan's order, readable and writable
 *
 * Plan (little-endian): u32 magic "CKPS", u32 files, u32 entries, u32 0; per file u64 size,
 * u32 checked here with (0 not, 1 SHA-256, 2 BLAKE3), u32 blocks, u32 block size, u32 codec (0
 * none, 1 zstd frames), u64 offset of the first chunk in the checkpoint file, and when checked
 * here the file's chunk table as the checkpoint stores it (one chunk a block, back to back from
 * that offset): per block u32 stored length (big-endian) and the digest of the stored bytes
 * (SHA-256 or BLAKE3, the checkpoint's flags bit 2, src/image/layout.ts); then per lazy pagemap
 * entry, sorted
 * by pid then vaddr: u32 pid, u32 file,
 * u64 vaddr, u64 bytes, u64 offset in the file. Messages: u32 type, u32 file, u64 block. checkpt
 * sends STAGED for each block staged before, then PLANNED, then STAGED as it stages more, and
 * STAGE for a block of this server's that CRIU's restore reads itself (answered with STAGED once
 * it is checked and in the staged image); this server sends NEED for a block of checkpt's that a
 * request waits for, once.
 *
 * With CHECKPT_STAGED_MAP set, the blocks' states live in that file (share_states), which CRIU's
 * daemon maps too: checkpt's CRIU build reads a request whose blocks are all checked itself
 * (scripts/criu-patches/staged-local-reads.patch) and asks this server only for the others.
 *
 * With --stage-only there is no daemon (fd 3 unused): the server only checks and stages what
 * checkpt asks with STAGE (an eager restore's memory), and ends with 0 when checkpt closes fd 4.
 *
 * With --pagemaps DIR (the plan's fourth word 1, no lazy entries, and after the files a u32 N per
 * file, its name being pages-N.img) the server reads DIR's page maps itself, with the checks
 * src/engine/pagemap.ts makes (a reason on stderr as "badmap WHY", exit 5): checkpt then spends
 * nothing on them (~8 ms of its thread for 110 MB of memory, ~20 ms for 2 GB). STAGE_EAGER (5)
 * stages what `criu restore` reads itself (every block with --stage-only), each block answered
 * with STAGED, then EAGER_STAGED (6) once.
 *
 * CHECK_ALL (7), serving a daemon: every block is to be checked (the checker walks them all; the
 * blocks checkpt checks are asked for with NEED), and the server says ALL_CHECKED (8) once they
 * are (a zstd frame once its stored bytes passed: with --hold the checker hashes every frame
 * first, and decodes it later, checking it again). A small image's copy is held in CRIU's
 * post-restore step until then: with --hold SOCKET the server listens there (bound before it
 * reads the plan, so before checkpt can start CRIU) and answers that step ('1') itself the moment
 * every block passed, without a turn of checkpt's event loop. A damaged block ends the server,
 * and the step, reading no verdict, fails. The server then outlives its daemon until the step is
 * answered, or gone, or checkpt says HOLD_OVER (9): CRIU is past that step, or failed before it.
 *
 * Exit status: 0 after the daemon's goodbye (answered, or the daemon gone after saying it), 3 when
 * the daemon hung up with nothing asked (no goodbye), 2 with one line on stderr for a request the
 * plan does not allow or a broken connection, 4 with "damaged FILE BLOCK WHY" on stderr for a
 * block that failed its check, 5 with "badmap WHY" for page maps that do not fit their images, 1
 * when checkpt's side went away.
 */
#define _GNU_SOURCE
#include "blake3/blake3.h"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <dlfcn.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include "bigmem.h"
#include "criu-rpc.h"
#include "page-server.h"
#include "resume-front.h"

#define DAEMON_FD 3
#define CTL_FD 4
#define CKPT_FD 5
#define FIRST_FILE_FD 6
#define IOV_SIZE 32
#define PS_IOV_ADD_F 6
#define PS_IOV_GET 7
#define PS_IOV_CLOSE 0x1023
#define PS_IOV_FORCE_CLOSE 0x1024
#define PS_CMD_MASK 0xffff
#define PE_PRESENT 4
#define PAGE 4096ULL
#define PLAN_MAGIC 0x53504b43u
#define MSG_STAGED 1
#define MSG_NEED 2
#define MSG_PLANNED 3
#define MSG_STAGE 4
#define MSG_STAGE_EAGER 5
#define MSG_EAGER_STAGED 6
#define MSG_CHECK_ALL 7
#define MSG_ALL_CHECKED 8
#define MSG_HOLD_OVER 9
#define MSG_SIZE 16
/* The plan's flags (its fourth word): this server reads the page maps itself (--pagemaps). */
#define PLAN_PAGEMAPS 1u
/* A file's table in the plan: none (checkpt checks it), SHA-256 or BLAKE3 digests. */
#define HASH_NONE 0u
#define HASH_SHA256 1u
#define HASH_BLAKE3 2u
#define IMG_COMMON_MAGIC 0x54564319u
#define PAGEMAP_MAGIC 0x56084025u
#define PE_PARENT 1
#define PE_LAZY 2
/* Requests read ahead of the one being answered; past that the daemon waits (its async reads
 * are few: one background range per task plus the faults). */
#define MAX_QUEUED 4096
#define MAX_FILES 4096
#define MAX_ENTRIES (1u << 22)

enum { STAGED_NO = 0, STAGED_MAP = 1, STAGED_FILE = 2 };
enum { EXIT_CLOSED = 0, EXIT_GONE = 1, EXIT_PROTOCOL = 2, EXIT_HUNG_UP = 3, EXIT_DAMAGED = 4, EXIT_BAD_MAP = 5 };

struct entry {
  uint32_t pid, file;
  uint64_t vaddr, bytes, offset;
};

struct chunk {
  uint64_t offset;
  uint32_t stored, codec;
  uint8_t digest[32];
};

struct file {
  uint64_t size, blocks, block;
  /* Set once a block's bytes passed their check (read with acquire): STAGED_MAP when they are in
   * the staged image, STAGED_FILE when the checked bytes are those in the checkpoint file. */
  uint8_t *staged, *asked;
  /* Wanted in the staged image (what `criu restore` reads itself), not only checked in the file. */
  uint8_t *want_map;
  /* Asked for with STAGE and not yet answered (main thread). */
  uint8_t *report;
  /* Taken by a checker thread (under lock). */
  uint8_t *claimed;
  /* The checker's table, when this server checks the file itself, and its digests' kind. */
  struct chunk *chunks;
  uint32_t hash;
  /* Its digests (and frames' lengths) go into the map shared with the daemon (share_states). */
  int self_check;
  /* With --pagemaps: the image's number (pages-<id>.img), and its blocks `criu restore` reads
   * itself (the page maps' entries that are not lazy; all of an image no page map names). */
  uint32_t id;
  uint8_t *eager;
  /* Not yet checked when MSG_CHECK_ALL came (main thread). */
  uint8_t *held;
  /* zstd frames whose stored bytes passed their check, not yet decoded (main thread): enough for
   * a held copy to run, its daemon checks and decodes them again when it needs them. */
  uint8_t *verified;
};

struct request {
  uint8_t head[IOV_SIZE];
  int close;
  uint32_t file;
  uint64_t offset, length;
};

static struct file *files;
static uint32_t nfiles;
static struct entry *entries;
static uint32_t nentries;
/* The largest block of any file (for buffers). */
static uint64_t block;
/* A checker's buffer: the stored bytes of a chunk (at most 2 * block + 65536, as read_plan checks),
 * then its decoded block. */
#define RAW_OUT (2 * block + 65536)
#define RAW_SIZE (3 * block + 65536)
static struct request queue[MAX_QUEUED];
static unsigned qhead, qlen;
/* The daemon's requests read but not yet taken, and whether it has said goodbye. */
static uint8_t in[IOV_SIZE * 128];
static size_t inlen;
static int closing;
static uint32_t plan_flags;
/* Blocks of MSG_STAGE_EAGER not yet in their staged images; -1 before it was asked. */
static int64_t eager_left = -1;
/* Blocks of MSG_CHECK_ALL not yet checked; -1 before it was asked. */
static int64_t held_left = -1;
/* --hold: CRIU's post-restore script waits on this socket for the copy's verdict. The listener,
 * then the script's connection; both -1 once the hold is over (answered, the script gone, or
 * MSG_HOLD_OVER). The server outlives its daemon until then: a small copy's memory may all be in
 * before the script connects. */
static int hold_listen = -1, hold_conn = -1, hold_greeted;

static void leave(int code) __attribute__((noreturn));

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  exit(EXIT_PROTOCOL);
}

static uint32_t u32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t u64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* Reads exactly n bytes of the plan; checkpt gone before it is whole: exit. */
static void read_ctl_exact(void *buf, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(CTL_FD, (char *)buf + got, n - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && errno == EAGAIN) {
      struct pollfd p = {CTL_FD, POLLIN, 0};
      poll(&p, 1, -1);
      continue;
    }
    if (r <= 0) exit(EXIT_GONE);
    got += (size_t)r;
  }
}

/* Whether a file of the plan holds zstd frames. */
static int any_zstd;

/* Rows of a chunk table read at once (64 KiB less a little). */
#define ROWS_AT_ONCE 1820

static void read_plan(void) {
  uint8_t h[16];
  read_ctl_exact(h, sizeof h);
  if (u32(h) != PLAN_MAGIC) fail("the plan from checkpt is malformed");
  nfiles = u32(h + 4);
  nentries = u32(h + 8);
  plan_flags = u32(h + 12);
  if (nfiles > MAX_FILES || nentries > MAX_ENTRIES || plan_flags & ~PLAN_PAGEMAPS ||
      (plan_flags & PLAN_PAGEMAPS && nentries))
    fail("the plan from checkpt is out of bounds");
  files = calloc(nfiles ? nfiles : 1, sizeof *files);
  entries = calloc(nentries ? nentries : 1, sizeof *entries);
  if (!files || !entries) fail("out of memory for the plan");
  for (uint32_t i = 0; i < nfiles; i++) {
    uint8_t b[32];
    read_ctl_exact(b, 32);
    struct file *f = &files[i];
    f->size = u64(b);
    f->block = u32(b + 16);
    if (f->block < PAGE || f->block % PAGE || f->block > (64u << 20))
      fail("the plan from checkpt is out of bounds");
    if (f->block > block) block = f->block;
    f->blocks = (f->size + f->block - 1) / f->block;
    f->staged = calloc(f->blocks + 1, 1);
    f->asked = calloc(f->blocks + 1, 1);
    f->claimed = calloc(f->blocks + 1, 1);
    f->want_map = calloc(f->blocks + 1, 1);
    f->report = calloc(f->blocks + 1, 1);
    f->verified = calloc(f->blocks + 1, 1);
    if (!f->staged || !f->asked || !f->claimed || !f->want_map || !f->report || !f->verified)
      fail("out of memory for the plan");
    f->hash = u32(b + 8);
    if (f->hash == HASH_NONE) continue;
    if (f->hash != HASH_SHA256 && f->hash != HASH_BLAKE3)
      fail("the plan from checkpt is out of bounds");
    if (u32(b + 12) != f->blocks) fail("the plan from checkpt is malformed");
    uint32_t codec = u32(b + 20);
    uint64_t at = u64(b + 24);
    if (codec > 1) fail("the plan from checkpt is out of bounds");
    if (codec == 1) any_zstd = 1;
    /* Huge pages: first touches one by one trap on a 2-core guest (400 for 2 GB of memory). */
    f->chunks = bigmem_alloc((f->blocks + 1) * sizeof *f->chunks);
    if (!f->chunks) fail("out of memory for the plan");
    /* Row by row through one small buffer: no copy of the whole table to touch. */
    static uint8_t table[ROWS_AT_ONCE * 36];
    for (uint64_t c = 0; c < f->blocks; c++) {
      if (c % ROWS_AT_ONCE == 0) {
        uint64_t rows = f->blocks - c < ROWS_AT_ONCE ? f->blocks - c : ROWS_AT_ONCE;
        read_ctl_exact(table, rows * 36);
      }
      const uint8_t *r = table + (c % ROWS_AT_ONCE) * 36;
      f->chunks[c].offset = at;
      f->chunks[c].stored = (uint32_t)r[0] << 24 | (uint32_t)r[1] << 16 | (uint32_t)r[2] << 8 | r[3];
      f->chunks[c].codec = codec;
      memcpy(f->chunks[c].digest, r + 4, 32);
      if (f->chunks[c].stored > 2 * f->block + 65536) fail("the plan from checkpt is out of bounds");
      at += f->chunks[c].stored;
    }
  }
  for (uint32_t i = 0; i < nentries; i++) {
    uint8_t b[32];
    read_ctl_exact(b, 32);
    struct entry *e = &entries[i];
    e->pid = u32(b);
    e->file = u32(b + 4);
    e->vaddr = u64(b + 8);
    e->bytes = u64(b + 16);
    e->offset = u64(b + 24);
    if (e->file >= nfiles || e->offset > files[e->file].size ||
        e->bytes > files[e->file].size - e->offset)
      fail("the plan from checkpt names pages outside their image");
  }
  if (!(plan_flags & PLAN_PAGEMAPS)) return;
  for (uint32_t i = 0; i < nfiles; i++) {
    uint8_t b[4];
    read_ctl_exact(b, 4);
    files[i].id = u32(b);
    if (!(files[i].eager = calloc(files[i].blocks + 1, 1))) fail("out of memory for the plan");
  }
}

/* ------------------------------------------------------------------ the page maps (--pagemaps) */

/* A page map that does not fit its pages image: the checkpoint cannot be resumed (checkpt says
 * EBADIMAGE with this reason; src/engine/pagemap.ts gives the same ones). */
static void bad_map(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void bad_map(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("badmap ", stderr);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  fflush(stderr);
  _exit(EXIT_BAD_MAP);
}

static int by_pid_vaddr(const void *a, const void *b) {
  const struct entry *x = a, *y = b;
  if (x->pid != y->pid) return x->pid < y->pid ? -1 : 1;
  return x->vaddr < y->vaddr ? -1 : x->vaddr > y->vaddr;
}

static void mark_eager(struct file *f, uint64_t offset, uint64_t length) {
  for (uint64_t b = offset / f->block; b * f->block < offset + length; b++) f->eager[b] = 1;
}

/* Reads one page map: its entries' pages, in order, make up its pages image exactly (as CRIU
 * reads them, criu/pagemap.c); lazy ones go to `entries` (shared memory's never are). */
static void read_pagemap(int dirfd, const char *name, uint32_t pid, int shmem, uint8_t *claimed,
                         size_t *cap) {
  int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) < 0) bad_map("%s cannot be read (%s)", name, strerror(errno));
  size_t len = (size_t)st.st_size;
  uint8_t *img = malloc(len + 1);
  if (!img) fail("out of memory for the page maps");
  for (size_t got = 0; got < len;) {
    ssize_t n = pread(fd, img + got, len - got, (off_t)got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) bad_map("%s cannot be read", name);
    got += (size_t)n;
  }
  close(fd);
  if (len < 8 || u32(img) != IMG_COMMON_MAGIC || u32(img + 4) != PAGEMAP_MAGIC)
    bad_map("%s is not a CRIU page map (not a CRIU image of kind 0x%x)", name, PAGEMAP_MAGIC);
  struct file *f = NULL;
  uint32_t fi = 0;
  uint64_t at_pages = 0, end_vaddr = 0;
  size_t at = 8;
  for (uint64_t index = 0; at < len; index++) {
    if (at + 4 > len) bad_map("%s is not a CRIU page map (truncated entry length)", name);
    size_t end = at + 4 + u32(img + at);
    if (end > len || end < at) bad_map("%s is not a CRIU page map (truncated entry)", name);
    at += 4;
    uint64_t field[6];
    int has[6] = {0};
    struct pb_reader r = {img + at, img + end};
    while (r.p < r.end) {
      uint64_t key, v, skip = 0;
      if (pb_get_varint(&r, &key) < 0) bad_map("%s is not a CRIU page map (bad varint)", name);
      uint64_t no = key >> 3, wire = key & 7;
      if (wire == 0 || wire == 2) {
        if (pb_get_varint(&r, &v) < 0) bad_map("%s is not a CRIU page map (bad varint)", name);
        if (wire == 2) skip = v;
        else if (no < 6) field[no] = v, has[no] = 1;
      } else if (wire == 1 || wire == 5) {
        skip = wire == 1 ? 8 : 4;
      } else {
        bad_map("%s is not a CRIU page map (unsupported wire type %llu)", name, (unsigned long long)wire);
      }
      if (skip > (uint64_t)(r.end - r.p)) bad_map("%s is not a CRIU page map (field runs past its message)", name);
      r.p += skip;
    }
    at = end;
    if (index == 0) {
      if (!has[1]) bad_map("%s names no pages image", name);
      for (fi = 0; fi < nfiles && files[fi].id != field[1]; fi++) {
      }
      if (fi == nfiles || field[1] > UINT32_MAX)
        bad_map("%s names pages-%llu.img, which the file does not hold", name, (unsigned long long)field[1]);
      if (claimed[fi]) bad_map("pages-%u.img is named by two page maps", files[fi].id);
      claimed[fi] = 1;
      f = &files[fi];
      continue;
    }
    uint64_t vaddr = field[1], nr = has[5] ? field[5] : field[2];
    int in_parent = has[3] && field[3] == 1;
    uint64_t flags = in_parent ? PE_PARENT : has[4] ? field[4] : PE_PRESENT;
    if (!has[1] || !(has[5] || has[2]) || vaddr % PAGE || nr < 1)
      bad_map("%s has a malformed entry", name);
    if (vaddr < end_vaddr) bad_map("%s has overlapping or unsorted entries", name);
    if (flags & PE_PARENT) bad_map("%s refers to a parent image, which checkpt never makes", name);
    /* Past the address space: it ends at its top (nothing after it fits), as pagemap.ts has it. */
    int huge = nr > (UINT64_MAX - vaddr) / PAGE;
    uint64_t bytes = huge ? UINT64_MAX : nr * PAGE;
    end_vaddr = huge ? UINT64_MAX : vaddr + bytes;
    if (!(flags & PE_PRESENT)) continue;
    if (bytes > f->size - at_pages)
      bad_map("%s maps more pages than pages-%u.img holds", name, f->id);
    if ((flags & PE_LAZY) && !shmem) {
      if (nentries >= MAX_ENTRIES) fail("the page maps are out of bounds");
      if (nentries == *cap) {
        *cap = *cap ? *cap * 2 : 1024;
        entries = realloc(entries, *cap * sizeof *entries);
        if (!entries) fail("out of memory for the page maps");
      }
      entries[nentries++] = (struct entry){pid, fi, vaddr, bytes, at_pages};
    } else {
      mark_eager(f, at_pages, bytes);
    }
    at_pages += bytes;
  }
  free(img);
  if (f && at_pages != f->size)
    bad_map("pages-%u.img holds %llu bytes where %s maps %llu", f->id, (unsigned long long)f->size,
            name, (unsigned long long)at_pages);
}

/* Every page map of the images directory, as readMemoryPlan reads them in checkpt. */
static void read_pagemaps(const char *dir) {
  int dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  DIR *d = dirfd < 0 ? NULL : fdopendir(dirfd);
  if (!d) bad_map("the page maps in %s cannot be read (%s)", dir, strerror(errno));
  uint8_t *claimed = calloc(nfiles + 1, 1);
  size_t cap = 0;
  if (!claimed) fail("out of memory for the page maps");
  free(entries);
  entries = NULL;
  nentries = 0;
  struct dirent *de;
  while ((de = readdir(d))) {
    const char *n = de->d_name;
    if (strncmp(n, "pagemap-", 8)) continue;
    int shmem = !strncmp(n + 8, "shmem-", 6);
    const char *digits = n + 8 + (shmem ? 6 : 0);
    char *tail;
    if (*digits < '0' || *digits > '9') continue;
    errno = 0;
    unsigned long long pid = strtoull(digits, &tail, 10);
    if (strcmp(tail, ".img")) continue;
    if (errno || pid > UINT32_MAX) bad_map("%s names an impossible pid", n);
    read_pagemap(dirfd, n, (uint32_t)pid, shmem, claimed, &cap);
  }
  closedir(d);
  /* A pages image no page map names is still CRIU's to read: all of it. */
  for (uint32_t i = 0; i < nfiles; i++)
    if (!claimed[i] && files[i].size) mark_eager(&files[i], 0, files[i].size);
  free(claimed);
  if (nentries) qsort(entries, nentries, sizeof *entries, by_pid_vaddr);
  if (!entries && !(entries = calloc(1, sizeof *entries))) fail("out of memory for the page maps");
}

/* The lazy entry holding nr pages at vaddr of pid, wholly; NULL if none (CRIU asks within one). */
static const struct entry *locate(uint64_t pid, uint64_t vaddr, uint64_t nr) {
  if (nr < 1 || nr > UINT64_MAX / PAGE || vaddr % PAGE) return NULL;
  uint64_t len = nr * PAGE;
  size_t lo = 0, hi = nentries;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    const struct entry *e = &entries[mid];
    if (e->pid < pid || (e->pid == pid && e->vaddr + e->bytes <= vaddr)) lo = mid + 1;
    else hi = mid;
  }
  if (lo == nentries) return NULL;
  const struct entry *e = &entries[lo];
  if (e->pid != pid || vaddr < e->vaddr || vaddr - e->vaddr > e->bytes ||
      len > e->bytes - (vaddr - e->vaddr))
    return NULL;
  return e;
}

static int is_goodbye(const uint8_t *iov) {
  uint32_t cmd; memcpy(&cmd, iov, 4);
  return (cmd & PS_CMD_MASK) == PS_IOV_CLOSE || (cmd & PS_CMD_MASK) == PS_IOV_FORCE_CLOSE;
}

/* The daemon closed its end while we wrote to it. After its goodbye that is how it ends when its
 * program has exited (it stops reading, even our status for the goodbye), so it is no failure;
 * before one, the copy may be missing memory. The goodbye may still be unread: look for it. */
static void peer_gone(int err) __attribute__((noreturn));
static void peer_gone(int err) {
  if (err == EPIPE || err == ECONNRESET) {
    if (closing) leave(EXIT_CLOSED);
    for (;;) {
      size_t whole = inlen - inlen % IOV_SIZE;
      for (size_t at = 0; at < whole; at += IOV_SIZE)
        if (is_goodbye(in + at)) leave(EXIT_CLOSED);
      memmove(in, in + whole, inlen - whole);
      inlen -= whole;
      ssize_t n = recv(DAEMON_FD, in + inlen, sizeof in - inlen, MSG_DONTWAIT);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      inlen += (size_t)n;
    }
  }
  fail("connection failed (%s)", strerror(err));
}

static void write_all(int fd, const void *buf, size_t n, int more) {
  size_t done = 0;
  while (done < n) {
    ssize_t w = send(fd, (const char *)buf + done, n - done, MSG_NOSIGNAL | (more ? MSG_MORE : 0));
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) peer_gone(errno);
    done += (size_t)w;
  }
}

static void send_ctl(uint32_t type, uint32_t file, uint64_t blk) {
  uint8_t m[MSG_SIZE];
  memcpy(m, &type, 4);
  memcpy(m + 4, &file, 4);
  memcpy(m + 8, &blk, 8);
  size_t done = 0;
  while (done < MSG_SIZE) {
    ssize_t w = send(CTL_FD, m + done, MSG_SIZE - done, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && errno == EAGAIN) {
      struct pollfd p = {CTL_FD, POLLOUT, 0};
      poll(&p, 1, -1);
      continue;
    }
    if (w <= 0) exit(EXIT_GONE);
    done += (size_t)w;
  }
}


/* ------------------------------------------------------------------ the checker thread */

/* Nettle is CRIU's own dependency (through GnuTLS), so it is wherever CRIU runs; libzstd is
 * Debian's. Without either, checkpt stages those blocks itself (NEED). */
static void (*sha_init)(void *);
static void (*sha_update)(void *, size_t, const uint8_t *);
static void (*sha_digest)(void *, size_t, uint8_t *);
static size_t (*zstd_decompress)(void *, size_t, const void *, size_t);
static unsigned (*zstd_is_error)(size_t);
/* A decompression context per thread, made once: ZSTD_decompress makes and frees one per frame,
 * which for 64 KiB frames costs ~30% more (heavy's 1,615 frames: 76 against 55 ms). */
static void *(*zstd_create_dctx)(void);
static unsigned long long (*zstd_content_size)(const void *, size_t);
static size_t (*zstd_decompress_dctx)(void *, void *, size_t, const void *, size_t);
static __thread void *thread_dctx;

static size_t decompress_frame(void *out, size_t want, const void *in, size_t len) {
  if (!thread_dctx && zstd_create_dctx && zstd_decompress_dctx) thread_dctx = zstd_create_dctx();
  if (thread_dctx) return zstd_decompress_dctx(thread_dctx, out, want, in, len);
  return zstd_decompress(out, want, in, len);
}

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
/* Blocks requests wait for, checked before the rest; a ring with room for every block asked. */
static struct { uint32_t file; uint64_t block; } *urgent;
static size_t urgent_cap, urgent_head, urgent_len;
static int staged_fd = -1; /* eventfd: the checker staged a block */
/* Blocks staged since the main thread last looked (under lock): it answers the STAGE requests
 * among them. Each block is staged at most twice (in the file, then copied out). */
static struct { uint32_t file; uint64_t block; int verified; } *done;
static size_t done_cap, done_head, done_len;
/* Set once the daemon asks for its first page (the copy runs), or once what CRIU's restore reads
 * itself is staged, unless the copy is held until every block is checked: the checkers'
 * background work then yields to CRIU's restore and the copy (a checker found the copy waiting
 * behind it on a 2-core machine, and CRIU's restore of 2 GB took up to twice its time beside it). */
static int copy_runs;

/* Once a lazily served copy runs, the background walk over plain chunks waits this long (CRIU's
 * daemon holds its background transfers as long, native/resume-front.c's PIN_MS), checking only
 * the blocks a request waits for and those around the copy's faults: on this 2-core guest a busy
 * second CPU, even at idle priority, slowed CRIU's last steps and the copy's on the first (CRIU
 * done 3-6 ms sooner, heavy's first answer 80.4 against 83.1 ms, heap-500MB's 77.1 against 86.1;
 * medians of 12 and 8 alternating resumes). Not for zstd frames, which the walk decodes ahead of
 * the copy's faults (heavy's compressed file: 113.7 against 111.9 with the walk held). */
#define WALK_HOLD_MS 300
static int lazy_serving;
/* When the walk may go on (CLOCK_MONOTONIC, ns); 0: not yet set. Until the copy runs it waits
 * too, but at most WALK_UNTIL_RUN_MS from the checkers' start (a server nobody asks anything of
 * still checks the file). */
static int64_t walk_from_ns, checkers_at_ns;
#define WALK_UNTIL_RUN_MS 1000

static int64_t clock_ns(clockid_t c) {
  struct timespec t;
  clock_gettime(c, &t);
  return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* The copy runs (or CRIU may restore it): the checkers yield, and a lazy copy's walk waits. */
static void copy_starts(void) {
  if (lazy_serving && !__atomic_load_n(&walk_from_ns, __ATOMIC_RELAXED))
    __atomic_store_n(&walk_from_ns, clock_ns(CLOCK_MONOTONIC) + (int64_t)WALK_HOLD_MS * 1000000, __ATOMIC_RELAXED);
  __atomic_store_n(&copy_runs, 1, __ATOMIC_RELAXED);
}

/* Whether the walk waits (under lock; a lazy copy's, until WALK_HOLD_MS after it may run): then
 * on `wake` for a request, or a step of WALK_POLL_NS (the daemon's fault hints come without a
 * wake-up), or until it may go on. */
#define WALK_POLL_NS 2000000
static int walk_held(void) {
  if (!lazy_serving) return 0;
  int64_t from = __atomic_load_n(&walk_from_ns, __ATOMIC_RELAXED), now = clock_ns(CLOCK_MONOTONIC);
  if (from ? now >= from : now >= checkers_at_ns + (int64_t)WALK_UNTIL_RUN_MS * 1000000) return 0;
  static int said;
  if (!said) {
    said = 1;
    bench_trace("s-walk-held");
  }
  /* `wake` waits on CLOCK_REALTIME. */
  int64_t at = clock_ns(CLOCK_REALTIME) + (!from || from - now > WALK_POLL_NS ? WALK_POLL_NS : from - now);
  struct timespec until = {.tv_sec = (time_t)(at / 1000000000), .tv_nsec = (long)(at % 1000000000)};
  pthread_cond_timedwait(&wake, &lock, &until);
  return 1;
}

/* The background order: every block checked here, file by file (under lock), each file from its
 * end back to its start when serving a daemon (`backward`). A pages image holds its process's
 * memory in address order, and the top of the address space (thread stacks, the C library's
 * arenas, the libraries' data) is what a resumed copy touches first, where the JS heap's pages in
 * the middle are touched here and there: heap-500MB took ~120 of its ~280 faults on the way to its
 * first answer in the file's last tenth. A block checked by then is read by the daemon itself
 * (~12 µs a fault) instead of through this server (~90 µs). Staging for an eager restore keeps the
 * file's order, the order CRIU reads it in. */
static uint32_t cursor_file;
static uint64_t cursor;
static int backward;

/* Backward, the walk takes the file's blocks in runs of this many, each run in file order: reads
 * from a disk stay sequential within a run (the kernel reads ahead only forward). */
#define WALK_RUN 64u

/* The block the background walk is at: runs from the file's end back to its start, the first
 * run (shorter) last. */
static uint64_t cursor_block(void) {
  uint64_t blocks = files[cursor_file].blocks, run = cursor / WALK_RUN, at = cursor % WALK_RUN;
  if (!backward) return cursor;
  return blocks >= (run + 1) * WALK_RUN ? blocks - (run + 1) * WALK_RUN + at : at;
}

/* Plain blocks are checked in the checkpoint file and sent from it, with no copy to stage, while
 * this server holds a read lease on the file: nobody can open it for writing or truncate it
 * without the kernel telling us first, and waiting until we let go. Told so, the server copies
 * every such block into its staged image (checking it again), then lets go (end_direct). */
static int direct_mode;
static int inflight_direct;
static pthread_cond_t direct_idle = PTHREAD_COND_INITIALIZER;
static int lease_fd = -1;
static int lease_sigfd = -1;
#define LEASE_SIGNAL (SIGRTMIN + 1)

/* The blocks' states, shared with CRIU's lazy-pages daemon (checkpt's CRIU patch
 * staged-local-reads.patch) through a file in checkpt's staging directory, CHECKPT_STAGED_MAP:
 * a request whose blocks are all checked is read by the daemon itself, from the staged image or
 * (while direct_ok) from the checkpoint file, instead of crossing this server. The daemon counts
 * itself in `readers` while it reads from the file, so end_direct lets the lease go only after. */
#define SMAP_MAGIC 0x50414d53u
#define SMAP_VERSION 3
struct smap_head {
  uint32_t magic, version, nfiles, server_pid;
  uint32_t direct_ok, readers;
  int32_t ckpt_fd;
  uint32_t pad;
  uint64_t local_pages, checked_pages;
};
struct smap_file {
  uint64_t dev, ino, size, block, blocks, states_off, offsets_off;
  /* BLAKE3 digests of the blocks as stored, 32 bytes each: the daemon checks a fault's block
   * itself; for zstd frames (codec 1) also their stored lengths, a u32 each. */
  uint64_t digests_off, stored_off;
  uint32_t hash, codec;
};
static struct smap_head *smap;

/* Where the copy faults, from the daemon (CRIU's xfer-ordered-by-faults.patch): a ring in a file
 * beside the staged map, `CHECKPT_STAGED_MAP` plus ".hints", made before the map is published.
 * Each slot names the lazy range [lo, hi) of pid around one fault; the newest is at w - 1. */
#define HINTS_MAGIC 0x544e4948u
#define HINT_SLOTS 64
struct hints_ring {
  uint32_t magic, slots;
  uint64_t w;
  struct {
    uint32_t pid, pad;
    uint64_t lo, hi;
  } ring[HINT_SLOTS];
};
static struct hints_ring *hints;

static void load_codecs(void) {
  void *ne = dlopen("libnettle.so.8", RTLD_NOW | RTLD_LOCAL);
  if (ne) {
    sha_init = (void (*)(void *))dlsym(ne, "nettle_sha256_init");
    sha_update = (void (*)(void *, size_t, const uint8_t *))dlsym(ne, "nettle_sha256_update");
    sha_digest = (void (*)(void *, size_t, uint8_t *))dlsym(ne, "nettle_sha256_digest");
  }
  /* Only for zstd frames: loading the library took ~3 ms of the server's start here. */
  void *z = any_zstd ? dlopen("libzstd.so.1", RTLD_NOW | RTLD_LOCAL) : NULL;
  if (z) {
    zstd_decompress = (size_t (*)(void *, size_t, const void *, size_t))dlsym(z, "ZSTD_decompress");
    zstd_is_error = (unsigned (*)(size_t))dlsym(z, "ZSTD_isError");
    zstd_create_dctx = (void *(*)(void))dlsym(z, "ZSTD_createDCtx");
    zstd_decompress_dctx =
        (size_t (*)(void *, void *, size_t, const void *, size_t))dlsym(z, "ZSTD_decompressDCtx");
    zstd_content_size = (unsigned long long (*)(const void *, size_t))dlsym(z, "ZSTD_getFrameContentSize");
  }
}

/* Whether this server checks block b of f itself (else checkpt does, on NEED). */
static int checked_here(const struct file *f, uint64_t b) {
  if (!f->chunks || f->size == 0) return 0;
  if (f->hash == HASH_SHA256 && (!sha_init || !sha_update || !sha_digest)) return 0;
  return f->chunks[b].codec == 0 || (zstd_decompress && zstd_is_error);
}

static void damaged(uint32_t file, uint64_t b, const char *why) {
  fprintf(stderr, "damaged %u %llu %s\n", file, (unsigned long long)b, why);
  fflush(stderr);
  _exit(EXIT_DAMAGED);
}

static void io_failed(const char *what) {
  fprintf(stderr, "%s (%s)\n", what, strerror(errno));
  fflush(stderr);
  _exit(EXIT_PROTOCOL);
}

/* The stored bytes of block b of file fi, from the checkpoint file (through the lease's own fd). */
static void read_chunk(uint32_t fi, uint64_t b, uint8_t *into) {
  const struct chunk *c = &files[fi].chunks[b];
  int fd = lease_fd >= 0 ? lease_fd : CKPT_FD;
  size_t got = 0;
  while (got < c->stored) {
    ssize_t n = pread(fd, into + got, c->stored - got, (off_t)(c->offset + got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) io_failed("reading the checkpoint file failed");
    if (n == 0) damaged(fi, b, "truncated");
    got += (size_t)n;
  }
}

static void hash_check(uint32_t fi, uint64_t b, const uint8_t *bytes) {
  const struct chunk *c = &files[fi].chunks[b];
  uint8_t md[32];
  if (files[fi].hash == HASH_BLAKE3) {
    blake3_hasher h;
    blake3_hasher_init(&h);
    blake3_hasher_update(&h, bytes, c->stored);
    blake3_hasher_finalize(&h, md, sizeof md);
    if (memcmp(md, c->digest, 32)) damaged(fi, b, "blake3");
    return;
  }
  uint64_t ctx[64]; /* nettle's sha256_ctx is smaller */
  sha_init(ctx);
  sha_update(ctx, c->stored, bytes);
  sha_digest(ctx, 32, md);
  if (memcmp(md, c->digest, 32)) damaged(fi, b, "sha256");
}

static void wake_server(uint32_t fi, uint64_t b, int verified) {
  pthread_mutex_lock(&lock);
  done[(done_head + done_len) % done_cap].file = fi;
  done[(done_head + done_len) % done_cap].block = b;
  done[(done_head + done_len) % done_cap].verified = verified;
  done_len++;
  pthread_mutex_unlock(&lock);
  uint64_t one = 1;
  if (write(staged_fd, &one, sizeof one) < 0 && errno != EAGAIN) io_failed("waking the server failed");
}

/* Fault injection for the tests (CHECKPT_FAULT_SLOW_CHECK_MS): each block's check takes this much
 * longer, so that what waits for checking can be seen waiting. */
static long slow_check_ms;

/* The bytes of memory block b of f holds (the last may hold fewer). */
static uint64_t block_bytes(const struct file *f, uint64_t b) {
  return f->size - b * f->block < f->block ? f->size - b * f->block : f->block;
}

static void check_block(uint32_t fi, uint64_t b, uint8_t *raw, int to_map) {
  struct file *f = &files[fi];
  if (slow_check_ms > 0) {
    struct timespec t = {slow_check_ms / 1000, (slow_check_ms % 1000) * 1000000L};
    while (nanosleep(&t, &t) < 0 && errno == EINTR) {
    }
  }
  const struct chunk *c = &f->chunks[b];
  uint64_t want = block_bytes(f, b);
  if (!to_map && c->codec == 0) {
    /* Checked where it lies: the lease keeps the file as it is until the block is copied out. */
    if (c->stored != want) damaged(fi, b, "size");
    read_chunk(fi, b, raw);
    hash_check(fi, b, raw);
    __atomic_store_n(&f->staged[b], STAGED_FILE, __ATOMIC_RELEASE);
    wake_server(fi, b, 0);
    return;
  }
  /* Checked (and decoded) in this thread's buffer, then written to the staged image: a write fills
   * the image's pages without zeroing them first (25-30% less than faulting them in through a
   * mapping), and the image is this server's alone (mode 0600, in checkpt's staging directory),
   * so what is sent from it is what was checked. */
  uint8_t *out = c->codec == 1 ? raw + RAW_OUT : raw;
  if (c->codec == 0 && c->stored != want) damaged(fi, b, "size");
  read_chunk(fi, b, raw);
  hash_check(fi, b, raw);
  if (c->codec == 1) {
    size_t n = decompress_frame(out, want, raw, c->stored);
    if (zstd_is_error(n) || n != want) damaged(fi, b, "zstd");
  }
  for (uint64_t done_bytes = 0; done_bytes < want;) {
    ssize_t n = pwrite(FIRST_FILE_FD + (int)fi, out + done_bytes, want - done_bytes,
                       (off_t)(b * f->block + done_bytes));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) io_failed("writing a staged pages image failed");
    done_bytes += (uint64_t)n;
  }
  __atomic_store_n(&f->staged[b], STAGED_MAP, __ATOMIC_RELEASE);
  wake_server(fi, b, 0);
}

/* A held copy's zstd frames: their stored bytes are checked first, all of them (a tenth of the
 * work of decoding them), and the copy runs once they and every plain block passed; the walk then
 * decodes them behind the copy, the blocks it faults on first. Decoding every frame before the
 * copy ran took a small program's resume ~13 ms of both CPUs. The next frame to check is
 * verify_file/verify_block (under lock); verify_on from --hold until the pass is over. */
static int verify_on;
static uint32_t verify_file;
static uint64_t verify_block;

/* The next frame of the pass nobody has checked, staged or claimed, in *fi and *b; 0 once the pass
 * is over. With the lock held. */
static int next_to_verify(uint32_t *fi, uint64_t *b) {
  for (; verify_on && verify_file < nfiles; verify_file++, verify_block = 0) {
    struct file *f = &files[verify_file];
    if (!f->chunks) continue;
    for (; verify_block < f->blocks; verify_block++) {
      uint64_t vb = verify_block;
      if (f->chunks[vb].codec != 1 || !checked_here(f, vb) || f->claimed[vb] ||
          __atomic_load_n(&f->staged[vb], __ATOMIC_ACQUIRE))
        continue;
      *fi = verify_file;
      *b = verify_block++;
      return 1;
    }
  }
  verify_on = 0;
  return 0;
}

static void verify_frame(uint32_t fi, uint64_t b, uint8_t *raw) {
  const struct chunk *c = &files[fi].chunks[b];
  read_chunk(fi, b, raw);
  hash_check(fi, b, raw);
  /* A frame that says it holds another size than its block would fail its decoding: fail now
   * (ZSTD_CONTENTSIZE_UNKNOWN, -1, says nothing; ZSTD_CONTENTSIZE_ERROR, -2, is no frame). */
  unsigned long long n = zstd_content_size ? zstd_content_size(raw, c->stored) : ~0ULL;
  if (n != ~0ULL && n != block_bytes(&files[fi], b)) damaged(fi, b, "zstd");
  wake_server(fi, b, 1);
}

/* Checks block b of fi, just claimed by the caller, who holds the lock (released here): in the
 * checkpoint file when the lease allows, else into the staged image. */
static void check_claimed(uint32_t fi, uint64_t b, uint8_t *raw) {
  const struct file *f = &files[fi];
  int direct = direct_mode && f->chunks[b].codec == 0 && !f->want_map[b];
  if (direct) inflight_direct++;
  pthread_mutex_unlock(&lock);
  if (!__atomic_load_n(&f->staged[b], __ATOMIC_ACQUIRE)) check_block(fi, b, raw, !direct);
  if (direct) {
    pthread_mutex_lock(&lock);
    if (--inflight_direct == 0) pthread_cond_broadcast(&direct_idle);
    pthread_mutex_unlock(&lock);
  }
}

/* The range of the daemon's hint the walk takes blocks from first (under lock): the next page of
 * [hint_at, hint_hi) in hint_pid's memory. Hints older than the newest few are passed over: the
 * copy has moved on from them. */
static uint64_t hint_r, hint_at, hint_hi;
static uint32_t hint_pid;
#define HINTS_KEPT 4

/* The next block near the copy's latest faults that nobody has checked or claimed, in *fi and
 * *b; 0 if none. With the lock held. */
static int next_hinted(uint32_t *fi, uint64_t *b) {
  if (!hints) return 0;
  for (int budget = 256; budget > 0; budget--) {
    if (hint_at >= hint_hi) {
      uint64_t w = __atomic_load_n(&hints->w, __ATOMIC_ACQUIRE);
      if (hint_r >= w) return 0;
      if (w - hint_r > HINTS_KEPT) hint_r = w - HINTS_KEPT;
      unsigned slot = (unsigned)(hint_r++ % HINT_SLOTS);
      uint64_t lo = hints->ring[slot].lo, hi = hints->ring[slot].hi;
      /* Only an order for the walk, never trusted further: nonsense is passed over. */
      if (lo % PAGE || hi <= lo || hi - lo > (64ULL << 20)) continue;
      hint_pid = hints->ring[slot].pid;
      hint_at = lo;
      hint_hi = hi;
    }
    uint64_t va = hint_at;
    const struct entry *e = locate(hint_pid, va, 1);
    if (!e || e->file >= nfiles) {
      hint_at += PAGE;
      continue;
    }
    struct file *f = &files[e->file];
    uint64_t off = e->offset + (va - e->vaddr), blk = off / f->block;
    /* On to the first page of the next block. */
    hint_at = va - off % f->block + f->block;
    if (blk >= f->blocks || !checked_here(f, blk) || f->claimed[blk] ||
        __atomic_load_n(&f->staged[blk], __ATOMIC_ACQUIRE))
      continue;
    *fi = e->file;
    *b = blk;
    return 1;
  }
  return 0;
}

static void *checker(void *arg) {
  (void)arg;
  uint8_t *raw = malloc(RAW_SIZE);
  if (!raw) io_failed("out of memory for the checker");
  int yielding = 0;
  for (;;) {
    /* Idle priority from the copy's first request on: the blocks it waits for are checked on
     * the serving thread (the head of the queue always is, so nothing starves), and this
     * thread's background work must not take their CPU. SCHED_IDLE, not nice 19: at nice 19 it
     * still took a share of a core from a copy that faults and runs by turns (2 cores: ~20 ms of
     * the heavy app's first answer). Entering it needs no privilege; nothing leaves it. */
    if (!yielding && __atomic_load_n(&copy_runs, __ATOMIC_RELAXED)) {
      yielding = 1;
      struct sched_param idle = {0};
      if (pthread_setschedparam(pthread_self(), SCHED_IDLE, &idle)) setpriority(PRIO_PROCESS, (id_t)gettid(), 19);
    }
    uint32_t f = 0;
    uint64_t b = 0;
    int verifying = 0;
    pthread_mutex_lock(&lock);
    for (;;) {
      if (urgent_len > 0) {
        f = urgent[urgent_head].file;
        b = urgent[urgent_head].block;
        urgent_head = (urgent_head + 1) % urgent_cap;
        urgent_len--;
        if (files[f].claimed[b]) continue;
        break;
      }
      if (next_to_verify(&f, &b)) {
        verifying = 1;
        break;
      }
      if (next_hinted(&f, &b)) break;
      if (walk_held()) continue;
      int found = 0;
      while (cursor_file < nfiles && !found) {
        struct file *cf = &files[cursor_file];
        if (cursor < cf->blocks) {
          b = cursor_block();
          found = checked_here(cf, b) && !cf->claimed[b] && !__atomic_load_n(&cf->staged[b], __ATOMIC_ACQUIRE);
        }
        if (!found && ++cursor >= cf->blocks) {
          cursor_file++;
          cursor = 0;
        }
      }
      if (found) {
        f = cursor_file;
        static int walked;
        if (!walked) {
          walked = 1;
          bench_trace("s-walk");
        }
        break;
      }
      pthread_cond_wait(&wake, &lock);
    }
    if (verifying) {
      /* Not claimed: the walk still decodes it. */
      pthread_mutex_unlock(&lock);
      verify_frame(f, b, raw);
      continue;
    }
    files[f].claimed[b] = 1;
    check_claimed(f, b, raw);
  }
  return NULL;
}

/* native/fdio.h's, which this file cannot include: its write_all is another. */
ssize_t read_proc(pid_t pid, const char *name, char *buf, size_t size);

/* For the trace only, when no lease could be had (EAGAIN: open for writing): each process that
 * holds the file open for writing, as "s-writer-PID-COMM". */
static void trace_writers(int fd) {
  struct stat want;
  DIR *procs = getenv("CHECKPT_BENCH_TRACE") && fstat(fd, &want) == 0 ? opendir("/proc") : NULL;
  if (!procs) return;
  struct dirent *p;
  while ((p = readdir(procs))) {
    if (p->d_name[0] < '0' || p->d_name[0] > '9') continue;
    pid_t pid = (pid_t)atoi(p->d_name);
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *fds = opendir(path);
    if (!fds) continue;
    struct dirent *e;
    while ((e = readdir(fds))) {
      struct stat st;
      char at[330], info[1024];
      snprintf(at, sizeof at, "%s/%s", path, e->d_name);
      if (e->d_name[0] == '.' || stat(at, &st) || st.st_dev != want.st_dev || st.st_ino != want.st_ino) continue;
      snprintf(at, sizeof at, "fdinfo/%s", e->d_name);
      if (read_proc(pid, at, info, sizeof info) < 0) continue;
      const char *flags = strstr(info, "flags:");
      if (!flags || !(strtoul(flags + 6, NULL, 8) & (O_WRONLY | O_RDWR))) continue;
      char comm[32] = "?", line[96];
      ssize_t n = read_proc(pid, "comm", comm, sizeof comm);
      if (n > 0 && comm[n - 1] == '\n') comm[n - 1] = 0;
      snprintf(line, sizeof line, "s-writer-%d-%s", (int)pid, comm);
      bench_trace(line);
    }
    closedir(fds);
  }
  closedir(procs);
}

/* Takes the read lease on a description of the checkpoint file of this server's own (one shared
 * with checkpt would outlive this process), with its break reported on a signalfd. */
static void take_lease(void) {
  int any = 0;
  for (uint32_t i = 0; i < nfiles; i++) any |= files[i].chunks != NULL;
  if (!any || !sha_init || !sha_update || !sha_digest) return;
  int fd = open("/proc/self/fd/5", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, LEASE_SIGNAL);
  /* Blocked before the checker threads start, so they inherit it and only the signalfd sees it. */
  pthread_sigmask(SIG_BLOCK, &set, NULL);
  int sfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
  /* No lease where the file system has none, or the file is open for writing: staged as before. */
  if (sfd < 0 || fcntl(fd, F_SETSIG, LEASE_SIGNAL) < 0 || fcntl(fd, F_SETLEASE, F_RDLCK) < 0) {
    int why = errno;
    char line[32];
    snprintf(line, sizeof line, "s-no-lease-errno-%d", why);
    bench_trace(line);
    if (why == EAGAIN) trace_writers(fd);
    if (sfd >= 0) close(sfd);
    close(fd);
    return;
  }
  bench_trace("s-lease");
  lease_fd = fd;
  lease_sigfd = sfd;
  direct_mode = 1;
  if (smap) {
    smap->ckpt_fd = fd;
    __atomic_store_n(&smap->direct_ok, 1, __ATOMIC_SEQ_CST);
  }
}

/* Whether the daemon may check f's blocks itself (staged-local-reads.patch): chunks of 64 KiB at
 * most with BLAKE3 digests, all plain (the stored bytes are the memory) or all zstd frames. */
static int self_checkable(const struct file *f) {
  if (!f->chunks || f->hash != HASH_BLAKE3 || f->block > (64u << 10)) return 0;
  for (uint64_t b = 0; b < f->blocks; b++) {
    uint64_t want = block_bytes(f, b);
    if (f->chunks[b].codec != f->chunks[0].codec || f->chunks[b].codec > 1) return 0;
    if (f->chunks[b].codec == 0 && f->chunks[b].stored != want) return 0;
  }
  return 1;
}

/* The ring the daemon writes its faults to (struct hints_ring), beside the map at map_path; none
 * when it cannot be made, and the walk keeps its own order. */
static void share_hints(const char *map_path) {
  char path[PATH_MAX];
  if (snprintf(path, sizeof path, "%s.hints", map_path) >= (int)sizeof path) return;
  int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return;
  void *m = ftruncate(fd, sizeof *hints) == 0 ? mmap(NULL, sizeof *hints, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) : MAP_FAILED;
  close(fd);
  if (m == MAP_FAILED) {
    unlink(path);
    return;
  }
  hints = m;
  hints->slots = HINT_SLOTS;
  hints->magic = HINTS_MAGIC;
}

/* Moves the blocks' states into the map shared with the daemon; without one (no variable, no
 * room) the daemon asks this server for every page, as CRIU alone does. */
static void share_states(void) {
  const char *path = getenv("CHECKPT_STAGED_MAP");
  if (!path || !*path) return;
  uint64_t size = sizeof(struct smap_head) + (uint64_t)nfiles * sizeof(struct smap_file);
  for (uint32_t i = 0; i < nfiles; i++) {
    size += (files[i].blocks + 8) & ~7ULL;
    if (files[i].chunks) size += 8 * files[i].blocks;
    files[i].self_check = self_checkable(&files[i]);
    if (files[i].self_check) size += 32 * files[i].blocks + ((4 * files[i].blocks + 7) & ~7ULL);
  }
  /* Laid out here and written in one call: filled through the shared mapping, each of its pages
   * cost a fault on the guest (1.5 MB for 2 GB of memory: ~7 ms of the server's start). */
  uint8_t *buf = bigmem_alloc(size);
  if (!buf) return;
  int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    bigmem_free(buf, size);
    return;
  }
  struct smap_head *h = (struct smap_head *)buf;
  struct smap_file *mf = (struct smap_file *)(h + 1);
  uint64_t at = sizeof *h + (uint64_t)nfiles * sizeof *mf;
  for (uint32_t i = 0; i < nfiles; i++) {
    struct file *f = &files[i];
    struct stat st;
    /* Matched by the daemon to the pages image it has open; a file it cannot match is asked for. */
    if (fstat(FIRST_FILE_FD + (int)i, &st) == 0) {
      mf[i].dev = (uint64_t)st.st_dev;
      mf[i].ino = (uint64_t)st.st_ino;
    }
    mf[i].size = f->size;
    mf[i].block = f->block;
    mf[i].blocks = f->blocks;
    mf[i].states_off = at;
    memcpy(buf + at, f->staged, f->blocks);
    at += (f->blocks + 8) & ~7ULL;
    if (f->chunks) {
      mf[i].offsets_off = at;
      uint64_t *offsets = (uint64_t *)(buf + at);
      for (uint64_t b = 0; b < f->blocks; b++) offsets[b] = f->chunks[b].offset;
      at += 8 * f->blocks;
    }
    if (f->self_check) {
      mf[i].digests_off = at;
      mf[i].hash = HASH_BLAKE3;
      for (uint64_t b = 0; b < f->blocks; b++) memcpy(buf + at + 32 * b, f->chunks[b].digest, 32);
      at += 32 * f->blocks;
      mf[i].codec = f->chunks[0].codec;
      if (mf[i].codec == 1) {
        mf[i].stored_off = at;
        for (uint64_t b = 0; b < f->blocks; b++) memcpy(buf + at + 4 * b, &f->chunks[b].stored, 4);
      }
      at += (4 * f->blocks + 7) & ~7ULL;
    }
  }
  h->version = SMAP_VERSION;
  h->nfiles = nfiles;
  h->server_pid = (uint32_t)getpid();
  h->ckpt_fd = -1;
  /* magic stays 0 in the file until the map is published below. */
  uint64_t done = 0;
  while (done < size) {
    ssize_t n = pwrite(fd, buf + done, (size_t)(size - done), (off_t)done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    done += (uint64_t)n;
  }
  void *m = done == size ? mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) : MAP_FAILED;
  close(fd);
  bigmem_free(buf, size);
  if (m == MAP_FAILED) {
    unlink(path);
    return;
  }
  h = m;
  mf = (struct smap_file *)(h + 1);
  for (uint32_t i = 0; i < nfiles; i++) {
    free(files[i].staged);
    files[i].staged = (uint8_t *)m + mf[i].states_off;
  }
  share_hints(path);
  smap = h;
  __atomic_store_n(&h->magic, SMAP_MAGIC, __ATOMIC_RELEASE);
}

/* Waits until the daemon reads nothing from the checkpoint file and will not start to. A daemon
 * stopped in the middle of such a read would see the file change: the copy is stopped instead. */
static void stop_daemon_direct(void) {
  if (!smap) return;
  __atomic_store_n(&smap->direct_ok, 0, __ATOMIC_SEQ_CST);
  int64_t t0 = clock_ns(CLOCK_MONOTONIC);
  while (__atomic_load_n(&smap->readers, __ATOMIC_SEQ_CST)) {
    if (clock_ns(CLOCK_MONOTONIC) - t0 > 2000000000L) {
      fprintf(stderr, "CRIU's lazy-pages daemon did not finish reading the checkpoint file within 2 s of a writer opening it\n");
      fflush(stderr);
      _exit(EXIT_PROTOCOL);
    }
    usleep(20);
  }
}

static void start_checker(int stage_only, int held) {
  load_codecs();
  backward = !stage_only;
  if (!stage_only) take_lease();
  uint64_t total = 0;
  for (uint32_t i = 0; i < nfiles; i++) total += files[i].blocks;
  urgent_cap = total + 1;
  urgent = calloc(urgent_cap, sizeof *urgent);
  /* A block is reported at most twice: checked in the file, then copied out, or verified, then decoded. */
  done_cap = 2 * urgent_cap;
  verify_on = held && !stage_only;
  lazy_serving = !held && !stage_only && !any_zstd;
  checkers_at_ns = clock_ns(CLOCK_MONOTONIC);
  done = calloc(done_cap, sizeof *done);
  staged_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (!urgent || !done || staged_fd < 0) fail("cannot start the checker (%s)", strerror(errno));
  /* Half the CPUs (1 to 4): the copy, CRIU and its daemon need the rest while it runs; all of
   * them (up to 4) for staging before CRIU starts, when nothing else runs, and for a small copy
   * held until every block is checked: it runs none of its code before, and CRIU waits for it. */
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  long threads = stage_only || held ? (cpus > 4 ? 4 : cpus < 1 ? 1 : cpus) : cpus >= 8 ? 4 : cpus >= 4 ? cpus / 2 : 1;
  for (long i = 0; i < threads; i++) {
    pthread_t t;
    if (pthread_create(&t, NULL, checker, NULL)) fail("cannot start the checker thread");
    pthread_detach(t);
  }
}

static void ask_checker(uint32_t file, uint64_t b) {
  pthread_mutex_lock(&lock);
  urgent[(urgent_head + urgent_len) % urgent_cap].file = file;
  urgent[(urgent_head + urgent_len) % urgent_cap].block = b;
  urgent_len++;
  pthread_cond_signal(&wake);
  pthread_mutex_unlock(&lock);
}

/* Has block b of f staged: by the checker (first in line), or by checkpt (NEED). */
static void ask(uint32_t fi, uint64_t b) {
  struct file *f = &files[fi];
  if (f->asked[b]) return;
  f->asked[b] = 1;
  if (checked_here(f, b)) ask_checker(fi, b);
  else send_ctl(MSG_NEED, fi, b);
}

/* Copies a block checked in the checkpoint file into its staged image, checked again (main thread:
 * nothing is sending from the file meanwhile). */
static void materialize(uint32_t fi, uint64_t b) {
  static uint8_t *raw;
  if (!raw && !(raw = malloc(RAW_SIZE))) io_failed("out of memory for staging");
  check_block(fi, b, raw, 1);
}

/* The lease is being broken (someone opens the file for writing): every block checked in the file
 * is copied out and checked again before the lease is let go, and the rest is staged from now on. */
static void end_direct(void) {
  bench_trace("s-lease-broken");
  struct signalfd_siginfo si;
  while (read(lease_sigfd, &si, sizeof si) > 0) {
  }
  pthread_mutex_lock(&lock);
  direct_mode = 0;
  while (inflight_direct > 0) pthread_cond_wait(&direct_idle, &lock);
  pthread_mutex_unlock(&lock);
  stop_daemon_direct();
  for (uint32_t i = 0; i < nfiles; i++)
    for (uint64_t b = 0; b < files[i].blocks; b++)
      if (__atomic_load_n(&files[i].staged[b], __ATOMIC_ACQUIRE) == STAGED_FILE) materialize(i, b);
  fcntl(lease_fd, F_SETLEASE, F_UNLCK);
  close(lease_sigfd);
  lease_sigfd = -1;
}

/* What CRIU's restore reads itself is staged: CRIU may start, and the background may yield. */
static void eager_staged(void) {
  bench_trace("s-eager");
  if (held_left < 0) copy_starts();
  send_ctl(MSG_EAGER_STAGED, 0, 0);
}

/* Answers a STAGE request for block b of fi once the block is in its staged image. */
static void report_if_staged(uint32_t fi, uint64_t b) {
  struct file *f = &files[fi];
  if (!f->report[b]) return;
  uint8_t st = __atomic_load_n(&f->staged[b], __ATOMIC_ACQUIRE);
  if (st == STAGED_NO) return;
  /* CRIU's restore reads it from the staged image. */
  if (st == STAGED_FILE) materialize(fi, b);
  int eager = f->report[b] == 2;
  f->report[b] = 0;
  send_ctl(MSG_STAGED, fi, b);
  if (eager && --eager_left == 0) eager_staged();
}

/* Ends the hold without a verdict: a script still waiting reads end-of-file and fails its step. */
static void hold_over(void) {
  if (hold_listen >= 0) close(hold_listen);
  if (hold_conn >= 0) close(hold_conn);
  hold_listen = hold_conn = -1;
}

/* '1' to the waiting script once it has said its step and every block passed its check. */
static void hold_answer(void) {
  if (hold_conn < 0 || !hold_greeted || held_left != 0) return;
  ssize_t w;
  do w = send(hold_conn, "1", 1, MSG_NOSIGNAL); while (w < 0 && errno == EINTR);
  hold_over();
}

/* The listener is readable: the script's connection (one; the listener is closed then). */
static void hold_accept(void) {
  int c = accept4(hold_listen, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
  if (c < 0) {
    if (errno == EINTR || errno == EAGAIN || errno == ECONNABORTED) return;
    fail("the post-restore step could not connect (%s)", strerror(errno));
  }
  close(hold_listen);
  hold_listen = -1;
  hold_conn = c;
}

/* The script's connection is readable: its step's name, or its end. */
static void hold_read(void) {
  char buf[64];
  ssize_t n = read(hold_conn, buf, sizeof buf);
  if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
  if (n <= 0) {
    hold_over();
    return;
  }
  hold_greeted = 1;
  hold_answer();
}

/* Counts block b of fi as checked for MSG_CHECK_ALL, once it is. */
static void release_if_checked(uint32_t fi, uint64_t b) {
  struct file *f = &files[fi];
  if (!f->held || !f->held[b] || (__atomic_load_n(&f->staged[b], __ATOMIC_ACQUIRE) == STAGED_NO && !f->verified[b]))
    return;
  f->held[b] = 0;
  if (--held_left == 0) {
    send_ctl(MSG_ALL_CHECKED, 0, 0);
    hold_answer();
  }
}

/* MSG_CHECK_ALL: a copy held until all of its memory is checked (a small image restored lazily:
 * none of it may run on a damaged image). The checker walks every block anyway; this asks
 * checkpt for those it checks itself and says MSG_ALL_CHECKED once every block passed. */
static void check_all(void) {
  if (held_left >= 0) fail("checkpt sent a malformed message");
  held_left = 1;
  for (uint32_t fi = 0; fi < nfiles; fi++) {
    struct file *f = &files[fi];
    if (!f->blocks) continue;
    if (!(f->held = calloc(f->blocks, 1))) fail("out of memory for the plan");
    for (uint64_t b = 0; b < f->blocks; b++) {
      if (__atomic_load_n(&f->staged[b], __ATOMIC_ACQUIRE) != STAGED_NO || f->verified[b]) continue;
      f->held[b] = 1;
      held_left++;
      /* The checker's walk reaches the others. */
      if (!checked_here(f, b)) ask(fi, b);
    }
  }
  if (--held_left == 0) {
    send_ctl(MSG_ALL_CHECKED, 0, 0);
    hold_answer();
  }
}

/* MSG_STAGE_EAGER: stages what `criu restore` reads itself (all of it without a daemon), as if
 * each block had been asked for with STAGE (each answered with STAGED, for checkpt's progress),
 * and says MSG_EAGER_STAGED once, when all are. */
static void stage_eager(int stage_only) {
  if (eager_left >= 0) fail("checkpt sent a malformed message");
  eager_left = 1;
  for (uint32_t fi = 0; fi < nfiles; fi++) {
    struct file *f = &files[fi];
    for (uint64_t b = 0; b < f->blocks; b++) {
      if (!stage_only && !(f->eager && f->eager[b])) continue;
      if (f->report[b]) continue;
      pthread_mutex_lock(&lock);
      f->want_map[b] = 1;
      pthread_mutex_unlock(&lock);
      f->report[b] = 2;
      eager_left++;
      ask(fi, b);
      report_if_staged(fi, b);
    }
  }
  if (--eager_left == 0) eager_staged();
}

/* Answers the STAGE requests among the blocks staged since the last look. */
static void report_staged(void) {
  for (;;) {
    pthread_mutex_lock(&lock);
    if (done_len == 0) {
      pthread_mutex_unlock(&lock);
      return;
    }
    uint32_t fi = done[done_head].file;
    uint64_t b = done[done_head].block;
    int verified = done[done_head].verified;
    done_head = (done_head + 1) % done_cap;
    done_len--;
    pthread_mutex_unlock(&lock);
    if (verified) files[fi].verified[b] = 1;
    report_if_staged(fi, b);
    release_if_checked(fi, b);
  }
}

/* Whether every block of the request is staged; asks for the ones not asked for yet, first. */
/* Checks block b of fi on this thread unless a checker has it already; whether it did. */
static int check_here_now(uint32_t fi, uint64_t b) {
  static uint8_t *raw;
  struct file *f = &files[fi];
  if (!checked_here(f, b)) return 0;
  if (!raw && !(raw = malloc(RAW_SIZE))) io_failed("out of memory for checking");
  pthread_mutex_lock(&lock);
  if (f->claimed[b]) {
    pthread_mutex_unlock(&lock);
    return 0;
  }
  f->claimed[b] = 1;
  check_claimed(fi, b, raw);
  return 1;
}

/* Whether every block of the request is staged; asks for the ones not asked for yet, first. A
 * page fault's one block is checked right here: handing it to a checker thread and back costs two
 * wake-ups, more than checking 64 KiB. So is every block of the request at the head of the queue
 * (`head`): everything behind it waits for it, and the checkers yield to the copy. */
static int ready(const struct request *r, int head) {
  struct file *f = &files[r->file];
  int all = 1;
  int here = head || (r->length <= f->block && f->block <= (256u << 10));
  for (uint64_t b = r->offset / f->block; b * f->block < r->offset + r->length; b++) {
    if (__atomic_load_n(&f->staged[b], __ATOMIC_ACQUIRE)) continue;
    if (here && check_here_now(r->file, b)) continue;
    all = 0;
    ask(r->file, b);
  }
  return all;
}

static void answer(const struct request *r) {
  uint8_t head[IOV_SIZE];
  memcpy(head, r->head, IOV_SIZE);
  uint32_t cmd = (PE_PRESENT << 16) | PS_IOV_ADD_F;
  memcpy(head, &cmd, 4);
  memset(head + 4, 0, 4);
  write_all(DAEMON_FD, head, IOV_SIZE, 1);
  const struct file *f = &files[r->file];
  uint64_t at = r->offset, end = r->offset + r->length;
  while (at < end) {
    /* Block by block: each from where it was checked. */
    uint64_t fb = f->block, b = at / fb, seg = (b + 1) * fb < end ? (b + 1) * fb - at : end - at;
    int from_file = __atomic_load_n(&f->staged[b], __ATOMIC_ACQUIRE) == STAGED_FILE;
    int fd = from_file ? lease_fd : FIRST_FILE_FD + (int)r->file;
    off_t pos = (off_t)(from_file ? f->chunks[b].offset + (at - b * fb) : at);
    while (seg > 0) {
      ssize_t n = sendfile(DAEMON_FD, fd, &pos, seg);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) peer_gone(errno);
      if (n == 0) fail("a pages image is shorter than its plan");
      seg -= (uint64_t)n;
      at += (uint64_t)n;
    }
  }
}

/* Answers the queue from its head for as long as the head is ready; a goodbye ends the server. */
static void serve_queue(void) {
  while (qlen > 0) {
    struct request *r = &queue[qhead];
    if (r->close) {
      int32_t status = 0;
      write_all(DAEMON_FD, &status, sizeof status, 0);
      shutdown(DAEMON_FD, SHUT_WR);
      leave(EXIT_CLOSED);
    }
    if (!ready(r, 1)) return;
    answer(r);
    qhead = (qhead + 1) % MAX_QUEUED;
    qlen--;
  }
}

static void take_request(const uint8_t *iov) {
  uint32_t cmd = u32(iov);
  uint64_t nr = u64(iov + 8), vaddr = u64(iov + 16), dst = u64(iov + 24);
  struct request *r = &queue[(qhead + qlen) % MAX_QUEUED];
  memset(r, 0, sizeof *r);
  memcpy(r->head, iov, IOV_SIZE);
  switch (cmd & PS_CMD_MASK) {
  case PS_IOV_CLOSE:
  case PS_IOV_FORCE_CLOSE:
    r->close = 1;
    closing = 1;
    break;
  case PS_IOV_GET: {
    const struct entry *e = dst <= 0x7fffffff ? locate(dst, vaddr, nr) : NULL;
    if (!e)
      fail("asked for %llu pages at 0x%llx of pid %llu, which its page map does not hold as lazy memory",
           (unsigned long long)nr, (unsigned long long)vaddr, (unsigned long long)dst);
    r->file = e->file;
    r->offset = e->offset + (vaddr - e->vaddr);
    r->length = nr * PAGE;
    break;
  }
  default:
    fail("sent an unknown command (%u)", cmd);
  }
  qlen++;
  copy_starts();
  /* Asked for at once, so checkpt stages it while earlier answers go out. */
  if (!r->close) ready(r, 0);
}

/* checkpt's control messages; buffered across reads. Returns once what was there is handled. */
static uint8_t ctl[MSG_SIZE * 256];
static size_t ctllen;

static void read_ctl(int stage_only) {
  ssize_t n = read(CTL_FD, ctl + ctllen, sizeof ctl - ctllen);
  if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
  /* Staging only: checkpt closes its end when it has what it asked for. */
  if (n <= 0) exit(stage_only ? EXIT_CLOSED : EXIT_GONE);
  ctllen += (size_t)n;
  size_t at = 0;
  for (; ctllen - at >= MSG_SIZE; at += MSG_SIZE) {
    uint32_t type = u32(ctl + at), file = u32(ctl + at + 4);
    uint64_t blk = u64(ctl + at + 8);
    if (type == MSG_STAGE_EAGER && plan_flags & PLAN_PAGEMAPS) {
      stage_eager(stage_only);
      continue;
    }
    if (type == MSG_CHECK_ALL && !stage_only) {
      check_all();
      continue;
    }
    if (type == MSG_HOLD_OVER) {
      hold_over();
      continue;
    }
    if ((type != MSG_STAGED && type != MSG_STAGE) || file >= nfiles || blk >= files[file].blocks)
      fail("checkpt sent a malformed message");
    if (type == MSG_STAGED) {
      __atomic_store_n(&files[file].staged[blk], STAGED_MAP, __ATOMIC_RELEASE);
      report_if_staged(file, blk);
      release_if_checked(file, blk);
      continue;
    }
    /* A block this server cannot check here (no Nettle or libzstd) comes back as NEED. */
    pthread_mutex_lock(&lock);
    files[file].want_map[blk] = 1;
    pthread_mutex_unlock(&lock);
    files[file].report[blk] = 1;
    ask(file, blk);
    report_if_staged(file, blk);
  }
  memmove(ctl, ctl + at, ctllen - at);
  ctllen -= at;
}

/* One wait of the serving loop (daemon_fd -1 once the daemon is gone): control messages, the
 * checker's staged blocks, the end of a direct read's lease, the hold; whether the daemon's
 * socket is readable. */
static int wait_once(int daemon_fd, int stage_only) {
  struct pollfd p[6] = {{CTL_FD, POLLIN, 0},
                        {daemon_fd, qlen < MAX_QUEUED ? POLLIN : 0, 0},
                        {staged_fd, POLLIN, 0},
                        {lease_sigfd, POLLIN, 0},
                        {hold_listen, POLLIN, 0},
                        {hold_conn, POLLIN, 0}};
  if (poll(p, 6, -1) < 0) {
    if (errno == EINTR) return 0;
    fail("poll failed (%s)", strerror(errno));
  }
  if (p[3].revents) end_direct();
  if (p[2].revents) {
    uint64_t n;
    if (read(staged_fd, &n, sizeof n) < 0 && errno != EAGAIN) fail("poll failed (%s)", strerror(errno));
    report_staged();
  }
  if (p[4].revents && hold_listen >= 0) hold_accept();
  if (p[5].revents && hold_conn >= 0) hold_read();
  if (p[0].revents) read_ctl(stage_only);
  return p[1].revents != 0;
}

/* The daemon is done (`code`): exits, once a hold still pending is over (see hold_listen). */
static void leave(int code) {
  while (hold_listen >= 0 || hold_conn >= 0) wait_once(-1, 0);
  if (smap) {
    /* The pages the daemon read itself, and of those the ones it checked itself. */
    char line[64];
    snprintf(line, sizeof line, "local-pages-%llu", (unsigned long long)__atomic_load_n(&smap->local_pages, __ATOMIC_RELAXED));
    bench_trace(line);
    snprintf(line, sizeof line, "checked-pages-%llu", (unsigned long long)__atomic_load_n(&smap->checked_pages, __ATOMIC_RELAXED));
    bench_trace(line);
  }
  exit(code);
}

/* Listens at `path` (in checkpt's 0700 staging directory) for CRIU's post-restore script, before
 * checkpt can start the restore: checkpt waits for this server's first answers first. */
static void hold_listen_at(const char *path) {
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof a.sun_path) fail("the hold socket's path is too long: %s", path);
  strcpy(a.sun_path, path);
  hold_listen = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (hold_listen < 0 || bind(hold_listen, (struct sockaddr *)&a, sizeof a) < 0 || listen(hold_listen, 1) < 0)
    fail("cannot listen for the post-restore step at %s (%s)", path, strerror(errno));
}

int cmd_serve_pages(int stage_only, const char *pagemaps, const char *hold, int off_cpu) {
  signal(SIGPIPE, SIG_IGN);
  /* Node made the daemon's socket non-blocking; only this process holds it now. The control
   * socket stays as it is: checkpt's event loop shares it. */
  int fl = stage_only ? 0 : fcntl(DAEMON_FD, F_GETFL);
  if (fl < 0 || (!stage_only && fcntl(DAEMON_FD, F_SETFL, fl & ~O_NONBLOCK) < 0))
    fail("no socket to serve (%s)", strerror(errno));
  if (hold && !stage_only) hold_listen_at(hold);
  const char *slow = getenv("CHECKPT_FAULT_SLOW_CHECK_MS");
  slow_check_ms = slow ? atol(slow) : 0;
  bench_trace("s-start");
  read_plan();
  bench_trace("s-plan");
  if (!pagemaps != !(plan_flags & PLAN_PAGEMAPS)) fail("the plan from checkpt is malformed");
  if (pagemaps) read_pagemaps(pagemaps);
  bench_trace("s-maps");
  /* What checkpt staged already (what restore reads itself shares blocks with lazy memory). */
  for (;;) {
    uint8_t m[MSG_SIZE];
    read_ctl_exact(m, MSG_SIZE);
    uint32_t type = u32(m), file = u32(m + 4);
    uint64_t blk = u64(m + 8);
    if (type == MSG_PLANNED) break;
    if (type != MSG_STAGED || file >= nfiles || blk >= files[file].blocks)
      fail("checkpt sent a malformed message");
    files[file].staged[blk] = 1;
  }
  if (!stage_only) share_states();
  bench_trace("s-share");
  /* Off CPU off_cpu from here on, the checker thread with it (it inherits this thread's CPUs). */
  cpu_set_t cpus;
  if (off_cpu >= 0 && off_cpu < CPU_SETSIZE && sched_getaffinity(0, sizeof cpus, &cpus) == 0) {
    CPU_CLR(off_cpu, &cpus);
    if (CPU_COUNT(&cpus) > 0) sched_setaffinity(0, sizeof cpus, &cpus);
  }
  start_checker(stage_only, hold != NULL);
  bench_trace("s-checker");
  int daemon_open = !stage_only;
  for (;;) {
    serve_queue();
    size_t at = 0;
    for (; inlen - at >= IOV_SIZE && qlen < MAX_QUEUED; at += IOV_SIZE) take_request(in + at);
    memmove(in, in + at, inlen - at);
    inlen -= at;
    if (at > 0) continue;
    if (!daemon_open && !stage_only) {
      /* After its goodbye the daemon may go without waiting for what it asked before it. */
      if (closing) leave(EXIT_CLOSED);
      if (qlen > 0) fail("hung up with requests unanswered");
      leave(EXIT_HUNG_UP);
    }
    if (!wait_once(daemon_open ? DAEMON_FD : -1, stage_only)) continue;
    ssize_t n = recv(DAEMON_FD, in + inlen, sizeof in - inlen, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail("connection failed (%s)", strerror(errno));
    if (n == 0) {
      daemon_open = 0;
      continue;
    }
    inlen += (size_t)n;
  }
}
