/*
 * checkpt-rand.node: a tiny N-API addon whose reseed() makes OpenSSL's random generator fresh
 * in a process that was just checkpointed or resumed. OpenSSL 3 keeps its DRBG state in memory,
 * so every copy of a checkpoint starts from the same state, and its fork detection (getpid())
 * does not notice a copy, since CRIU restores the old pid. RAND_poll() reseeds the primary DRBG
 * from the operating system; the per-thread public and private DRBGs see that their parent was
 * reseeded and reseed themselves on their next use.
 *
 * Built without node-gyp or Node's headers: the few N-API declarations are written out below, and
 * every symbol is resolved at load time from the node binary that loads the addon (all official
 * node binaries export N-API and OpenSSL's RAND_* functions). RAND_poll is looked up with dlsym,
 * so a node without it makes reseed() return false instead of killing the process.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdbool.h>
#include <stddef.h>

#include "napi-min.h"

#define NAPI_AUTO_LENGTH ((size_t)-1)

static napi_value boolean(napi_env env, bool v) {
  napi_value r = NULL;
  napi_get_boolean(env, v, &r);
  return r;
}

/* reseed(): true when OpenSSL reseeded its primary DRBG from the operating system. */
static napi_value reseed(napi_env env, napi_callback_info info) {
  (void)info;
  int (*rand_poll)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "RAND_poll");
  int (*rand_status)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "RAND_status");
  if (!rand_poll) return boolean(env, false);
  bool ok = rand_poll() == 1;
  if (ok && rand_status) ok = rand_status() == 1;
  return boolean(env, ok);
}

__attribute__((visibility("default"))) napi_value napi_register_module_v1(napi_env env,
                                                                          napi_value exports) {
  napi_value fn;
  if (napi_create_function(env, "reseed", NAPI_AUTO_LENGTH, reseed, NULL, &fn) != 0) return NULL;
  if (napi_set_named_property(env, exports, "reseed", fn) != 0) return NULL;
  return exports;
}
