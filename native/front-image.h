/*
 * The resume front's reader of a checkpoint file (src/image/layout.ts, format 2, plain, memory in
 * the file): opens and checks it exactly as src/image/read.ts's parseFile (lazy) and extract.ts's
 * extractLazy do, and unpacks everything but the memory, which stays in the file to be served by
 * the page server (front_mem says where). Whatever it does not handle itself (format 1, encrypted
 * or store-backed files, a newer format, compressed memory decoded whole, no libnettle here, a key
 * set in CHECKPT_KEY_FILE) is FRONT_NOT_HERE: the Node path takes the file as ever.
 */
#ifndef CHECKPT_FRONT_IMAGE_H
#define CHECKPT_FRONT_IMAGE_H

#include <stddef.h>
#include <stdint.h>

enum { FRONT_OK = 0, FRONT_NOT_HERE = 1, FRONT_BAD = 2, FRONT_UNTRUSTED = 3, FRONT_IO = 4 };

/* One memory entry (kind 1, chunked). */
struct front_mem {
  char name[256];  /* the entry's name as stored, e.g. pages-1.img or pages-1.img.zst */
  uint32_t id;     /* N of pages-N.img / pages-N.img.zst */
  int zstd;        /* codec 1 (one zstd frame per chunk) */
  uint32_t chunk;  /* C: decoded bytes per chunk */
  uint64_t size;   /* U: decoded size */
  uint32_t count;  /* K */
  uint8_t *table;  /* K * 36 bytes, the rows as in the file (u32 BE stored length | 32-byte digest) */
  uint64_t first;  /* absolute file offset of the entry's first chunk (0 when K = 0, as chunks.ts) */
};

/* One inline entry (kind 0): extracted by front_extract. */
struct front_inline {
  char *name;      /* NUL-terminated (an entry name holds no NUL) */
  uint64_t offset; /* absolute file offset of its bytes */
  uint64_t size;
  uint8_t *data;   /* its bytes as they were hashed: extraction writes these, not a second read */
};

struct front_image {
  int fd;             /* the checkpoint file, O_RDONLY|O_CLOEXEC; -1 when closed */
  uint32_t flags;     /* 0, or 4 (BLAKE3 chunk tables) */
  uint64_t file_size; /* as fstat said at the open */
  uint64_t data_len;  /* D */
  char *manifest;     /* the manifest JSON bytes, NUL-terminated copy */
  size_t manifest_len;
  struct front_mem *mem;
  size_t nmem;
  struct front_inline *inl; /* in INDEX order */
  size_t ninl;
};

/*
 * Opens and fully checks `path` as a lazy resume does: its kind (a regular file), the header,
 * trust (trust.ts: the file and every directory up to / belong to root or geteuid() and are not
 * writable by others, a sticky directory excepted), TAIL, the SHA-256 over PREFIX | INDEX | u64 D,
 * INDEX itself (manifest: UTF-8 JSON object within 1 MiB, and the manifest's packedBytes or
 * imageBytes against the entries as src/engine/manifest.ts says; entry names, kinds, codecs,
 * every limit; the chunked entries' stored lengths adding up to D exactly). On failure fills `why`
 * (a short English reason) and returns the code, with nothing allocated or open.
 */
int front_open(const char *path, struct front_image *img, char *why, size_t whylen);

/*
 * Writes every inline entry into `images_dir` (an existing empty directory) as extractLazy does:
 * files of the same names and bytes, created O_EXCL|O_NOFOLLOW with mode 0600 (less the umask),
 * and nothing else; memory entries not at all. On failure removes what it wrote and returns
 * FRONT_IO (or FRONT_BAD when the file became shorter) with `why`.
 */
int front_extract(const struct front_image *img, const char *images_dir, char *why, size_t whylen);

void front_close(struct front_image *img);

/* `checkpt-helper unpack FILE DIR` (tests): front_open + front_extract, then what was found on
 * stdout; on failure "not-here|bad|untrusted|io WHY" on stderr and exit status 10 + the code. */
int cmd_unpack(const char *path, const char *dir);

#endif
