/* sock_diag netlink requests for TCP sockets, shared by the resume front (resume-front.c) and the
 * Node addon (checkpt-net.c). */
#ifndef CHECKPT_SOCK_DIAG_H
#define CHECKPT_SOCK_DIAG_H
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

/* One request on the netlink socket fd for TCP sockets of `family`: a dump of the states in
 * `states`, or (id set) the lookup of that one socket. 0, or -1 when it could not be sent. */
static inline int sock_diag_ask(int fd, uint8_t family, uint32_t states, const struct inet_diag_sockid *id) {
  struct {
    struct nlmsghdr nlh;
    struct inet_diag_req_v2 r;
  } req;
  memset(&req, 0, sizeof req);
  req.nlh.nlmsg_len = sizeof req;
  req.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  req.nlh.nlmsg_flags = NLM_F_REQUEST | (id ? 0 : NLM_F_DUMP);
  req.nlh.nlmsg_seq = 1;
  req.r.sdiag_family = family;
  req.r.sdiag_protocol = IPPROTO_TCP;
  req.r.idiag_states = states;
  if (id) req.r.id = *id;
  struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
  return sendto(fd, &req, sizeof req, 0, (struct sockaddr *)&kernel, sizeof kernel) == (ssize_t)sizeof req ? 0 : -1;
}
#endif
