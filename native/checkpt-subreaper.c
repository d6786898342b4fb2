/*
 * checkpt-subreaper.node: a tiny N-API addon, childSubreaper(on) sets PR_SET_CHILD_SUBREAPER for
 * the calling process and returns what it was. Under `checkpt run` a program's first process
 * adopts the program's orphans so that they stay in its checkpoint; when that process is a Node
 * program checkpointing itself, its own dump front must still leave its tree (it detaches by
 * orphaning itself), so checkpt turns adoption off around starting the front.
 * Built like checkpt-openssl.c: the few N-API declarations written out, resolved from the node binary.
 */
#define _GNU_SOURCE
#include <stdbool.h>
#include <stddef.h>
#include <sys/prctl.h>

#include "napi-min.h"
extern napi_status napi_get_value_bool(napi_env env, napi_value value, bool *result);
extern napi_status napi_get_cb_info(napi_env env, napi_callback_info cbinfo, size_t *argc,
                                    napi_value *argv, napi_value *this_arg, void **data);

#define NAPI_AUTO_LENGTH ((size_t)-1)

/* childSubreaper(on): the previous setting; it stays as it was when the call fails. */
static napi_value child_subreaper(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1] = {NULL}, r = NULL;
  bool on = false;
  int was = 0;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc >= 1) napi_get_value_bool(env, argv[0], &on);
  if (prctl(PR_GET_CHILD_SUBREAPER, &was) == 0 && (was != 0) != on)
    prctl(PR_SET_CHILD_SUBREAPER, on ? 1 : 0);
  napi_get_boolean(env, was != 0, &r);
  return r;
}

__attribute__((visibility("default"))) napi_value napi_register_module_v1(napi_env env,
                                                                          napi_value exports) {
  napi_value fn;
  if (napi_create_function(env, "childSubreaper", NAPI_AUTO_LENGTH, child_subreaper, NULL, &fn) != 0)
    return NULL;
  if (napi_set_named_property(env, exports, "childSubreaper", fn) != 0) return NULL;
  return exports;
}
