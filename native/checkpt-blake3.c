/*
 * checkpt-blake3.node: BLAKE3 for the chunk tables of checkpoint files (src/common/blake3.ts).
 *
 * blake3(data, out): out (32 bytes or more) gets the 32-byte BLAKE3 digest of data; false when an
 * argument is not a Uint8Array or out is short. One call per chunk: a 64 KiB chunk takes ~10 µs
 * here (6.7 GB/s with AVX-512, four times OpenSSL's SHA-256 with SHA-NI), so the call costs little.
 *
 * The hash is the reference C implementation (native/blake3/, CC0 or Apache-2.0, from the blake3
 * 1.3.1 crate as Debian bookworm ships it in librust-blake3-dev), which picks SSE2, SSE4.1, AVX2
 * or AVX-512 at run time. Built without node-gyp or Node's headers, as the other addons.
 *
 * checkpt_blake3 is the same hash for C: CRIU's lazy-pages daemon loads this file with dlopen
 * (CHECKPT_HASH_LIBRARY, scripts/criu-patches/staged-local-reads.patch) to check a page fault's
 * block itself. Node's functions above are bound lazily, so it loads outside Node too.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "blake3/blake3.h"
#include "napi-min.h"

__attribute__((visibility("default"))) void checkpt_blake3(const void *data, size_t len,
                                                           uint8_t out[BLAKE3_OUT_LEN]) {
  blake3_hasher h;
  blake3_hasher_init(&h);
  blake3_hasher_update(&h, data, len);
  blake3_hasher_finalize(&h, out, BLAKE3_OUT_LEN);
}

static napi_value boolean(napi_env env, bool v) {
  napi_value r = NULL;
  napi_get_boolean(env, v, &r);
  return r;
}

static napi_value hash(napi_env env, napi_callback_info info) {
  size_t argc = 2, len = 0, out_len = 0;
  napi_value a[2];
  uint8_t *data = NULL, *out = NULL;
  if (napi_get_cb_info(env, info, &argc, a, NULL, NULL) != 0 || argc < 2 ||
      !napi_bytes_of(env, a[0], 0, &data, &len) ||
      !napi_bytes_of(env, a[1], BLAKE3_OUT_LEN, &out, &out_len))
    return boolean(env, false);
  checkpt_blake3(data, len, out);
  return boolean(env, true);
}

__attribute__((visibility("default"))) napi_value napi_register_module_v1(napi_env env,
                                                                          napi_value exports) {
  napi_value fn;
  if (napi_create_function(env, "blake3", NAPI_AUTO_LENGTH, hash, NULL, &fn) != 0 ||
      napi_set_named_property(env, exports, "blake3", fn) != 0)
    return NULL;
  return exports;
}
