/* CRIU's RPC messages by hand: see criu-rpc.h. */
#include "criu-rpc.h"
#include <string.h>

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_I32 = 5 };

/* criu_opts field numbers (images/rpc.proto) */
enum {
  OPT_IMAGES_DIR_FD = 1, OPT_PID = 2, OPT_LEAVE_RUNNING = 3, OPT_TCP_ESTABLISHED = 5,
  OPT_SHELL_JOB = 7, OPT_FILE_LOCKS = 8, OPT_LOG_LEVEL = 9, OPT_LOG_FILE = 10,
  OPT_NOTIFY_SCRIPTS = 12, OPT_WORK_DIR_FD = 17, OPT_EXTERNAL = 37, OPT_TIMEOUT = 45,
  OPT_TCP_SKIP_IN_FLIGHT = 46, OPT_TCP_CLOSE = 52, OPT_NETWORK_LOCK = 64, OPT_UNPRIVILEGED = 67,
  OPT_LEAVE_STOPPED = 69,
};

static void put_byte(struct rpc_buf *b, uint8_t v) {
  if (b->len >= sizeof b->data) { b->overflow = 1; return; }
  b->data[b->len++] = v;
}

static void put_varint(struct rpc_buf *b, uint64_t v) {
  while (v >= 0x80) {
    put_byte(b, (uint8_t)(v | 0x80));
    v >>= 7;
  }
  put_byte(b, (uint8_t)v);
}

static void put_key(struct rpc_buf *b, unsigned field, unsigned wt) { put_varint(b, ((uint64_t)field << 3) | wt); }

/* int32 as protobuf encodes it: a negative one sign-extended to ten bytes. */
static void put_int(struct rpc_buf *b, unsigned field, long v) {
  put_key(b, field, WT_VARINT);
  put_varint(b, (uint64_t)(int64_t)v);
}

static void put_bytes(struct rpc_buf *b, unsigned field, const void *p, size_t n) {
  put_key(b, field, WT_LEN);
  put_varint(b, n);
  if (n > sizeof b->data - b->len) { b->overflow = 1; return; }
  memcpy(b->data + b->len, p, n);
  b->len += n;
}

static void put_string(struct rpc_buf *b, unsigned field, const char *s) { put_bytes(b, field, s, strlen(s)); }

static void put_flag(struct rpc_buf *b, unsigned field, int on) {
  if (on) put_int(b, field, 1);
}

int rpc_encode_dump(struct rpc_buf *b, const struct rpc_dump_opts *o) {
  struct rpc_buf opts = {.len = 0, .overflow = 0};
  put_int(&opts, OPT_IMAGES_DIR_FD, o->images_dir_fd);
  put_int(&opts, OPT_PID, o->pid);
  put_flag(&opts, OPT_LEAVE_RUNNING, o->leave_running);
  put_flag(&opts, OPT_TCP_ESTABLISHED, o->tcp_established);
  put_flag(&opts, OPT_SHELL_JOB, o->shell_job);
  put_flag(&opts, OPT_FILE_LOCKS, o->file_locks);
  put_int(&opts, OPT_LOG_LEVEL, o->log_level);
  if (o->log_file) put_string(&opts, OPT_LOG_FILE, o->log_file);
  put_flag(&opts, OPT_NOTIFY_SCRIPTS, o->notify_scripts);
  if (o->work_dir_fd >= 0) put_int(&opts, OPT_WORK_DIR_FD, o->work_dir_fd);
  for (int i = 0; i < o->n_external; i++) put_string(&opts, OPT_EXTERNAL, o->external[i]);
  if (o->timeout > 0) put_int(&opts, OPT_TIMEOUT, o->timeout);
  put_flag(&opts, OPT_TCP_SKIP_IN_FLIGHT, o->tcp_skip_in_flight);
  put_flag(&opts, OPT_TCP_CLOSE, o->tcp_close);
  if (o->network_lock) put_int(&opts, OPT_NETWORK_LOCK, o->network_lock);
  put_flag(&opts, OPT_LEAVE_STOPPED, o->leave_stopped);
  put_flag(&opts, OPT_UNPRIVILEGED, o->unprivileged);
  b->len = 0;
  b->overflow = opts.overflow;
  put_int(b, 1, RPC_DUMP);          /* criu_req.type */
  put_bytes(b, 2, opts.data, opts.len); /* criu_req.opts */
  return b->overflow ? -1 : 0;
}

int rpc_encode_notify_reply(struct rpc_buf *b, int ok) {
  b->len = 0;
  b->overflow = 0;
  put_int(b, 1, RPC_NOTIFY); /* criu_req.type */
  put_int(b, 3, ok ? 1 : 0); /* criu_req.notify_success */
  return b->overflow ? -1 : 0;
}

int pb_get_varint(struct pb_reader *r, uint64_t *v) {
  *v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (r->p >= r->end) return -1;
    uint8_t c = *r->p++;
    *v |= (uint64_t)(c & 0x7f) << shift;
    if (!(c & 0x80)) return 0;
  }
  return -1; /* more than ten bytes */
}

/* A length-delimited field's bytes, only if all of them are inside the message. */
static int get_len(struct pb_reader *r, const uint8_t **p, size_t *n) {
  uint64_t len;
  if (pb_get_varint(r, &len) < 0) return -1;
  if (len > (uint64_t)(r->end - r->p)) return -1;
  *p = r->p;
  *n = (size_t)len;
  r->p += len;
  return 0;
}

static int skip(struct pb_reader *r, unsigned wt) {
  uint64_t v;
  const uint8_t *p;
  size_t n;
  switch (wt) {
  case WT_VARINT: return pb_get_varint(r, &v);
  case WT_LEN: return get_len(r, &p, &n);
  case WT_I64: n = 8; break;
  case WT_I32: n = 4; break;
  default: return -1; /* groups (3, 4) are not in rpc.proto; 6 and 7 do not exist */
  }
  if (n > (size_t)(r->end - r->p)) return -1;
  r->p += n;
  return 0;
}

static void copy_text(char *dst, size_t size, const uint8_t *p, size_t n) {
  if (n >= size) n = size - 1;
  memcpy(dst, p, n);
  dst[n] = '\0';
  /* Printed into checkpt's log: no control characters from CRIU. */
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)dst[i] < 0x20 && dst[i] != '\n') dst[i] = '?';
}

static int decode_notify(const uint8_t *p, size_t n, struct rpc_resp *out, const char **why) {
  struct pb_reader r = {p, p + n};
  while (r.p < r.end) {
    uint64_t key;
    if (pb_get_varint(&r, &key) < 0) { *why = "a truncated field key in criu_notify"; return -1; }
    unsigned field = (unsigned)(key >> 3), wt = (unsigned)(key & 7);
    if (field == 1 && wt == WT_LEN) {
      const uint8_t *s;
      size_t len;
      if (get_len(&r, &s, &len) < 0) { *why = "criu_notify.script runs past the end of the message"; return -1; }
      if (len >= sizeof out->script) { *why = "criu_notify.script is longer than any action name"; return -1; }
      copy_text(out->script, sizeof out->script, s, len);
    } else if (skip(&r, wt) < 0) {
      *why = "a field of criu_notify runs past the end of the message";
      return -1;
    }
  }
  return 0;
}

int rpc_decode_resp(const uint8_t *msg, size_t len, struct rpc_resp *out, const char **why) {
  memset(out, 0, sizeof *out);
  out->type = -1;
  out->success = -1;
  *why = NULL;
  if (len > RPC_MAX_MSG) { *why = "the message is larger than any response CRIU sends"; return -1; }
  struct pb_reader r = {msg, msg + len};
  while (r.p < r.end) {
    uint64_t key, v;
    if (pb_get_varint(&r, &key) < 0) { *why = "a truncated field key"; return -1; }
    unsigned field = (unsigned)(key >> 3), wt = (unsigned)(key & 7);
    if (field == 0) { *why = "field number 0"; return -1; }
    if ((field == 1 || field == 2 || field == 7) && wt == WT_VARINT) {
      if (pb_get_varint(&r, &v) < 0) { *why = "a truncated varint"; return -1; }
      if (field == 1) out->type = (int)(uint32_t)v;
      else if (field == 2) out->success = v != 0;
      else out->cr_errno = (int)(uint32_t)v;
    } else if (field == 5 && wt == WT_LEN) {
      const uint8_t *p;
      size_t n;
      if (get_len(&r, &p, &n) < 0) { *why = "criu_resp.notify runs past the end of the message"; return -1; }
      if (decode_notify(p, n, out, why) < 0) return -1;
      out->has_notify = 1;
    } else if (field == 9 && wt == WT_LEN) {
      const uint8_t *p;
      size_t n;
      if (get_len(&r, &p, &n) < 0) { *why = "criu_resp.cr_errmsg runs past the end of the message"; return -1; }
      copy_text(out->errmsg, sizeof out->errmsg, p, n);
    } else if (skip(&r, wt) < 0) {
      *why = "a field runs past the end of the message, or has an unknown wire type";
      return -1;
    }
  }
  /* Both are required in criu_resp. */
  if (out->type < 0 || out->success < 0) { *why = "criu_resp without its type or success field"; return -1; }
  if (out->type == RPC_NOTIFY && !out->has_notify) { *why = "a notification without criu_notify"; return -1; }
  return 0;
}
