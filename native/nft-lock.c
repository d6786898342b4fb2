/* See nft-lock.h. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <linux/netlink.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nf_tables.h>
#include "nft-lock.h"

/* inventory_entry.network_lock_method (criu/include/cr_options.h). */
#define LOCK_NFTABLES 1
#define LOCK_SKIP 2

/*
 * Whether nftables table `name` of `family` exists in this network namespace: 1, 0, or -1 when
 * the kernel does not say (no nf_tables, no CAP_NET_ADMIN, no answer within a second).
 */
static int nft_table_exists(uint8_t family, const char *name) {
  size_t nlen = strlen(name) + 1;
  if (nlen > NFT_TABLE_MAXNAMELEN) return -1;
  union {
    struct nlmsghdr nh;
    char bytes[8192];
  } buf;
  memset(&buf, 0, sizeof buf);
  struct nlmsghdr *nh = &buf.nh;
  nh->nlmsg_type = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE;
  nh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
  nh->nlmsg_seq = 1;
  struct nfgenmsg *nf = NLMSG_DATA(nh);
  nf->nfgen_family = family;
  nf->version = NFNETLINK_V0;
  nf->res_id = htons(0);
  struct nlattr *a = (struct nlattr *)((char *)nf + NLMSG_ALIGN(sizeof *nf));
  a->nla_type = NFTA_TABLE_NAME;
  a->nla_len = (uint16_t)(NLA_HDRLEN + nlen);
  memcpy((char *)a + NLA_HDRLEN, name, nlen);
  nh->nlmsg_len = NLMSG_LENGTH(NLMSG_ALIGN(sizeof *nf) + NLA_ALIGN(a->nla_len));

  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
  if (fd < 0) return -1;
  struct timeval tv = {1, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
  int result = -1, acked = 0;
  if (sendto(fd, &buf, nh->nlmsg_len, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0) goto out;
  /* The table's NEWTABLE message, then the acknowledgement; or an error (ENOENT: no such table). */
  for (int round = 0; round < 4 && !acked; round++) {
    ssize_t n = recv(fd, &buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    for (nh = &buf.nh; NLMSG_OK(nh, (size_t)n); nh = NLMSG_NEXT(nh, n)) {
      if (nh->nlmsg_seq != 1) continue;
      if (nh->nlmsg_type == NLMSG_ERROR) {
        const struct nlmsgerr *e = NLMSG_DATA(nh);
        if (e->error == -ENOENT) result = 0;
        else if (e->error != 0) result = -1;
        acked = 1;
        break;
      }
      if (nh->nlmsg_type == ((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE)) result = 1;
    }
  }
  if (!acked) result = -1;
out:
  close(fd);
  return result;
}

void skip_lock_if_gone(const char *table, const char *method_at) {
  /* Only what CRIU names its lock tables: "inet CRIU-<run id>". */
  if (strncmp(table, "inet CRIU-", 10) != 0) return;
  char *path = NULL;
  errno = 0;
  long long offset = strtoll(method_at, &path, 10);
  if (errno || offset < 8 || !path || *path != ':' || !path[1]) return;
  path++;
  /* Anything but a definite "no such table" leaves CRIU to remove it, as it always does. */
  if (nft_table_exists(NFPROTO_INET, table + 5) != 0) return;
  int fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return;
  uint8_t method = 0;
  if (pread(fd, &method, 1, (off_t)offset) == 1 && method == LOCK_NFTABLES) {
    method = LOCK_SKIP;
    if (pwrite(fd, &method, 1, (off_t)offset) != 1) { /* CRIU then removes nothing, slowly */ }
  }
  close(fd);
}
