/*
 * The resume front's reader of a checkpoint file: format 2, plain, memory in the file
 * (src/image/layout.ts). Checks what src/image/read.ts (parseFile, lazy), trust.ts and
 * extract.ts (extractLazy) check, in the same order, with the same limits, and unpacks the inline
 * entries as extractLazy does; see front-image.h. Every number read from the file is checked
 * against what is left of the hashed range before it is used or anything is allocated for it.
 */
#define _GNU_SOURCE
#include "front-image.h"
#include "bigmem.h"
#include "fdio.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define PREFIX_LEN 16u
#define TAIL_LEN 48u /* u64 D | "CKPTEND\n" | SHA-256 */
#define MIN_FILE_V2 (PREFIX_LEN + 8u + TAIL_LEN)
#define FLAG_ENCRYPTED 1u
#define FLAG_STORE 2u
#define FLAG_BLAKE3 4u
#define KNOWN_FLAGS (FLAG_ENCRYPTED | FLAG_STORE | FLAG_BLAKE3)
#define MAX_PLAUSIBLE_VERSION 0xffffu
#define MAX_MANIFEST (1024u * 1024u)
#define MAX_ENTRIES 100000u
#define MAX_NAME 255u
#define MIN_ENTRY 11u
#define MIN_MEM_CHUNK 4096u
#define MAX_MEM_CHUNK (64u * 1024u * 1024u)
#define ROW 36u
/* Small reads go through this window; a take this large or more is read straight into place. */
#define WINDOW (64u * 1024u)
#define MAX_INLINE_KEPT (256u << 20)
#define KIND_INLINE 0
#define KIND_CHUNKED 1

static const uint8_t MAGIC[8] = {'C', 'H', 'E', 'C', 'K', 'P', 'T', '\n'};
static const uint8_t TRAILER[8] = {'C', 'K', 'P', 'T', 'E', 'N', 'D', '\n'};

/* SHA-256 from libnettle, loaded as page-server.c does (its sha256_ctx is smaller than this). */
typedef uint64_t sha_ctx[64];
static void (*sha_init)(void *);
static void (*sha_update)(void *, size_t, const uint8_t *);
static void (*sha_digest)(void *, size_t, uint8_t *);

static int load_sha(void) {
  static int tried;
  if (!tried) {
    tried = 1;
    void *ne = dlopen("libnettle.so.8", RTLD_NOW | RTLD_LOCAL);
    if (ne) {
      sha_init = (void (*)(void *))dlsym(ne, "nettle_sha256_init");
      sha_update = (void (*)(void *, size_t, const uint8_t *))dlsym(ne, "nettle_sha256_update");
      sha_digest = (void (*)(void *, size_t, uint8_t *))dlsym(ne, "nettle_sha256_digest");
    }
  }
  return sha_init && sha_update && sha_digest;
}

/* Fills `why` (control characters of a hostile name shown as '?') and returns `code`. */
__attribute__((format(printf, 4, 5)))
static int say(char *why, size_t whylen, int code, const char *fmt, ...) {
  if (why && whylen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, whylen, fmt, ap);
    va_end(ap);
    for (char *p = why; *p; p++)
      if ((unsigned char)*p < 0x20 || *p == 0x7f) *p = '?';
  }
  return code;
}

static uint16_t be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t be32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static uint64_t be64(const uint8_t *p) { return (uint64_t)be32(p) << 32 | be32(p + 4); }

/* Exactly n bytes at off: 0; -1 with errno on an error; 1 when the file ends first. */
static int pread_full(int fd, void *buf, size_t n, uint64_t off) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = pread(fd, (char *)buf + got, n - got, (off_t)(off + got));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return -1;
    if (r == 0) return 1;
    got += (size_t)r;
  }
  return 0;
}

#define SHRANK "it became shorter while it was being read; make sure nothing is writing to it and try again"

/* ---- UTF-8 (TextDecoder fatal) and JSON (JSON.parse) ---- */

static int utf8_ok(const uint8_t *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    uint8_t c = s[i];
    if (c < 0x80) { i++; continue; }
    size_t more;
    uint8_t lo = 0x80, hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) more = 1;
    else if (c >= 0xe0 && c <= 0xef) {
      more = 2;
      if (c == 0xe0) lo = 0xa0;
      if (c == 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      more = 3;
      if (c == 0xf0) lo = 0x90;
      if (c == 0xf4) hi = 0x8f;
    } else return 0;
    if (n - i <= more) return 0;
    if (s[i + 1] < lo || s[i + 1] > hi) return 0;
    for (size_t k = 2; k <= more; k++)
      if (s[i + k] < 0x80 || s[i + k] > 0xbf) return 0;
    i += more + 1;
  }
  return 1;
}

/* A top-level member of the manifest that src/engine/manifest.ts reads. */
enum { M_ABSENT = 0, M_NULL, M_NUMBER, M_OTHER };
struct member { int kind; size_t at; /* M_NUMBER: where its literal starts */ };
struct members { struct member packed, image; };

static size_t json_ws(const uint8_t *b, size_t n, size_t i) {
  while (i < n && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r')) i++;
  return i;
}

static int hexval(uint8_t c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* The string at b[*ip] == '"'; *ip ends after it. With key: the first 15 units if all ASCII
 * (*keylen), else *keylen = 16 (matches no name looked for). */
static int json_string(const uint8_t *b, size_t n, size_t *ip, char *key, size_t *keylen) {
  size_t i = *ip + 1, kl = 0;
  for (;;) {
    if (i >= n) return 0;
    uint8_t c = b[i];
    unsigned unit;
    if (c == '"') break;
    if (c < 0x20) return 0;
    if (c == '\\') {
      if (i + 1 >= n) return 0;
      uint8_t e = b[i + 1];
      i += 2;
      switch (e) {
        case '"': unit = '"'; break;
        case '\\': unit = '\\'; break;
        case '/': unit = '/'; break;
        case 'b': unit = '\b'; break;
        case 'f': unit = '\f'; break;
        case 'n': unit = '\n'; break;
        case 'r': unit = '\r'; break;
        case 't': unit = '\t'; break;
        case 'u':
          if (n - i < 4) return 0;
          unit = 0;
          for (int k = 0; k < 4; k++) {
            int h = hexval(b[i + k]);
            if (h < 0) return 0;
            unit = unit << 4 | (unsigned)h;
          }
          i += 4;
          break;
        default: return 0;
      }
    } else {
      unit = c;
      i++;
    }
    if (key) {
      if (unit >= 0x80 || kl >= 15) kl = 16;
      else key[kl++] = (char)unit;
    }
  }
  *ip = i + 1;
  if (key) *keylen = kl;
  return 1;
}

static int json_number(const uint8_t *b, size_t n, size_t *ip) {
  size_t i = *ip;
  if (i < n && b[i] == '-') i++;
  if (i >= n) return 0;
  if (b[i] == '0') i++;
  else if (b[i] >= '1' && b[i] <= '9')
    while (i < n && b[i] >= '0' && b[i] <= '9') i++;
  else return 0;
  if (i < n && b[i] == '.') {
    i++;
    if (i >= n || b[i] < '0' || b[i] > '9') return 0;
    while (i < n && b[i] >= '0' && b[i] <= '9') i++;
  }
  if (i < n && (b[i] == 'e' || b[i] == 'E')) {
    i++;
    if (i < n && (b[i] == '+' || b[i] == '-')) i++;
    if (i >= n || b[i] < '0' || b[i] > '9') return 0;
    while (i < n && b[i] >= '0' && b[i] <= '9') i++;
  }
  *ip = i;
  return 1;
}

/* An object key at b[*ip], then ':'; notes which member of `m` it names in *which. */
static int json_key(const uint8_t *b, size_t n, size_t *ip, int top, struct members *m,
                    struct member **which) {
  char key[16];
  size_t kl = 16;
  size_t i = json_ws(b, n, *ip);
  if (i >= n || b[i] != '"') return 0;
  if (!json_string(b, n, &i, top ? key : NULL, &kl)) return 0;
  i = json_ws(b, n, i);
  if (i >= n || b[i] != ':') return 0;
  *ip = i + 1;
  *which = NULL;
  if (top && kl == 11 && !memcmp(key, "packedBytes", 11)) *which = &m->packed;
  if (top && kl == 10 && !memcmp(key, "imageBytes", 10)) *which = &m->image;
  return 1;
}

/* 0: one JSON text holding an object; 1: not JSON; 2: JSON but not an object; -1: no memory.
 * Iterative (JSON.parse takes any depth): one byte of stack per open container. */
static int json_object(const uint8_t *b, size_t n, struct members *m) {
  memset(m, 0, sizeof *m);
  uint8_t *stack = malloc(n ? n : 1);
  if (!stack) return -1;
  size_t depth = 0, i = json_ws(b, n, 0);
  int object = i < n && b[i] == '{';
  struct member *which = NULL; /* the top-level member whose value comes next */
  int ok = 0;
  for (;;) {
    /* a value at i */
    i = json_ws(b, n, i);
    if (i >= n) goto done;
    uint8_t c = b[i];
    if (which) {
      which->kind = c == 'n' ? M_NULL : (c == '-' || (c >= '0' && c <= '9')) ? M_NUMBER : M_OTHER;
      which->at = i;
      which = NULL;
    }
    if (c == '{' || c == '[') {
      size_t j = json_ws(b, n, i + 1);
      if (j < n && b[j] == (c == '{' ? '}' : ']')) {
        i = j + 1;
      } else {
        stack[depth++] = c;
        i = j;
        if (c == '{' && !json_key(b, n, &i, depth == 1, m, &which)) goto done;
        continue;
      }
    } else if (c == '"') {
      if (!json_string(b, n, &i, NULL, NULL)) goto done;
    } else if (c == '-' || (c >= '0' && c <= '9')) {
      if (!json_number(b, n, &i)) goto done;
    } else if (n - i >= 4 && !memcmp(b + i, "true", 4)) i += 4;
    else if (n - i >= 5 && !memcmp(b + i, "false", 5)) i += 5;
    else if (n - i >= 4 && !memcmp(b + i, "null", 4)) i += 4;
    else goto done;
    /* a value ended: close what it ends, or go on to the next */
    for (;;) {
      i = json_ws(b, n, i);
      if (depth == 0) {
        ok = i == n ? (object ? 0 : 2) : 1;
        goto out;
      }
      if (i >= n) goto done;
      uint8_t top = stack[depth - 1];
      if (b[i] == (top == '{' ? '}' : ']')) {
        depth--;
        i++;
        continue;
      }
      if (b[i] != ',') goto done;
      i++;
      if (top == '{' && !json_key(b, n, &i, depth == 1, m, &which)) goto done;
      break;
    }
  }
done:
  ok = 1;
out:
  free(stack);
  return ok;
}

/* ---- names (layout.ts: nameProblem, MEMORY_NAME) ---- */

/* Why `s` (valid UTF-8, 1..255 bytes) cannot be an entry name, or NULL. */
static const char *name_problem(const uint8_t *s, size_t n) {
  if (n == 0) return "is empty";
  if ((n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.')) return "refers to a directory";
  for (size_t i = 0; i < n; i++) {
    uint8_t c = s[i];
    if (c == '/' || c == '\\') return "contains a path separator";
    /* U+0000..U+001F, U+007F, and U+0080..U+009F (C2 80..C2 9F) */
    if (c < 0x20 || c == 0x7f || (c == 0xc2 && i + 1 < n && s[i + 1] <= 0x9f))
      return "contains a control character";
  }
  return NULL;
}

/* Whether `s` is pages-<digits>.img or pages-<digits>.img.zst (MEMORY_NAME); then its number
 * (*odd when it is not one CRIU writes: a leading zero, or beyond u32) and whether .zst. */
static int memory_name(const char *s, size_t n, uint32_t *id, int *zst, int *odd) {
  if (n < 11 || memcmp(s, "pages-", 6)) return 0;
  size_t j = 6;
  while (j < n && s[j] >= '0' && s[j] <= '9') j++;
  if (j == 6) return 0;
  if (n - j == 4 && !memcmp(s + j, ".img", 4)) *zst = 0;
  else if (n - j == 8 && !memcmp(s + j, ".img.zst", 8)) *zst = 1;
  else return 0;
  uint64_t v = 0;
  *odd = j - 6 > 1 && s[6] == '0';
  for (size_t k = 6; k < j && !*odd; k++) {
    v = v * 10 + (uint64_t)(s[k] - '0');
    if (v > UINT32_MAX) *odd = 1;
  }
  *id = *odd ? 0 : (uint32_t)v;
  return 1;
}

static int compressed_pages(const char *s, size_t n) {
  uint32_t id;
  int zst, odd;
  return memory_name(s, n, &id, &zst, &odd) && zst;
}

/* ---- trust (trust.ts: untrustedReason) ---- */

/* `uid N (name)`, or `uid N` when /etc/passwd does not name it. */
static void who_is(uid_t uid, char *out, size_t len) {
  char id[16];
  snprintf(id, sizeof id, "%u", (unsigned)uid);
  snprintf(out, len, "uid %s", id);
  FILE *f = fopen("/etc/passwd", "re");
  if (!f) return;
  char *line = NULL;
  size_t cap = 0;
  ssize_t got;
  while ((got = getline(&line, &cap, f)) >= 0) {
    if (got > 0 && line[got - 1] == '\n') line[--got] = 0;
    char *c1 = memchr(line, ':', (size_t)got);
    if (!c1) continue;
    char *c2 = memchr(c1 + 1, ':', (size_t)(line + got - c1 - 1));
    if (!c2) continue;
    char *end = memchr(c2 + 1, ':', (size_t)(line + got - c2 - 1));
    size_t idlen = end ? (size_t)(end - c2 - 1) : (size_t)(line + got - c2 - 1);
    if (c1 > line && idlen == strlen(id) && !memcmp(c2 + 1, id, idlen)) {
      snprintf(out, len, "uid %s (%.*s)", id, (int)(c1 - line), line);
      break;
    }
  }
  free(line);
  fclose(f);
}

static const char *writers(mode_t mode) {
  int g = (mode & 020) != 0, o = (mode & 002) != 0;
  return g && o ? "its group and everyone" : g ? "its group" : "everyone";
}

static int untrusted(int fd, char *why, size_t wl) {
  uid_t euid = geteuid();
  struct stat st, ds;
  char who[300];
  if (fstat(fd, &st)) return say(why, wl, FRONT_IO, "cannot look at it: %s", strerror(errno));
  if (st.st_uid != 0 && st.st_uid != euid) {
    who_is(st.st_uid, who, sizeof who);
    return say(why, wl, FRONT_UNTRUSTED, "it belongs to %s, not to root or you", who);
  }
  if (st.st_mode & 022)
    return say(why, wl, FRONT_UNTRUSTED, "%s can change it (mode %04o)", writers(st.st_mode),
               (unsigned)(st.st_mode & 07777));
  if (st.st_nlink == 0) return say(why, wl, FRONT_UNTRUSTED, "it was removed while it was being opened");
  char link[64], path[8192];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, path, sizeof path);
  if (n <= 0 || (size_t)n >= sizeof path || path[0] != '/')
    return say(why, wl, FRONT_UNTRUSTED, "where it lies cannot be told");
  path[n] = 0;
  /* From the root down, each directory of the path: "/", "/a", "/a/b" for /a/b/f. */
  for (ssize_t k = 0; k < n; k++) {
    if (path[k] != '/') continue;
    char d[8192];
    if (k == 0) strcpy(d, "/");
    else {
      memcpy(d, path, (size_t)k);
      d[k] = 0;
    }
    if (lstat(d, &ds) || !S_ISDIR(ds.st_mode))
      return say(why, wl, FRONT_UNTRUSTED, "its directory %s changed while it was checked", d);
    if (ds.st_uid != 0 && ds.st_uid != euid) {
      who_is(ds.st_uid, who, sizeof who);
      return say(why, wl, FRONT_UNTRUSTED, "the directory %s belongs to %s, who can replace the file", d, who);
    }
    if ((ds.st_mode & 022) && !(ds.st_mode & 01000))
      return say(why, wl, FRONT_UNTRUSTED,
                 "%s can write the directory %s (mode %04o, no sticky bit) and so replace the file",
                 writers(ds.st_mode), d, (unsigned)(ds.st_mode & 07777));
  }
  struct stat now;
  if (lstat(path, &now)) return say(why, wl, FRONT_UNTRUSTED, "it was moved or removed while it was checked");
  if (now.st_dev != st.st_dev || now.st_ino != st.st_ino)
    return say(why, wl, FRONT_UNTRUSTED, "it was replaced while it was checked");
  return FRONT_OK;
}

/* ---- the hashed range PREFIX | INDEX | u64 D, read in order (reader.ts: SeqReader) ---- */

struct seq {
  int fd;
  uint64_t d;     /* DATA's length: hashed position p >= 16 is at p + d in the file */
  uint64_t limit; /* end of the hashed range (as read so far) */
  uint64_t pos;
  uint8_t *win;
  size_t cap;
  uint64_t wstart;
  size_t wlen;
  sha_ctx ctx;
};

static uint64_t seq_left(const struct seq *s) { return s->limit - s->pos; }

/* `want` bytes of the hashed range from position `from` into dst (the file holds DATA between). */
static int seq_read(const struct seq *s, uint8_t *dst, uint64_t from, size_t want, char *why, size_t wl) {
  size_t done = 0;
  while (done < want) {
    uint64_t v = from + done, at;
    size_t k;
    if (v < PREFIX_LEN) {
      at = v;
      k = want - done < PREFIX_LEN - v ? want - done : (size_t)(PREFIX_LEN - v);
    } else {
      at = v + s->d;
      k = want - done;
    }
    int r = pread_full(s->fd, dst + done, k, at);
    if (r < 0) return say(why, wl, FRONT_IO, "reading it failed: %s", strerror(errno));
    if (r > 0) return say(why, wl, FRONT_BAD, SHRANK);
    done += k;
  }
  return FRONT_OK;
}

static int seq_fill(struct seq *s, char *why, size_t wl) {
  uint64_t left = seq_left(s);
  size_t want = left < s->cap ? (size_t)left : s->cap;
  int r = seq_read(s, s->win, s->pos, want, why, wl);
  if (r) return r;
  sha_update(s->ctx, want, s->win);
  s->wstart = s->pos;
  s->wlen = want;
  return FRONT_OK;
}

/* The next n bytes (n <= seq_left) into dst, or passed over (hashed all the same) when dst is NULL. */
static int seq_take(struct seq *s, uint8_t *dst, uint64_t n, char *why, size_t wl) {
  if (n > seq_left(s)) return say(why, wl, FRONT_BAD, "internal: a read beyond the hashed range");
  while (n) {
    if (s->pos == s->wstart + s->wlen && dst && n >= WINDOW) {
      /* A chunk table: read into place and hashed there, with no copy through the window. */
      size_t k = (size_t)(n / WINDOW * WINDOW);
      int r = seq_read(s, dst, s->pos, k, why, wl);
      if (r) return r;
      sha_update(s->ctx, k, dst);
      s->pos += k;
      s->wstart = s->pos;
      s->wlen = 0;
      dst += k;
      n -= k;
      continue;
    }
    if (s->pos == s->wstart + s->wlen) {
      int r = seq_fill(s, why, wl);
      if (r) return r;
    }
    uint64_t avail = s->wstart + s->wlen - s->pos;
    size_t k = (size_t)(n < avail ? n : avail);
    if (dst) {
      memcpy(dst, s->win + (s->pos - s->wstart), k);
      dst += k;
    }
    s->pos += k;
    n -= k;
  }
  return FRONT_OK;
}

/* ---- INDEX ---- */

struct nameset {
  uint32_t *slot; /* 1 + index into names, 0 empty */
  size_t mask;
  char **names;   /* every entry's name, in order */
  uint8_t *kept;  /* names[i] belongs to an inline entry of the image (else freed with the set) */
  size_t n;
};

static uint64_t fnv(const char *s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
  return h;
}

/* 1 when added, 0 when already there. */
static int nameset_add(struct nameset *set, char *name) {
  size_t i = (size_t)fnv(name) & set->mask;
  while (set->slot[i]) {
    if (!strcmp(set->names[set->slot[i] - 1], name)) return 0;
    i = (i + 1) & set->mask;
  }
  set->names[set->n] = name;
  set->slot[i] = (uint32_t)++set->n;
  return 1;
}

static int grow(void **arr, size_t *cap, size_t have, size_t size) {
  if (have < *cap) return 1;
  size_t want = *cap ? *cap * 2 : 8;
  void *p = realloc(*arr, want * size);
  if (!p) return 0;
  *arr = p;
  *cap = want;
  return 1;
}

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

#define NOMEM() say(why, wl, FRONT_IO, "out of memory")
#define TAKE(dst, n) do { int r_ = seq_take(s, (dst), (n), why, wl); if (r_) return r_; } while (0)

/*
 * A memory entry's chunk table (36 bytes a chunk: 1.2 MB for 2 GB of memory) in huge pages where
 * the kernel allows them (bigmem.h): 4 KiB pages touched one by one each trap on a 2-core guest.
 */
static uint8_t *table_alloc(uint32_t count) { return bigmem_alloc((size_t)count * ROW); }

/* A chunked entry's row after its kind (read.ts: chunkTable); *at is DATA used so far. */
static int chunk_table(struct seq *s, struct front_image *img, size_t *memcap, const char *name,
                       size_t namelen, uint64_t *data_at, uint64_t *held, char *why, size_t wl) {
  uint32_t id;
  int zst, odd;
  if (!memory_name(name, namelen, &id, &zst, &odd))
    return say(why, wl, FRONT_BAD, "entry \"%s\" is chunked but not memory", name);
  if (seq_left(s) < 17) return say(why, wl, FRONT_BAD, "sizes do not add up at memory entry \"%s\"", name);
  uint8_t h[17];
  TAKE(h, 17);
  uint8_t codec = h[0];
  uint32_t chunk = be32(h + 1), count = be32(h + 13);
  uint64_t decoded = be64(h + 5);
  if (codec != 0 && !(codec == 1 && zst))
    return say(why, wl, FRONT_BAD, "memory entry \"%s\" has an unknown codec %u", name, codec);
  if (chunk < MIN_MEM_CHUNK || chunk > MAX_MEM_CHUNK)
    return say(why, wl, FRONT_BAD, "memory entry \"%s\" has an impossible chunk size %u", name, chunk);
  if ((uint64_t)count * ROW > seq_left(s))
    return say(why, wl, FRONT_BAD, "memory entry \"%s\" claims %u chunks but the file is too short to list them", name, count);
  /* count fits in what is left now, so count * chunk is exact */
  int fits = count == 0 ? decoded == 0
                        : decoded <= (uint64_t)count * chunk && decoded > (uint64_t)(count - 1) * chunk;
  if (!fits)
    return say(why, wl, FRONT_BAD, "memory entry \"%s\" claims %llu bytes in %u chunks of %u", name,
               (unsigned long long)decoded, count, chunk);
  if (!grow((void **)&img->mem, memcap, img->nmem, sizeof *img->mem)) return NOMEM();
  struct front_mem *m = &img->mem[img->nmem];
  memset(m, 0, sizeof *m);
  m->table = table_alloc(count);
  if (!m->table) return NOMEM();
  img->nmem++; /* owned by img from here on */
  memcpy(m->name, name, namelen + 1);
  m->id = id;
  m->zstd = codec == 1;
  m->chunk = chunk;
  m->size = decoded;
  m->count = count;
  TAKE(m->table, (uint64_t)count * ROW);
  uint64_t start = PREFIX_LEN + *data_at, at = start, limit = (uint64_t)chunk + chunk / 128 + 4096;
  for (uint32_t i = 0; i < count; i++) {
    uint32_t len = be32(m->table + (size_t)i * ROW);
    int bad = codec == 0 ? len != (i < count - 1 ? chunk : decoded - (uint64_t)i * chunk)
                         : len < 1 || len > limit;
    if (bad)
      return say(why, wl, FRONT_BAD, "memory entry \"%s\" gives chunk %u an impossible length %u", name, i, len);
    at += len;
  }
  if (at > PREFIX_LEN + s->d)
    return say(why, wl, FRONT_BAD, "the chunks of memory entry \"%s\" lie beyond its memory part", name);
  m->first = count ? start : 0;
  *data_at += at - start;
  *held += at - start;
  if (*data_at > s->d)
    return say(why, wl, FRONT_BAD, "the chunks of entry \"%s\" lie beyond its memory part", name);
  return FRONT_OK;
}

/* INDEX (read.ts: parseBody, format 2, plain, no store) and the manifest's own check. */
static int parse_index(struct seq *s, struct front_image *img, struct nameset *set, char *why, size_t wl) {
  if (seq_left(s) < 4) return say(why, wl, FRONT_BAD, "it ends before its manifest");
  uint8_t b[8];
  TAKE(b, 4);
  uint32_t mlen = be32(b);
  if (mlen > MAX_MANIFEST)
    return say(why, wl, FRONT_BAD, "its manifest claims %u bytes, more than the 1 MiB limit", mlen);
  if ((uint64_t)mlen + 4 > seq_left(s))
    return say(why, wl, FRONT_BAD, "its manifest claims %u bytes but the file is too short", mlen);
  img->manifest = malloc((size_t)mlen + 1);
  if (!img->manifest) return NOMEM();
  TAKE((uint8_t *)img->manifest, mlen);
  img->manifest[mlen] = 0;
  img->manifest_len = mlen;
  struct members mm;
  int j = utf8_ok((const uint8_t *)img->manifest, mlen)
              ? json_object((const uint8_t *)img->manifest, mlen, &mm)
              : 1;
  if (j < 0) return NOMEM();
  if (j == 1) return say(why, wl, FRONT_BAD, "its manifest is not valid UTF-8 JSON");
  if (j == 2) return say(why, wl, FRONT_BAD, "its manifest is not a JSON object");

  TAKE(b, 4);
  uint32_t count = be32(b);
  if (count > MAX_ENTRIES)
    return say(why, wl, FRONT_BAD, "it claims %u entries, more than the limit of %u", count, MAX_ENTRIES);
  if ((uint64_t)count * MIN_ENTRY > seq_left(s))
    return say(why, wl, FRONT_BAD, "it claims %u entries but the file is too short to hold them", count);
  size_t slots = 16;
  while (slots < (size_t)count * 2) slots *= 2;
  set->slot = calloc(slots, sizeof *set->slot);
  set->names = calloc(count ? count : 1, sizeof *set->names);
  set->kept = calloc(count ? count : 1, 1);
  if (!set->slot || !set->names || !set->kept) return NOMEM();
  set->mask = slots - 1;

  size_t memcap = 0, inlcap = 0;
  uint64_t data_at = 0, held = 0, kept = 0;
  for (uint32_t i = 0; i < count; i++) {
    if (seq_left(s) < 2) return say(why, wl, FRONT_BAD, "sizes do not add up at entry %u", i);
    TAKE(b, 2);
    uint16_t nlen = be16(b);
    if (nlen == 0 || nlen > MAX_NAME) return say(why, wl, FRONT_BAD, "entry %u has a name of %u bytes", i, nlen);
    if (seq_left(s) < (uint64_t)nlen + 8) return say(why, wl, FRONT_BAD, "sizes do not add up at entry %u", i);
    char *name = malloc((size_t)nlen + 1);
    if (!name) return NOMEM();
    int r = seq_take(s, (uint8_t *)name, nlen, why, wl);
    if (r) {
      free(name);
      return r;
    }
    name[nlen] = 0;
    if (!utf8_ok((const uint8_t *)name, nlen)) {
      free(name);
      return say(why, wl, FRONT_BAD, "entry %u has a name that is not valid UTF-8", i);
    }
    const char *problem = name_problem((const uint8_t *)name, nlen);
    if (problem) {
      r = say(why, wl, FRONT_BAD, "entry %u has the name \"%s\", which %s", i, name, problem);
      free(name);
      return r;
    }
    if (!nameset_add(set, name)) {
      r = say(why, wl, FRONT_BAD, "entry name \"%s\" appears twice", name);
      free(name);
      return r;
    }
    /* set owns name now */
    if (seq_left(s) < 1) return say(why, wl, FRONT_BAD, "sizes do not add up at entry %u", i);
    TAKE(b, 1);
    if (b[0] == KIND_CHUNKED) {
      r = chunk_table(s, img, &memcap, name, nlen, &data_at, &held, why, wl);
      if (r) return r;
      continue;
    }
    if (b[0] != KIND_INLINE) return say(why, wl, FRONT_BAD, "entry %u has an unknown kind %u", i, b[0]);
    if (seq_left(s) < 8) return say(why, wl, FRONT_BAD, "sizes do not add up at entry %u", i);
    TAKE(b, 8);
    uint64_t size = be64(b);
    if (size > seq_left(s))
      return say(why, wl, FRONT_BAD, "entry \"%s\" claims %llu bytes but only %llu remain", name,
                 (unsigned long long)size, (unsigned long long)seq_left(s));
    /* Kept as hashed (CRIU's images besides the memory are small): a large one is Node's. */
    if (kept + size > MAX_INLINE_KEPT)
      return say(why, wl, FRONT_NOT_HERE, "its images besides the memory hold more than %u MiB", MAX_INLINE_KEPT >> 20);
    if (!grow((void **)&img->inl, &inlcap, img->ninl, sizeof *img->inl)) return NOMEM();
    uint8_t *data = malloc(size ? (size_t)size : 1);
    if (!data) return NOMEM();
    img->inl[img->ninl].name = name;
    img->inl[img->ninl].offset = s->pos + s->d;
    img->inl[img->ninl].size = size;
    img->inl[img->ninl].data = data;
    img->ninl++;
    set->kept[set->n - 1] = 1;
    TAKE(data, size);
    held += size;
    kept += size;
  }
  if (seq_left(s) != 0)
    return say(why, wl, FRONT_BAD, "sizes do not add up: %llu unexpected bytes after the last entry",
               (unsigned long long)seq_left(s));
  if (data_at != s->d)
    return say(why, wl, FRONT_BAD, "sizes do not add up: its memory part holds %llu bytes but its chunks %llu",
               (unsigned long long)s->d, (unsigned long long)data_at);
  /* src/engine/manifest.ts: packedBytes ?? imageBytes, when there, is what the entries hold. */
  const struct member *stated = mm.packed.kind == M_ABSENT || mm.packed.kind == M_NULL ? &mm.image : &mm.packed;
  if (stated->kind != M_ABSENT &&
      !(stated->kind == M_NUMBER && strtod(img->manifest + stated->at, NULL) == (double)held)) {
    char said[48];
    if (stated->kind == M_NUMBER) {
      size_t k = stated->at, e = k;
      json_number((const uint8_t *)img->manifest, mlen, &e);
      snprintf(said, sizeof said, "%.*s", (int)(e - k > 40 ? 40 : e - k), img->manifest + k);
    } else snprintf(said, sizeof said, "%s", stated->kind == M_NULL ? "null" : "something other than a number of");
    return say(why, wl, FRONT_BAD, "its manifest says the CRIU images hold %s bytes but its entries hold %llu",
               said, (unsigned long long)held);
  }
  return FRONT_OK;
}

/* What is left once the file is known good: what this front does not serve itself. */
static int served_here(const struct front_image *img, char *why, size_t wl) {
  for (size_t i = 0; i < img->ninl; i++)
    if (compressed_pages(img->inl[i].name, strlen(img->inl[i].name)))
      return say(why, wl, FRONT_NOT_HERE, "its entry %s is compressed memory stored whole", img->inl[i].name);
  if (img->nmem == 0) return FRONT_OK;
  uint32_t *ids = malloc(img->nmem * sizeof *ids);
  if (!ids) return NOMEM();
  int code = FRONT_OK;
  for (size_t i = 0; i < img->nmem && !code; i++) {
    const struct front_mem *m = &img->mem[i];
    uint32_t id = 0;
    int zst = 0, odd = 0;
    memory_name(m->name, strlen(m->name), &id, &zst, &odd);
    if (zst && !m->zstd)
      code = say(why, wl, FRONT_NOT_HERE, "its memory entry %s is one zstd stream, decoded whole", m->name);
    else if (odd)
      code = say(why, wl, FRONT_NOT_HERE, "its memory entry %s has a number CRIU does not write", m->name);
    ids[i] = id;
  }
  if (!code) {
    qsort(ids, img->nmem, sizeof *ids, cmp_u32);
    for (size_t i = 1; i < img->nmem && !code; i++)
      if (ids[i] == ids[i - 1])
        code = say(why, wl, FRONT_NOT_HERE, "it holds memory entry %u twice (plain and compressed)", ids[i]);
  }
  free(ids);
  return code;
}

static int not_checkpt(const uint8_t *h, size_t n, char *why, size_t wl) {
  const char *hint = "it does not start with the checkpt signature";
  int text = 1;
  for (size_t i = 0; i < n; i++)
    if (!(h[i] == 9 || h[i] == 10 || h[i] == 13 || (h[i] >= 0x20 && h[i] < 0x7f))) text = 0;
  if (n >= 2 && h[0] == 0x1f && h[1] == 0x8b) hint = "it looks like a gzip file";
  else if (n >= 4 && !memcmp(h, "PK\x03\x04", 4)) hint = "it looks like a zip file";
  else if (n >= 4 && !memcmp(h, "\x7f" "ELF", 4)) hint = "it looks like an executable";
  else if (text) hint = "it looks like a text file";
  return say(why, wl, FRONT_BAD, "it is not a checkpt file (%s)", hint);
}

static int check_file(struct front_image *img, char *why, size_t wl) {
  uint64_t size = img->file_size;
  if (size == 0) return say(why, wl, FRONT_BAD, "it is empty, so it is not a checkpt file (it may never have been written)");
  uint8_t head[PREFIX_LEN];
  size_t hn = size < PREFIX_LEN ? (size_t)size : PREFIX_LEN;
  int r = pread_full(img->fd, head, hn, 0);
  if (r < 0) return say(why, wl, FRONT_IO, "reading it failed: %s", strerror(errno));
  if (r > 0) return say(why, wl, FRONT_BAD, "truncated: its end marker is missing");
  /* layout.ts: checkHead */
  if (memcmp(head, MAGIC, hn < 8 ? hn : 8)) return not_checkpt(head, hn, why, wl);
  if (hn < PREFIX_LEN) return say(why, wl, FRONT_BAD, "truncated: its end marker is missing");
  uint32_t version = be32(head + 8), flags = be32(head + 12);
  if (version < 1 || version > 2) {
    if (version > 2 && version <= MAX_PLAUSIBLE_VERSION)
      return say(why, wl, FRONT_NOT_HERE, "it was written by a newer checkpt (format %u)", version);
    return say(why, wl, FRONT_BAD, "unknown format version %u", version);
  }
  if (flags & ~KNOWN_FLAGS)
    return say(why, wl, FRONT_BAD, "unknown header flags 0x%x; if it is not damaged, a newer checkpt wrote it", flags);
  uint32_t plain_only = FLAG_STORE | FLAG_BLAKE3;
  if ((flags & plain_only) && (version != 2 || (flags & FLAG_ENCRYPTED) || (flags & plain_only) == plain_only))
    return say(why, wl, FRONT_BAD, "its header flags 0x%x do not go together", flags);
  if (version == 1) return say(why, wl, FRONT_NOT_HERE, "it is in format 1, extracted whole");
  if (flags & FLAG_ENCRYPTED) return say(why, wl, FRONT_NOT_HERE, "it is encrypted");
  /* read.ts: a key set means only what was sealed with it is taken (or refused, EKEY) */
  const char *key = getenv("CHECKPT_KEY_FILE");
  if (key && *key) return say(why, wl, FRONT_NOT_HERE, "CHECKPT_KEY_FILE is set");
  r = untrusted(img->fd, why, wl);
  if (r) return r;
  if (flags & FLAG_STORE) return say(why, wl, FRONT_NOT_HERE, "its memory is in a chunk store");
  img->flags = flags;

  /* read.ts: parsePlainV2 */
  if (size < MIN_FILE_V2) return say(why, wl, FRONT_BAD, "truncated: its end marker is missing");
  uint8_t tail[TAIL_LEN];
  r = pread_full(img->fd, tail, TAIL_LEN, size - TAIL_LEN);
  if (r < 0) return say(why, wl, FRONT_IO, "reading it failed: %s", strerror(errno));
  if (r > 0 || memcmp(tail + 8, TRAILER, 8)) return say(why, wl, FRONT_BAD, "truncated: its end marker is missing");
  uint64_t d = be64(tail);
  if (d > size - MIN_FILE_V2)
    return say(why, wl, FRONT_BAD, "its memory part claims %llu bytes but the file is too short", (unsigned long long)d);
  img->data_len = d;

  struct seq s;
  memset(&s, 0, sizeof s);
  s.fd = img->fd;
  s.d = d;
  s.limit = size - TAIL_LEN - d;
  s.cap = s.limit + 8 < WINDOW ? (size_t)(s.limit + 8) : WINDOW;
  s.win = malloc(s.cap);
  if (!s.win) return NOMEM();
  sha_init(s.ctx);
  struct nameset set = {0};
  uint8_t hashed[PREFIX_LEN], dd[8], md[32];
  r = seq_take(&s, hashed, PREFIX_LEN, why, wl);
  if (!r && memcmp(hashed, head, PREFIX_LEN))
    r = say(why, wl, FRONT_BAD, "its header changed while it was being read");
  if (!r) r = parse_index(&s, img, &set, why, wl);
  if (!r) {
    s.limit += 8;
    r = seq_take(&s, dd, 8, why, wl);
    if (!r && be64(dd) != d) r = say(why, wl, FRONT_BAD, SHRANK);
  }
  if (!r) {
    sha_digest(s.ctx, 32, md);
    if (memcmp(md, tail + 16, 32))
      r = say(why, wl, FRONT_BAD, "checksum mismatch (the file hash does not match): it was modified or truncated after it was written");
  }
  /* The inline entries own their names; the rest were only in the set. */
  for (size_t i = 0; i < set.n; i++)
    if (!set.kept[i]) free(set.names[i]);
  free(set.names);
  free(set.kept);
  free(set.slot);
  free(s.win);
  if (!r) r = served_here(img, why, wl);
  return r;
}

void front_close(struct front_image *img) {
  if (img->fd >= 0) close(img->fd);
  for (size_t i = 0; i < img->nmem; i++)
    bigmem_free(img->mem[i].table, (size_t)img->mem[i].count * ROW);
  for (size_t i = 0; i < img->ninl; i++) {
    free(img->inl[i].name);
    free(img->inl[i].data);
  }
  free(img->mem);
  free(img->inl);
  free(img->manifest);
  memset(img, 0, sizeof *img);
  img->fd = -1;
}

static int open_error(const char *path, int e, char *why, size_t wl) {
  if (e == ENOENT) return say(why, wl, FRONT_IO, "cannot open checkpoint %s: it does not exist; check the path", path);
  if (e == EACCES || e == EPERM)
    return say(why, wl, FRONT_IO, "cannot open checkpoint %s: permission denied; check its permissions or run as a user that can read it", path);
  return say(why, wl, FRONT_IO, "cannot open checkpoint %s: %s", path, strerror(e));
}

static int kind_problem(const struct stat *st, char *why, size_t wl) {
  if (S_ISDIR(st->st_mode)) return say(why, wl, FRONT_BAD, "it is a directory, not a checkpt file; pass the checkpoint file itself");
  if (!S_ISREG(st->st_mode))
    return say(why, wl, FRONT_BAD, "it is not a regular file (a FIFO, device or socket), so not a checkpt file");
  return FRONT_OK;
}

int front_open(const char *path, struct front_image *img, char *why, size_t wl) {
  memset(img, 0, sizeof *img);
  img->fd = -1;
  if (why && wl) why[0] = 0;
  if (!load_sha()) return say(why, wl, FRONT_NOT_HERE, "libnettle.so.8 (SHA-256) cannot be loaded here");
  /* Looked at before it is opened: opening a FIFO could block, and opening a device can act. */
  struct stat st;
  if (stat(path, &st)) return open_error(path, errno, why, wl);
  int r = kind_problem(&st, why, wl);
  if (r) return r;
  int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return open_error(path, errno, why, wl);
  img->fd = fd;
  if (fstat(fd, &st)) r = say(why, wl, FRONT_IO, "reading %s failed: %s", path, strerror(errno));
  if (!r) r = kind_problem(&st, why, wl);
  if (!r) {
    img->file_size = (uint64_t)st.st_size;
    r = check_file(img, why, wl);
  }
  if (r) front_close(img);
  return r;
}

/* ---- extraction (extract.ts: checkEmptyDir, DirSink) ---- */

int front_extract(const struct front_image *img, const char *dir, char *why, size_t wl) {
  if (why && wl) why[0] = 0;
  int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0)
    return say(why, wl, FRONT_IO, "cannot extract into %s: %s; it must be an existing, empty directory", dir, strerror(errno));
  int lfd = dup(dfd);
  DIR *dp = lfd >= 0 ? fdopendir(lfd) : NULL;
  if (!dp) {
    int e = errno;
    if (lfd >= 0) close(lfd);
    close(dfd);
    return say(why, wl, FRONT_IO, "cannot extract into %s: %s; it must be an existing, empty directory", dir, strerror(e));
  }
  struct dirent *de;
  int empty = 1;
  while ((de = readdir(dp)))
    if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) empty = 0;
  closedir(dp);
  if (!empty) {
    close(dfd);
    return say(why, wl, FRONT_IO, "cannot extract into %s: it is not empty; extract into a new empty directory", dir);
  }
  int code = FRONT_OK;
  size_t created = 0;
  for (size_t i = 0; i < img->ninl && !code; i++) {
    const struct front_inline *e = &img->inl[i];
    int ofd = openat(dfd, e->name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (ofd < 0) {
      code = say(why, wl, FRONT_IO, "creating %s/%s failed: %s", dir, e->name, strerror(errno));
      break;
    }
    created++;
    if (write_all(ofd, e->data, (size_t)e->size))
      code = say(why, wl, FRONT_IO, "writing %s/%s failed: %s", dir, e->name, strerror(errno));
    if (close(ofd) && !code) code = say(why, wl, FRONT_IO, "writing %s/%s failed: %s", dir, e->name, strerror(errno));
  }
  if (code)
    for (size_t i = 0; i < created; i++) unlinkat(dfd, img->inl[i].name, 0);
  close(dfd);
  return code;
}

/* ---- checkpt-helper unpack FILE DIR ---- */

int cmd_unpack(const char *path, const char *dir) {
  static const char *const word[] = {"ok", "not-here", "bad", "untrusted", "io"};
  struct front_image img;
  char why[1024];
  int code = front_open(path, &img, why, sizeof why);
  if (!code) {
    code = front_extract(&img, dir, why, sizeof why);
    if (code) front_close(&img);
  }
  if (code) {
    fprintf(stderr, "%s %s\n", word[code], why);
    return 10 + code;
  }
  printf("ok flags=%u manifest=%zu mem=%zu\n", img.flags, img.manifest_len, img.nmem);
  for (size_t i = 0; i < img.nmem; i++) {
    const struct front_mem *m = &img.mem[i];
    sha_ctx ctx;
    uint8_t md[32];
    char hex[65];
    sha_init(ctx);
    sha_update(ctx, (size_t)m->count * ROW, m->table);
    sha_digest(ctx, 32, md);
    for (int k = 0; k < 32; k++) snprintf(hex + 2 * k, 3, "%02x", md[k]);
    printf("mem %s id=%u zstd=%d chunk=%u size=%llu count=%u first=%llu table=%s\n", m->name, m->id,
           m->zstd, m->chunk, (unsigned long long)m->size, m->count, (unsigned long long)m->first, hex);
  }
  front_close(&img);
  return fflush(stdout) ? 14 : 0;
}
