/*
 * checkpt-net.node: a tiny N-API addon, tcpSockets() lists the host's TCP sockets (IPv4 and IPv6,
 * every state) through sock_diag netlink, as text in the format of /proc/net/tcp, or null when
 * netlink cannot tell (no sock_diag here). The restore's socket preflight reads it instead of
 * /proc/net/tcp and tcp6, each of which walks the kernel's whole connection table (~4 ms of CPU
 * on a 2-core machine with 24 GiB; this dump takes well under 1 ms).
 *
 * hostSocketsAsync() does the same off Node's main thread, in its thread pool, and reads
 * /proc/net/udp and udp6 there too: a promise of [tcp, udp, udp6], each text or null. The dump
 * still walks the kernel's tables (~3 ms on this machine): a resume's start need not wait for it.
 * Built like checkpt-openssl.c: the few N-API declarations written out, resolved from the node binary.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "napi-min.h"
#include "sock-diag.h"
extern napi_status napi_create_string_utf8(napi_env env, const char *str, size_t length,
                                           napi_value *result);
extern napi_status napi_get_null(napi_env env, napi_value *result);
typedef struct napi_async_work__ *napi_async_work;
typedef struct napi_deferred__ *napi_deferred;
typedef void (*napi_async_execute_callback)(napi_env env, void *data);
typedef void (*napi_async_complete_callback)(napi_env env, napi_status status, void *data);
extern napi_status napi_create_async_work(napi_env env, napi_value async_resource,
                                          napi_value async_resource_name,
                                          napi_async_execute_callback execute,
                                          napi_async_complete_callback complete, void *data,
                                          napi_async_work *result);
extern napi_status napi_queue_async_work(napi_env env, napi_async_work work);
extern napi_status napi_delete_async_work(napi_env env, napi_async_work work);
extern napi_status napi_create_promise(napi_env env, napi_deferred *deferred, napi_value *promise);
extern napi_status napi_resolve_deferred(napi_env env, napi_deferred deferred,
                                         napi_value resolution);
extern napi_status napi_reject_deferred(napi_env env, napi_deferred deferred,
                                        napi_value rejection);
extern napi_status napi_create_array_with_length(napi_env env, size_t length, napi_value *result);
extern napi_status napi_set_element(napi_env env, napi_value object, uint32_t index,
                                    napi_value value);

struct text {
  char *buf;
  size_t len, cap;
  int failed;
};

static void append(struct text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void append(struct text *t, const char *fmt, ...) {
  if (t->failed) return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(t->buf + t->len, t->cap - t->len, fmt, ap);
    va_end(ap);
    if (n < 0) {
      t->failed = 1;
      return;
    }
    if ((size_t)n < t->cap - t->len) {
      t->len += (size_t)n;
      return;
    }
    size_t cap = t->cap * 2 + (size_t)n;
    char *b = realloc(t->buf, cap);
    if (!b) {
      t->failed = 1;
      return;
    }
    t->buf = b;
    t->cap = cap;
  }
}

/* An address as /proc/net prints it: each 32-bit word of the raw bytes, as a native u32. */
static void address(struct text *t, const uint32_t *words, int n, uint16_t port_be) {
  for (int i = 0; i < n; i++) append(t, "%08X", words[i]);
  append(t, ":%04X", ntohs(port_be));
}

/* One family's TCP sockets into t; 0, or -1 when netlink could not list them. */
static int dump(struct text *t, uint8_t family, unsigned *row) {
  int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
  if (fd < 0) return -1;
  if (sock_diag_ask(fd, family, ~0u, NULL)) {
    close(fd);
    return -1;
  }
  static long buf[8192];
  for (;;) {
    ssize_t n;
    do n = recv(fd, buf, sizeof buf, 0); while (n < 0 && errno == EINTR);
    if (n <= 0) break;
    for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
      if (h->nlmsg_type == NLMSG_DONE) {
        close(fd);
        return 0;
      }
      if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY || h->nlmsg_len < NLMSG_LENGTH(sizeof(struct inet_diag_msg))) {
        close(fd);
        return -1;
      }
      const struct inet_diag_msg *m = NLMSG_DATA(h);
      int words = family == AF_INET ? 1 : 4;
      append(t, "%4u: ", (*row)++);
      address(t, m->id.idiag_src, words, m->id.idiag_sport);
      append(t, " ");
      address(t, m->id.idiag_dst, words, m->id.idiag_dport);
      /* The queues stay zero: nothing reads them, and a listener's would mean something else. */
      append(t, " %02X 00000000:00000000 00:00000000 00000000 %5u 0 %u\n", m->idiag_state,
             m->idiag_uid, m->idiag_inode);
    }
  }
  close(fd);
  return -1;
}

/* Every TCP socket of this network namespace as /proc/net/tcp would list it, malloc'd; NULL
 * when netlink cannot tell. */
static char *tcp_text(size_t *len) {
  struct text t = {malloc(65536), 0, 65536, 0};
  if (!t.buf) return NULL;
  unsigned row = 0;
  append(&t, "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n");
  if (!t.failed && dump(&t, AF_INET, &row) == 0 && dump(&t, AF_INET6, &row) == 0 && !t.failed) {
    *len = t.len;
    return t.buf;
  }
  free(t.buf);
  return NULL;
}

/* A whole /proc file, malloc'd; NULL when it cannot be read. */
static char *proc_text(const char *path, size_t *len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return NULL;
  struct text t = {malloc(65536), 0, 65536, 0};
  for (;;) {
    if (!t.buf) break;
    if (t.len == t.cap) {
      char *b = realloc(t.buf, t.cap * 2);
      if (!b) {
        free(t.buf);
        t.buf = NULL;
        break;
      }
      t.buf = b;
      t.cap *= 2;
    }
    ssize_t n = read(fd, t.buf + t.len, t.cap - t.len);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      free(t.buf);
      t.buf = NULL;
    }
    if (n <= 0) break;
    t.len += (size_t)n;
  }
  close(fd);
  *len = t.len;
  return t.buf;
}

static napi_value text_value(napi_env env, const char *buf, size_t len) {
  napi_value r = NULL;
  if (!buf || napi_create_string_utf8(env, buf, len, &r) != 0) napi_get_null(env, &r);
  return r;
}

/* tcpSockets(): every TCP socket of this network namespace, as /proc/net/tcp would list it. */
static napi_value tcp_sockets(napi_env env, napi_callback_info info) {
  (void)info;
  size_t len = 0;
  char *buf = tcp_text(&len);
  napi_value r = text_value(env, buf, len);
  free(buf);
  return r;
}

#define TEXTS 3
struct listing {
  napi_async_work work;
  napi_deferred deferred;
  char *text[TEXTS];
  size_t len[TEXTS];
};

/* In the thread pool: no N-API here. */
static void list_sockets(napi_env env, void *data) {
  (void)env;
  struct listing *l = data;
  l->text[0] = tcp_text(&l->len[0]);
  l->text[1] = proc_text("/proc/net/udp", &l->len[1]);
  l->text[2] = proc_text("/proc/net/udp6", &l->len[2]);
}

static void listed(napi_env env, napi_status status, void *data) {
  struct listing *l = data;
  napi_value arr = NULL;
  if (status == 0 && napi_create_array_with_length(env, TEXTS, &arr) == 0) {
    for (uint32_t i = 0; i < TEXTS; i++) napi_set_element(env, arr, i, text_value(env, l->text[i], l->len[i]));
    napi_resolve_deferred(env, l->deferred, arr);
  } else {
    napi_value none = NULL;
    napi_get_null(env, &none);
    napi_reject_deferred(env, l->deferred, none);
  }
  napi_delete_async_work(env, l->work);
  for (int i = 0; i < TEXTS; i++) free(l->text[i]);
  free(l);
}

/* hostSocketsAsync(): a promise of [tcp, udp, udp6] (see the top of this file). */
static napi_value host_sockets_async(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value promise = NULL, name = NULL;
  struct listing *l = calloc(1, sizeof *l);
  if (!l) return NULL;
  if (napi_create_promise(env, &l->deferred, &promise) != 0 ||
      napi_create_string_utf8(env, "checkpt-net", NAPI_AUTO_LENGTH, &name) != 0 ||
      napi_create_async_work(env, NULL, name, list_sockets, listed, l, &l->work) != 0) {
    free(l);
    return NULL;
  }
  if (napi_queue_async_work(env, l->work) != 0) {
    /* The promise is never settled then: reject it here. */
    napi_value none = NULL;
    napi_get_null(env, &none);
    napi_reject_deferred(env, l->deferred, none);
    napi_delete_async_work(env, l->work);
    free(l);
  }
  return promise;
}

__attribute__((visibility("default"))) napi_value napi_register_module_v1(napi_env env,
                                                                          napi_value exports) {
  napi_value fn;
  if (napi_create_function(env, "tcpSockets", NAPI_AUTO_LENGTH, tcp_sockets, NULL, &fn) != 0)
    return NULL;
  if (napi_set_named_property(env, exports, "tcpSockets", fn) != 0) return NULL;
  if (napi_create_function(env, "hostSocketsAsync", NAPI_AUTO_LENGTH, host_sockets_async, NULL, &fn) != 0)
    return NULL;
  if (napi_set_named_property(env, exports, "hostSocketsAsync", fn) != 0) return NULL;
  return exports;
}
