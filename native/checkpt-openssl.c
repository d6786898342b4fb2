/*
 * checkpt-openssl.node: a tiny N-API addon over the OpenSSL inside the node binary that loads it.
 *
 * reseed() makes OpenSSL's random generator fresh in a process that was just checkpointed or
 * resumed. OpenSSL 3 keeps its DRBG state in memory, so every copy of a checkpoint starts from the
 * same state, and its fork detection (getpid()) does not notice a copy, since CRIU restores the
 * old pid. RAND_poll() reseeds the primary DRBG from the operating system; the per-thread public
 * and private DRBGs see that their parent was reseeded and reseed themselves on their next use.
 *
 * kernelBytes(buf) fills buf with bytes from the kernel's generator (getrandom), independent of any
 * state in the process: a resumed copy seeds its Math.random from them in one call, where reading
 * /dev/urandom through node:fs ran cold code in a copy whose memory comes in page by page.
 *
 * refresh(seed, ...caches) does both in one call, and fills up to four Uint8Arrays from the kernel:
 * a lazily resumed copy's every step through JavaScript it has not run since the checkpoint is page
 * faults (the reseed, two randomFillSync and the seed through JavaScript took ~120 of them, 6 ms),
 * so the copy's caches and its Math.random seed are filled here. Returns 0, or REFRESH_NO_RESEED
 * and/or REFRESH_NO_FILL set.
 *
 * sha256Init(ctx), sha256Update(ctx, bytes), sha256Final(ctx, out): SHA-256 for the checks of a
 * checkpoint file, so that `checkpt -r` needs no `node:crypto`, whose modules take ~10 ms of
 * Node 26's start (docs/PERFORMANCE.md). The state lives in a Buffer of CTX_BYTES the caller
 * owns: nothing here to free, nothing kept between calls.
 *
 * Built without node-gyp or Node's headers: the few N-API declarations are written out below, and
 * every symbol is resolved at load time from the node binary that loads the addon (all official
 * node binaries export N-API and OpenSSL's functions). The OpenSSL functions are looked up with
 * dlsym, so a node without one makes reseed() return false, and leaves the sha256 functions out
 * (checkpt then hashes with node:crypto).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/random.h>

#include "napi-min.h"

/* OpenSSL's SHA256_CTX is 112 bytes (eight words of state, two of length, sixteen of block, two
 * of counts); the caller's buffer leaves room to spare. */
#define CTX_BYTES 256
#define DIGEST_BYTES 32

static int (*sha_init)(void *);
static int (*sha_update)(void *, const void *, size_t);
static int (*sha_final)(unsigned char *, void *);
/* Looked up when the addon loads, before any checkpoint: a copy's dlsym would walk cold memory. */
static int (*rand_poll)(void);
static int (*rand_status)(void);

static napi_value boolean(napi_env env, bool v) {
  napi_value r = NULL;
  napi_get_boolean(env, v, &r);
  return r;
}

static bool reseeded(void) {
  return rand_poll && rand_poll() == 1 && (!rand_status || rand_status() == 1);
}

/* reseed(): true when OpenSSL reseeded its primary DRBG from the operating system. */
static napi_value reseed(napi_env env, napi_callback_info info) {
  (void)info;
  return boolean(env, reseeded());
}

static bool fill_from_kernel(uint8_t *buf, size_t len) {
  size_t got = 0;
  while (got < len) {
    ssize_t n = getrandom(buf + got, len - got, 0);
    if (n <= 0) return false;
    got += (size_t)n;
  }
  return true;
}

static napi_value kernel_bytes(napi_env env, napi_callback_info info) {
  size_t argc = 1, len = 0;
  napi_value a[1];
  uint8_t *buf;
  if (napi_get_cb_info(env, info, &argc, a, NULL, NULL) != 0 || argc < 1 ||
      !napi_bytes_of(env, a[0], 0, &buf, &len))
    return boolean(env, false);
  return boolean(env, fill_from_kernel(buf, len));
}

#define REFRESH_NO_RESEED 1
#define REFRESH_NO_FILL 2
#define REFRESH_MAX_BUFS 4

/* refresh(buf...): RAND_poll, then every argument (a Uint8Array) filled by getrandom. */
static napi_value refresh(napi_env env, napi_callback_info info) {
  size_t argc = REFRESH_MAX_BUFS;
  napi_value a[REFRESH_MAX_BUFS];
  int r = reseeded() ? 0 : REFRESH_NO_RESEED;
  if (napi_get_cb_info(env, info, &argc, a, NULL, NULL) != 0 || argc > REFRESH_MAX_BUFS) argc = 0, r |= REFRESH_NO_FILL;
  for (size_t i = 0; i < argc; i++) {
    uint8_t *buf;
    size_t len;
    if (!napi_bytes_of(env, a[i], 0, &buf, &len) || !fill_from_kernel(buf, len)) r |= REFRESH_NO_FILL;
  }
  napi_value out = NULL;
  napi_create_int32(env, r, &out);
  return out;
}

/* Up to three arguments; false unless there are `want` and the first is a state buffer. */
static bool args(napi_env env, napi_callback_info info, size_t want, napi_value *a, uint8_t **ctx) {
  size_t argc = 3, len = 0;
  if (napi_get_cb_info(env, info, &argc, a, NULL, NULL) != 0 || argc < want) return false;
  return napi_bytes_of(env, a[0], CTX_BYTES, ctx, &len);
}

static napi_value sha256_init(napi_env env, napi_callback_info info) {
  napi_value a[3];
  uint8_t *ctx;
  if (!args(env, info, 1, a, &ctx)) return boolean(env, false);
  return boolean(env, sha_init(ctx) == 1);
}

static napi_value sha256_update(napi_env env, napi_callback_info info) {
  napi_value a[3];
  uint8_t *ctx, *data;
  size_t len;
  if (!args(env, info, 2, a, &ctx) || !napi_bytes_of(env, a[1], 0, &data, &len))
    return boolean(env, false);
  return boolean(env, sha_update(ctx, data, len) == 1);
}

static napi_value sha256_final(napi_env env, napi_callback_info info) {
  napi_value a[3];
  uint8_t *ctx, *out;
  size_t len;
  if (!args(env, info, 2, a, &ctx) || !napi_bytes_of(env, a[1], DIGEST_BYTES, &out, &len))
    return boolean(env, false);
  return boolean(env, sha_final(out, ctx) == 1);
}

static bool export_fn(napi_env env, napi_value exports, const char *name, napi_callback cb) {
  napi_value fn;
  return napi_create_function(env, name, NAPI_AUTO_LENGTH, cb, NULL, &fn) == 0 &&
         napi_set_named_property(env, exports, name, fn) == 0;
}

__attribute__((visibility("default"))) napi_value napi_register_module_v1(napi_env env,
                                                                          napi_value exports) {
  if (!export_fn(env, exports, "reseed", reseed) ||
      !export_fn(env, exports, "kernelBytes", kernel_bytes) ||
      !export_fn(env, exports, "refresh", refresh))
    return NULL;
  rand_poll = (int (*)(void))dlsym(RTLD_DEFAULT, "RAND_poll");
  rand_status = (int (*)(void))dlsym(RTLD_DEFAULT, "RAND_status");
  sha_init = (int (*)(void *))dlsym(RTLD_DEFAULT, "SHA256_Init");
  sha_update = (int (*)(void *, const void *, size_t))dlsym(RTLD_DEFAULT, "SHA256_Update");
  sha_final = (int (*)(unsigned char *, void *))dlsym(RTLD_DEFAULT, "SHA256_Final");
  if (sha_init && sha_update && sha_final &&
      !(export_fn(env, exports, "sha256Init", sha256_init) &&
        export_fn(env, exports, "sha256Update", sha256_update) &&
        export_fn(env, exports, "sha256Final", sha256_final)))
    return NULL;
  return exports;
}
