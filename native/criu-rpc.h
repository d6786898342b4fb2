/*
 * The few messages of CRIU's RPC (images/rpc.proto, criu/cr-service.c) the dump front exchanges
 * with `criu swrk`: one DUMP request, acknowledgements of CRIU's notifications, and CRIU's
 * responses. Protocol Buffers by hand (varints and length-delimited fields), every length read
 * from CRIU checked against what is left of its message.
 */
#ifndef CHECKPT_CRIU_RPC_H
#define CHECKPT_CRIU_RPC_H
#include <stddef.h>
#include <stdint.h>

/* criu_req_type */
enum { RPC_EMPTY = 0, RPC_DUMP = 1, RPC_NOTIFY = 6 };
/* criu_network_lock_method */
enum { RPC_NETLOCK_IPTABLES = 1, RPC_NETLOCK_NFTABLES = 2, RPC_NETLOCK_SKIP = 3 };

/* Larger than any response CRIU sends (a notification is a few dozen bytes; an error message is
 * cut to a log line): anything bigger is refused, not truncated. */
#define RPC_MAX_MSG 65536
#define RPC_MAX_EXTERNAL 16

/* What a DUMP request carries: criu_opts, as `criu dump`'s command line would say it. */
struct rpc_dump_opts {
  int images_dir_fd, work_dir_fd, pid, log_level;
  const char *log_file;
  int leave_running, leave_stopped, shell_job, file_locks;
  int tcp_established, tcp_close, tcp_skip_in_flight;
  int network_lock; /* 0: CRIU's default */
  long timeout;     /* seconds; 0: CRIU's default */
  int notify_scripts;
  int unprivileged; /* in a user namespace of the user's own (checkpt run without root) */
  const char *external[RPC_MAX_EXTERNAL];
  int n_external;
};

/* The part of criu_resp the front acts on. */
struct rpc_resp {
  int type, success;
  int has_notify;
  char script[64]; /* criu_notify.script: the action, as an action script would see it */
  int cr_errno;
  char errmsg[512]; /* cr_errmsg, cut to fit */
};

struct rpc_buf {
  uint8_t data[4096];
  size_t len;
  int overflow;
};

/* Encoders: 0, or -1 when the message does not fit (buf->overflow is then set). */
int rpc_encode_dump(struct rpc_buf *b, const struct rpc_dump_opts *o);
int rpc_encode_notify_reply(struct rpc_buf *b, int ok);

/* 0 with *r filled, or -1 with *why saying what is wrong with the message. */
int rpc_decode_resp(const uint8_t *msg, size_t len, struct rpc_resp *r, const char **why);

/* Reading Protocol Buffers by hand (also CRIU's page maps, native/page-server.c). */
struct pb_reader {
  const uint8_t *p, *end;
};
/* The varint at r->p (at most ten bytes, all before r->end), advancing past it: 0, or -1. */
int pb_get_varint(struct pb_reader *r, uint64_t *v);

#endif
