/*
 * The few N-API declarations checkpt's addons use, written out so that they build without Node's
 * headers or node-gyp; the symbols are resolved at load time from the node binary.
 */
#ifndef CHECKPT_NAPI_MIN_H
#define CHECKPT_NAPI_MIN_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

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
extern napi_status napi_create_int32(napi_env env, int32_t value, napi_value *result);
extern napi_status napi_get_cb_info(napi_env env, napi_callback_info cbinfo, size_t *argc,
                                    napi_value *argv, napi_value *this_arg, void **data);
extern napi_status napi_get_typedarray_info(napi_env env, napi_value typedarray, int *type,
                                            size_t *length, void **data, napi_value *arraybuffer,
                                            size_t *byte_offset);

#define NAPI_AUTO_LENGTH ((size_t)-1)

/* napi_uint8_array in node_api.h's napi_typedarray_type (a Buffer is one). */
#define NAPI_UINT8_ARRAY 1

/* The bytes of a Uint8Array (a Buffer) argument; false when it is none, or shorter than `min`. */
static inline bool napi_bytes_of(napi_env env, napi_value v, size_t min, unsigned char **data,
                                 size_t *len) {
  int type = -1;
  void *p = NULL;
  size_t n = 0;
  if (napi_get_typedarray_info(env, v, &type, &n, &p, NULL, NULL) != 0) return false;
  if (type != NAPI_UINT8_ARRAY || n < min) return false;
  *data = p;
  *len = n;
  return true;
}

#endif
