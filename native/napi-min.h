/*
 * The few N-API declarations checkpt's addons use, written out so that they build without Node's
 * headers or node-gyp; the symbols are resolved at load time from the node binary.
 */
#ifndef CHECKPT_NAPI_MIN_H
#define CHECKPT_NAPI_MIN_H
#include <stdbool.h>
#include <stddef.h>

typedef struct napi_env__ *napi_env;
typedef struct napi_value__ *napi_value;
typedef struct napi_callback_info__ *napi_callback_info;
typedef int napi_status; /* an enum in node_api.h; napi_ok is 0 */
typedef napi_value (*napi_callback)(napi_env env, napi_callback_info info);

extern napi_status napi_create_function(napi_env env, const char *utf8name, size_t length,
                                        napi_callback cb, void *data, napi_value *result);
extern napi_status napi_set_named_property(napi_env env, napi_value object, const char *utf8name,
                                           napi_value value);
extern napi_status napi_get_boolean(napi_env env, bool value, napi_value *result);

#endif
