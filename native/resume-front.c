/*
 * checkpt-helper front SCRIPT -r [-d] FILE: `checkpt -r [-d] FILE` up to the running copy, before
 * Node has started (dist/bin/checkpt.cjs runs it when it is asked for a resume;
 * docs/ARCHITECTURE.md).
 *
 * It does what src/engine/restore.ts does for the common case, and nothing else: a plain
 * checkpoint file (front-image.c checks it as the TypeScript reader does) with the manifest's
 * `front` recipe (src/engine/front.ts), resumed by root in the foreground off a terminal or
 * detached (-d), with checkpt's own CRIU build, lazily (held below 32 MiB, one process), its
 * ports free on the host. Anything else, and any failure before the copy runs, execs Node on
 * SCRIPT instead, which resumes as before and says what is wrong: the front never reports an error
 * itself.
 *
 * Processes: this one (P) checks and unpacks the file, forks the keeper (K), which starts CRIU's
 * lazy-pages daemon and the page server (`serve-pages`, which checks every chunk) and watches
 * them until the copy has all of its memory, then starts `checkpt-helper init` with CRIU's
 * restore. Once the helper says "restored", P execs Node with CHECKPT_FRONT_HANDOVER, which
 * supervises the copy as it would have after its own restore (restore.ts adoptFront): it reads
 * the helper's status socket on, and K's report of how loading the memory ended.
 */
#define _GNU_SOURCE
#include "resume-front.h"
#include "front-image.h"
#include "fdio.h"
#include "sock-diag.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <sched.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/prctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define LAZY_MIN_BYTES (32ull << 20)
#define HOLD_LIMIT_MS 30000
#define NODE_AFTER_MS 200
/* The copy's first steps share one CPU with CRIU's lazy-pages daemon (its faults answered where
 * they are taken, not by waking the other CPU: 47-55 us a round trip on this VM, 6 on one CPU),
 * and the daemon's background transfers wait until the copy has not faulted for HOLD_QUIET_MS,
 * for PIN_MS after the restore (checkpt-helper init --pin-cpu, CRIU's CHECKPT_CRIU_LAZY_HOLD). */
#define PIN_MS 300
#define HOLD_QUIET_MS 5
#define KDAT_DIR "/dev/shm/checkpt-criu"
#define CTRL_E_KEY 5

/* native/page-server.c's control messages and exits (src/engine/page-server.ts). */
#define PLAN_MAGIC 0x53504b43u
#define PLAN_PAGEMAPS 1u
#define MSG_NEED 2u
#define MSG_PLANNED 3u
#define MSG_STAGE_EAGER 5u
#define MSG_EAGER_STAGED 6u
#define MSG_CHECK_ALL 7u
#define MSG_ALL_CHECKED 8u
#define MSG_HOLD_OVER 9u
#define MSG_SIZE 16
#define PS_EXIT_CLOSED 0
#define PS_EXIT_HUNG_UP 3
#define PS_EXIT_DAMAGED 4
#define PS_EXIT_BAD_MAP 5

static const char *script;
static char **node_args; /* -r FILE, or with -d (--detach) */
static int node_argc;
static const char *file;
/* -d: the copy goes on in a session of its own once its memory is in (commands.ts prints its pid). */
static int detach;
static char self[PATH_MAX];
static char work[PATH_MAX];
static char images[PATH_MAX + 16];
static struct front_image img;
static int img_open;
/* checkpt's CRIU waits at CHECKPT_CRIU_LAZY_GATE (scripts/criu-patches/lazy-gate-from-env.patch):
 * its restore can start beside the lazy-pages daemon instead of after it. */
static int lazy_gate;
static volatile sig_atomic_t stopping;

/* CHECKPT_BENCH_TRACE: the moments the bench reads (src/common/trace.ts writes the same lines). */
void bench_trace(const char *name) {
  const char *f = getenv("CHECKPT_BENCH_TRACE");
  if (!f || !*f) return;
  struct timespec t;
  clock_gettime(CLOCK_REALTIME, &t);
  char line[128];
  int n = snprintf(line, sizeof line, "%s %.1f\n", name, (double)t.tv_sec * 1000.0 + (double)t.tv_nsec / 1e6);
  int fd = open(f, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return;
  if (write(fd, line, (size_t)n) < 0) { /* a trace only */ }
  close(fd);
}

static void rm_tree(const char *path) {
  DIR *d = opendir(path);
  if (d) {
    struct dirent *e;
    while ((e = readdir(d))) {
      if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
      char p[PATH_MAX];
      if (snprintf(p, sizeof p, "%s/%s", path, e->d_name) >= (int)sizeof p) continue;
      struct stat st;
      if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode)) rm_tree(p);
      else unlink(p);
    }
    closedir(d);
  }
  rmdir(path);
}

/* Node resumes instead (and says what is wrong, if anything is): the front has left nothing. */
static void fallback_because(const char *reason) {
  const char *dbg = getenv("CHECKPT_FRONT");
  if (dbg && !strcmp(dbg, "debug")) fprintf(stderr, "checkpt: the resume front leaves this resume to Node: %s\n", reason);
  if (img_open) front_close(&img);
  img_open = 0;
  if (work[0]) rm_tree(work);
  work[0] = 0;
  char **argv = calloc((size_t)node_argc + 3, sizeof *argv);
  if (!argv) _exit(127);
  argv[0] = "node";
  argv[1] = (char *)script;
  for (int i = 0; i < node_argc; i++) argv[2 + i] = node_args[i];
  unsetenv("CHECKPT_FRONT_HANDOVER");
  signal(SIGPIPE, SIG_DFL);
  signal(SIGTERM, SIG_DFL);
  signal(SIGINT, SIG_DFL);
  signal(SIGHUP, SIG_DFL);
  execvp("node", argv);
  fprintf(stderr, "checkpt: cannot run node (%s); is Node.js on the PATH?\n", strerror(errno));
  _exit(127);
}

static void on_stop(int sig) { stopping = sig; }

/* The program's signals and the checkpoint requests that came before Node listens: passed on to
 * it in the handover, and raised again there (src/cli/supervise.ts holdRequests). */
static volatile sig_atomic_t held_sigs[16];
static volatile sig_atomic_t nheld;
static void on_held(int sig) {
  if (nheld < 16) held_sigs[nheld++] = sig;
}

/* Stopped before the copy ran: nothing stays, and this process ends by the signal. */
static void stopped_exit(void) {
  if (img_open) front_close(&img);
  img_open = 0;
  if (work[0]) rm_tree(work);
  signal(stopping, SIG_DFL);
  raise(stopping);
  _exit(128 + stopping);
}

/* What a resume reads nothing of: the variables of kind 'test' in src/common/config.ts (a test
 * keeps this list equal to them), and CHECKPT_FRONT itself. Any other CHECKPT_ variable is left
 * to Node, which knows what it means. */
static const char *const IGNORED_VARIABLES[] = {
    "CHECKPT_FRONT", "CHECKPT_REAL_CRIU", "CHECKPT_ZDTM_DIR", "CHECKPT_ZDTM_ONLY",
    "CHECKPT_FAULT_SLOW_CHECK_MS", "CHECKPT_FUZZ_SEED", "CHECKPT_TEST_NODES",
    "CHECKPT_TEST_CLOSE_MS", "CHECKPT_TEST_BUILTINS", "CHECKPT_TEST_MS", "CHECKPT_BENCH_TRACE",
    "CHECKPT_TEST_FRONT_HELPER", "CHECKPT_TEST_UNIT", "CHECKPT_TEST_INIT_STALL_MS",
    "CHECKPT_TEST_FRONT_NO_DAEMON", "CHECKPT_TEST_RUN_EXEC_STALL_MS", "CHECKPT_TEST_SIGHTINGS", NULL};

/* The conditions under which Node would do more than the front does: left to Node. */
static int applies(void) {
  /* As src/cli/args.ts reads them: -r or -d first, then each of -r, -d and the file once. */
  if (node_argc < 2 || node_argc > 3 || (strcmp(node_args[0], "-r") && strcmp(node_args[0], "-d"))) return 0;
  int r = 0;
  for (int i = 0; i < node_argc; i++) {
    const char *a = node_args[i];
    if (!strcmp(a, "-r") && !r) r = 1;
    else if ((!strcmp(a, "-d") || !strcmp(a, "--detach")) && !detach) detach = 1;
    else if (a[0] != '-' && a[0] && !strstr(a, "://") && !file) file = a;
    else return 0;
  }
  if (!r || !file || node_argc != 2 + detach) return 0;
  /* On a terminal only detached: the copy's stdin is then /dev/null, and the terminal not its. */
  if (geteuid() != 0 || (isatty(0) && !detach)) return 0;
  for (char **e = environ; *e; e++) {
    if (!strncmp(*e, "CRIU_FAULT=", 11) || !strncmp(*e, "CRIU_BREAKPOINTS=", 17)) return 0;
    if (strncmp(*e, "CHECKPT_", 8) != 0) continue;
    int ignored = 0;
    for (const char *const *n = IGNORED_VARIABLES; *n; n++) {
      size_t len = strlen(*n);
      if (!strncmp(*e, *n, len) && (*e)[len] == '=') ignored = 1;
    }
    if (!ignored) return 0;
  }
  /* Root of the host's user namespace only (a rootless run's root is the user). */
  char map[128] = {0};
  int fd = open("/proc/self/uid_map", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, map, sizeof map - 1);
  close(fd);
  unsigned a, b, c;
  if (n <= 0 || sscanf(map, "%u %u %u", &a, &b, &c) != 3 || a != 0 || b != 0 || c != 4294967295u) return 0;
  return 1;
}

/* checkpt's own CRIU build, with the patches the front relies on (scripts/install-criu.sh). */
static const char *CRIU = "/opt/checkpt/criu/bin/criu";
static int own_criu(void) {
  if (access(CRIU, X_OK) != 0) return 0;
  FILE *f = fopen("/opt/checkpt/criu/BUILD-INFO", "re");
  if (!f) return 0;
  /* The binary recorded (src/engine/criu.ts binaryIdentity): one replaced or copied over since is
   * not the build the record describes, and Node runs it without the patches' variables. */
  struct stat st;
  char self_id[96] = "";
  if (stat(CRIU, &st) == 0)
    snprintf(self_id, sizeof self_id, "binary=%lu %lld %lld.%09ld\n", (unsigned long)st.st_ino,
             (long long)st.st_size, (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
  char line[1024];
  int patches = 0, same = 0;
  while (fgets(line, sizeof line, f)) {
    if (!strncmp(line, "patches=", 8) && strstr(line, "pdeathsig-from-env.patch") &&
        strstr(line, "script-actions-from-env.patch") && strstr(line, "staged-local-reads.patch")) {
      patches = 1;
      lazy_gate = strstr(line, "lazy-gate-from-env.patch") != NULL;
    }
    if (self_id[0] && !strcmp(line, self_id)) same = 1;
  }
  fclose(f);
  return patches && same;
}

/* The image's sockets (sockets.ts planSockets compares the same): 'l' listening, 'u' UDP bound,
 * 'c' a connection with its addresses as /proc/net/tcp prints them. */
struct image_sock {
  char kind;
  unsigned port, rport;
  char lhex[33], rhex[33];
};

/* The manifest's recipe (src/engine/front.ts). */
struct recipe {
  long pid, gen;
  int tcp_closed;
  char mount[PATH_MAX], fifo[PATH_MAX];
  struct { int fd; char key[PATH_MAX]; } in[3];
  int nin;
  char lock_family[32], lock_name[200], lock_table[240];
  long lock_offset;
  struct image_sock socks[64];
  int nsocks;
};

static int recipe_of(const char *json, struct recipe *r) {
  static const char key[] = "\"front\":\"";
  const char *at = strstr(json, key);
  if (!at || strstr(at + 1, key)) return 0;
  at += sizeof key - 1;
  const char *end = strchr(at, '"');
  if (!end || end - at > 8192) return 0;
  char text[8193];
  memcpy(text, at, (size_t)(end - at));
  text[end - at] = 0;
  memset(r, 0, sizeof *r);
  r->pid = -1;
  r->gen = -1;
  r->lock_offset = -1;
  int tcp = 0;
  char *save = NULL;
  char *w = strtok_r(text, " ", &save);
  if (!w || strcmp(w, "v1") != 0) return 0;
  while ((w = strtok_r(NULL, " ", &save))) {
    char *eq = strchr(w, '=');
    if (!eq) return 0;
    *eq = 0;
    const char *v = eq + 1;
    char *rest;
    if (!strcmp(w, "pid")) {
      r->pid = strtol(v, &rest, 10);
      if (*rest || r->pid < 2) return 0;
    } else if (!strcmp(w, "gen")) {
      r->gen = strtol(v, &rest, 10);
      if (*rest || r->gen < 0) return 0;
    } else if (!strcmp(w, "tcp")) {
      if (!strcmp(v, "closed")) r->tcp_closed = 1;
      else if (strcmp(v, "est") != 0) return 0;
      tcp = 1;
    } else if (!strcmp(w, "mount")) {
      if (strlen(v) >= sizeof r->mount) return 0;
      strcpy(r->mount, v);
    } else if (!strcmp(w, "fifo")) {
      if (strlen(v) >= sizeof r->fifo) return 0;
      strcpy(r->fifo, v);
    } else if (!strcmp(w, "in")) {
      if (r->nin == 3) return 0;
      long fd = strtol(v, &rest, 10);
      if (*rest != ':' || fd < 0 || fd > 2 || strlen(rest + 1) >= sizeof r->in[0].key) return 0;
      r->in[r->nin].fd = (int)fd;
      strcpy(r->in[r->nin].key, rest + 1);
      r->nin++;
    } else if (!strcmp(w, "lockfamily")) {
      if (strlen(v) >= sizeof r->lock_family) return 0;
      strcpy(r->lock_family, v);
    } else if (!strcmp(w, "lockname")) {
      if (strlen(v) >= sizeof r->lock_name) return 0;
      strcpy(r->lock_name, v);
    } else if (!strcmp(w, "lockat")) {
      r->lock_offset = strtol(v, &rest, 10);
      if (*rest || r->lock_offset < 0) return 0;
    } else if (!strcmp(w, "listen") || !strcmp(w, "udp") || !strcmp(w, "conn")) {
      if (r->nsocks == 64) return 0;
      struct image_sock *k = &r->socks[r->nsocks];
      memset(k, 0, sizeof *k);
      k->kind = w[0];
      long p = strtol(v, &rest, 10);
      if (p < 0 || p > 65535) return 0;
      k->port = (unsigned)p;
      if (k->kind == 'c') {
        if (*rest != ':') return 0;
        long q = strtol(rest + 1, &rest, 10);
        if (*rest != ':' || q < 0 || q > 65535) return 0;
        k->rport = (unsigned)q;
        if (sscanf(rest + 1, "%32[0-9A-F]:%32[0-9A-F]", k->lhex, k->rhex) != 2) return 0;
        size_t ll = strlen(k->lhex), rl = strlen(k->rhex);
        if ((ll != 8 && ll != 32) || ll != rl || strlen(rest + 1) != ll + 1 + rl) return 0;
      } else if (*rest) return 0;
      r->nsocks++;
    }
    /* An unknown word is a later checkpt's addition this front does not know: Node decides. */
    else return 0;
  }
  if (r->pid < 0 || r->gen < 0 || !tcp) return 0;
  if (!r->lock_family[0] != !r->lock_name[0] || !r->lock_family[0] != (r->lock_offset < 0)) return 0;
  if (r->lock_family[0]) snprintf(r->lock_table, sizeof r->lock_table, "%s %s", r->lock_family, r->lock_name);
  if (!r->mount[0] != !r->fifo[0]) return 0;
  if (r->mount[0] && (strncmp(r->fifo, r->mount, strlen(r->mount)) != 0 || r->fifo[strlen(r->mount)] != '/' || strstr(r->fifo, "/../")))
    return 0;
  return 1;
}

/*
 * An address as /proc/net/tcp prints it (and the recipe's conn= holds it) into the bytes of
 * in_addr or in6_addr, which inet_diag's id carries as they are (network order). The kernel prints
 * each 32-bit word of those bytes as a native u32 (%08X): 8 hex digits read back as a u32 are that
 * word as it lies in memory, with no byte swap ("0100007F" is 127.0.0.1 on x86). The number of
 * words (1 for IPv4, 4 for IPv6), or 0 when `hex` is not 8 or 32 hex digits.
 */
static int proc_hex_address(const char *hex, uint32_t words[4]) {
  size_t len = strlen(hex);
  if (len != 8 && len != 32) return 0;
  for (size_t i = 0; i < len / 8; i++) {
    uint32_t w = 0;
    for (size_t j = 0; j < 8; j++) {
      char c = hex[i * 8 + j];
      int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
      if (d < 0) return 0;
      w = w << 4 | (uint32_t)d;
    }
    words[i] = w;
  }
  return (int)(len / 8);
}

/* An address of 1 or 4 words as the IPv4 address it stands for (an IPv4 one, or v4-mapped IPv6):
 * planSockets' text compares them so (addressText writes ::ffff:a.b.c.d as a.b.c.d). */
static int v4_of(const uint32_t *w, int n, uint32_t *v4) {
  if (n == 1) *v4 = w[0];
  else if (!w[0] && !w[1] && w[2] == htonl(0xffff)) *v4 = w[3];
  else return 0;
  return 1;
}

static int same_address(const uint32_t *a, int an, const uint32_t *b, int bn) {
  uint32_t a4 = 0, b4 = 0;
  int av4 = v4_of(a, an, &a4), bv4 = v4_of(b, bn, &b4);
  if (av4 || bv4) return av4 && bv4 && a4 == b4;
  return !memcmp(a, b, 16);
}

static long diag_buf[8192];

/* One sock_diag dump of `family`'s TCP sockets in `states`, each handed to `each`: 0 once it
 * ended well, -1 when netlink cannot tell. */
static int diag_dump(int fd, uint8_t family, uint32_t states, void (*each)(const struct inet_diag_msg *, void *),
                     void *ctx) {
  if (sock_diag_ask(fd, family, states, NULL)) return -1;
  for (;;) {
    ssize_t n;
    do n = recv(fd, diag_buf, sizeof diag_buf, 0); while (n < 0 && errno == EINTR);
    if (n <= 0) return -1;
    for (struct nlmsghdr *h = (struct nlmsghdr *)diag_buf; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
      /* The dump's end carries its error, if it failed part way. */
      if (h->nlmsg_type == NLMSG_DONE)
        return h->nlmsg_len >= NLMSG_LENGTH(sizeof(int)) && *(int *)NLMSG_DATA(h) ? -1 : 0;
      if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY || h->nlmsg_len < NLMSG_LENGTH(sizeof(struct inet_diag_msg))) return -1;
      each(NLMSG_DATA(h), ctx);
    }
  }
}

struct listeners {
  const struct recipe *r;
  int found;
};

static void listener_seen(const struct inet_diag_msg *m, void *ctx) {
  struct listeners *l = ctx;
  for (int i = 0; i < l->r->nsocks; i++)
    if (l->r->socks[i].kind == 'l' && l->r->socks[i].port == ntohs(m->id.idiag_sport)) l->found = 1;
}

/* 1 when a TCP socket of `family` listens on the port of one of the image's listeners, 0 when none
 * does, -1 when netlink cannot tell. Asked for LISTEN alone, the kernel walks only its listening
 * table. On ports alone where planSockets compares addresses too: Node decides any such case. */
static int listener_in_way(int fd, uint8_t family, const struct recipe *r) {
  struct listeners l = {r, 0};
  return diag_dump(fd, family, 1u << TCP_LISTEN, listener_seen, &l) ? -1 : l.found;
}

/*
 * Whether a TCP socket in any state but LISTEN has connection k's very addresses and ports
 * (planSockets' inUse, IPv4 and v4-mapped IPv6 alike): 1 or 0, -1 when netlink cannot tell. One
 * lookup in the kernel's connection table per interface of the host: a socket bound to an
 * interface (SO_BINDTODEVICE) is found only by a lookup naming that one, one bound to none by any.
 * With no connection there, the kernel answers with the listener on the local port, if any.
 */
static int connection_in_use(int fd, const struct image_sock *k, const struct if_nameindex *ifs) {
  struct inet_diag_sockid id;
  memset(&id, 0, sizeof id);
  int n = proc_hex_address(k->lhex, id.idiag_src);
  if (!n || proc_hex_address(k->rhex, id.idiag_dst) != n) return -1;
  id.idiag_sport = htons((uint16_t)k->port);
  id.idiag_dport = htons((uint16_t)k->rport);
  id.idiag_cookie[0] = id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;
  if (!ifs[0].if_index) return -1;
  for (const struct if_nameindex *i = ifs; i->if_index; i++) {
    id.idiag_if = i->if_index;
    if (sock_diag_ask(fd, n == 1 ? AF_INET : AF_INET6, ~0u, &id)) return -1;
    ssize_t got;
    do got = recv(fd, diag_buf, sizeof diag_buf, 0); while (got < 0 && errno == EINTR);
    const struct nlmsghdr *h = (struct nlmsghdr *)diag_buf;
    if (got <= 0 || !NLMSG_OK(h, (size_t)got)) return -1;
    if (h->nlmsg_type == NLMSG_ERROR && h->nlmsg_len >= NLMSG_LENGTH(sizeof(struct nlmsgerr))) {
      /* ENOENT: nothing there (the dumps before showed that sock_diag answers for TCP). */
      if (((const struct nlmsgerr *)NLMSG_DATA(h))->error == -ENOENT) continue;
      return -1;
    }
    if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY || h->nlmsg_len < NLMSG_LENGTH(sizeof(struct inet_diag_msg))) return -1;
    const struct inet_diag_msg *m = NLMSG_DATA(h);
    if (m->idiag_state == TCP_LISTEN) continue;
    int mn = m->idiag_family == AF_INET ? 1 : 4;
    if (m->id.idiag_sport != id.idiag_sport || m->id.idiag_dport != id.idiag_dport ||
        !same_address(m->id.idiag_src, mn, id.idiag_src, n) || !same_address(m->id.idiag_dst, mn, id.idiag_dst, n))
      return -1; /* not what was asked for: Node decides */
    return 1;
  }
  return 0;
}

/* The image's connections as addresses, for connection_seen. */
struct connections {
  struct recipe *r;
  struct {
    uint32_t l[4], rem[4];
    int n;
  } want[sizeof ((struct recipe *)0)->socks / sizeof ((struct recipe *)0)->socks[0]];
};

static void connection_seen(const struct inet_diag_msg *m, void *ctx) {
  struct connections *c = ctx;
  if (m->idiag_state == TCP_LISTEN) return;
  int mn = m->idiag_family == AF_INET ? 1 : 4;
  for (int i = 0; i < c->r->nsocks; i++)
    if (c->want[i].n && ntohs(m->id.idiag_sport) == c->r->socks[i].port &&
        ntohs(m->id.idiag_dport) == c->r->socks[i].rport && same_address(m->id.idiag_src, mn, c->want[i].l, c->want[i].n) &&
        same_address(m->id.idiag_dst, mn, c->want[i].rem, c->want[i].n))
      c->r->tcp_closed = 1;
}

/*
 * Whether any of the image's connections has its very addresses and ports in use by a TCP socket
 * of `family` in any state but LISTEN, from one dump of them all (the kernel then walks its whole
 * connection table, however many connections the image has): 0 (tcp_closed set when one is), -1
 * when netlink cannot tell.
 */
static int connections_dumped(int fd, uint8_t family, struct recipe *r) {
  static struct connections c;
  c.r = r;
  for (int i = 0; i < r->nsocks; i++) {
    c.want[i].n = 0;
    if (r->socks[i].kind != 'c') continue;
    c.want[i].n = proc_hex_address(r->socks[i].lhex, c.want[i].l);
    if (!c.want[i].n || proc_hex_address(r->socks[i].rhex, c.want[i].rem) != c.want[i].n) return -1;
  }
  return diag_dump(fd, family, ~(1u << TCP_LISTEN), connection_seen, &c);
}

/* Above this many lookups (connections × interfaces, ~5 µs each) one dump of each family's table
 * costs less (~4.6 ms for both on a 24 GiB machine): the check stays within ~5 ms either way. */
static long lookup_cap = 1024;

/*
 * The image's TCP sockets against the host's, through sock_diag netlink: /proc/net/tcp and tcp6
 * walk every bucket of the kernel's connection table, however few sockets it holds (~3.2 ms each
 * on a 24 GiB machine, on every resume's path), where a dump of listeners walks the listening
 * table only and a connection is a lookup. 1 when nothing is in the way (a connection whose very
 * addresses are in use again sets tcp_closed), 0 when Node is to decide.
 */
static int tcp_clear(struct recipe *r) {
  int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
  if (fd < 0) return 0;
  /* Dumped even without listeners in the image: a lookup's ENOENT means nothing only once these
   * showed that the kernel's TCP diag answers (it says ENOENT too when it is not there). */
  int clear = listener_in_way(fd, AF_INET, r) == 0 && listener_in_way(fd, AF_INET6, r) == 0;
  struct if_nameindex *ifs = NULL;
  long conns = 0, nifs = 0;
  for (int i = 0; i < r->nsocks; i++) conns += r->socks[i].kind == 'c';
  if (clear && conns > 0) {
    ifs = if_nameindex();
    for (const struct if_nameindex *i = ifs; i && i->if_index; i++) nifs++;
  }
  /* Beyond the cap one dump per family answers for every connection, and no lookup is made. */
  int lookups = conns > 0;
  if (clear && conns * nifs > lookup_cap) {
    clear = connections_dumped(fd, AF_INET, r) == 0 && connections_dumped(fd, AF_INET6, r) == 0;
    lookups = 0;
  }
  for (int i = 0; clear && lookups && i < r->nsocks; i++) {
    if (r->socks[i].kind != 'c') continue;
    int used = ifs ? connection_in_use(fd, &r->socks[i], ifs) : -1;
    if (used < 0) clear = 0;
    else if (used) r->tcp_closed = 1;
  }
  if (ifs) if_freenameindex(ifs);
  close(fd);
  return clear;
}

/*
 * The image's sockets against the host's, as sockets.ts planSockets decides, on ports alone
 * where it compares a listener's or a UDP socket's addresses too: 1 when nothing is in the way (a
 * connection whose very addresses are in use again sets tcp_closed, as there), 0 when Node is to
 * decide.
 */
static int sockets_clear(struct recipe *r) {
  int tcp = 0, udp = 0;
  for (int i = 0; i < r->nsocks; i++) {
    if (r->socks[i].kind == 'u') udp = 1;
    else tcp = 1;
  }
  if (tcp && !tcp_clear(r)) return 0;
  if (!udp) return 1;
  /* UDP's tables are small (~0.04 ms each): read as they are. */
  static const char *tables[] = {"/proc/net/udp", "/proc/net/udp6"};
  for (int t = 0; t < 2; t++) {
    FILE *f = fopen(tables[t], "re");
    if (!f) return 0;
    char line[512];
    if (!fgets(line, sizeof line, f)) {
      fclose(f);
      continue;
    }
    while (fgets(line, sizeof line, f)) {
      char lhex[33], rhex[33];
      unsigned lport, rport, st;
      if (sscanf(line, " %*u: %32[0-9A-F]:%x %32[0-9A-F]:%x %x", lhex, &lport, rhex, &rport, &st) != 5) {
        fclose(f);
        return 0;
      }
      for (int i = 0; i < r->nsocks; i++)
        if (r->socks[i].kind == 'u' && r->socks[i].port == lport) {
          fclose(f);
          return 0;
        }
    }
    fclose(f);
  }
  return 1;
}

/*
 * checkpt-helper front-sockets WORD...: the front's check of a recipe's listen=, udp= and conn=
 * words against this host (sockets_clear), for the tests: "clear est", "clear closed" or "node".
 * checkpt-helper front-sockets --address HEX: the address the front reads in HEX (as
 * /proc/net/tcp prints it), as inet_ntop writes it.
 */
int cmd_front_sockets(int argc, char **argv) {
  if (argc == 2 && !strcmp(argv[0], "--address")) {
    uint32_t w[4];
    char text[INET6_ADDRSTRLEN];
    int n = proc_hex_address(argv[1], w);
    if (!n || !inet_ntop(n == 1 ? AF_INET : AF_INET6, w, text, sizeof text)) return 126;
    puts(text);
    return 0;
  }
  /* --dump: the connections through one dump of the table, as with many connections or interfaces. */
  if (argc > 0 && !strcmp(argv[0], "--dump")) {
    lookup_cap = -1;
    argc--;
    argv++;
  }
  char json[8192] = "{\"front\":\"v1 pid=2 gen=0 tcp=est";
  size_t len = strlen(json);
  for (int i = 0; i < argc; i++) {
    if (len + strlen(argv[i]) + 3 >= sizeof json) return 126;
    len += (size_t)sprintf(json + len, " %s", argv[i]);
  }
  strcpy(json + len, "\"}");
  struct recipe r;
  if (!recipe_of(json, &r)) {
    fprintf(stderr, "usage: checkpt-helper front-sockets [--dump] [listen=P | udp=P | conn=LP:RP:LHEX:RHEX]... | --address HEX\n");
    return 126;
  }
  if (sockets_clear(&r)) printf("clear %s\n", r.tcp_closed ? "closed" : "est");
  else puts("node");
  return 0;
}

static uint64_t mem_available(void) {
  FILE *f = fopen("/proc/meminfo", "re");
  if (!f) return 0;
  char line[256];
  uint64_t kb = 0;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "MemAvailable: %lu kB", (unsigned long *)&kb) == 1) break;
  fclose(f);
  return kb * 1024;
}

/*
 * staging.ts sweepOrphans: the staging directories in `root` of restores whose checkpt, in this
 * PID namespace, no longer runs (killed with SIGKILL, it removed nothing). Node's resumes swept
 * them; a machine whose resumes all go through the front needs it as much.
 */
static void sweep_orphans(const char *root, const char *ns) {
  DIR *d = opendir(root);
  if (!d) return;
  static const char prefix[] = "checkpt-restore-";
  size_t nl = strlen(ns);
  struct dirent *e;
  while ((e = readdir(d))) {
    if (strncmp(e->d_name, prefix, sizeof prefix - 1) != 0) continue;
    const char *tag = e->d_name + sizeof prefix - 1;
    char *dot;
    long pid = strtol(tag, &dot, 10);
    if (dot == tag || *dot != '.' || pid <= 0 || pid == (long)getpid()) continue;
    if (strncmp(dot + 1, ns, nl) != 0 || dot[1 + nl] != '-') continue;
    if (kill((pid_t)pid, 0) == 0 || errno == EPERM) continue;
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/%s", root, e->d_name) >= (int)sizeof path) continue;
    /* Only a directory of our own (not a link, nor another user's look-alike in a sticky /tmp). */
    struct stat st;
    if (lstat(path, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != geteuid()) continue;
    rm_tree(path);
  }
  closedir(d);
}

/* src/engine/staging.ts: /dev/shm when it and free memory have ample room, else the temp dir. */
static int make_staging(uint64_t bytes) {
  const char *root = "/dev/shm";
  double need = (double)bytes * 1.1 + 64.0 * 1024 * 1024;
  struct statvfs vs;
  if (statvfs(root, &vs) != 0 || (double)vs.f_bavail * (double)vs.f_bsize <= need ||
      (double)mem_available() / 2 <= need) {
    const char *t = getenv("TMPDIR");
    root = t && *t ? t : "/tmp";
  }
  char ns[64] = "0";
  char link[64];
  ssize_t n = readlink("/proc/self/ns/pid", link, sizeof link - 1);
  if (n > 0) {
    link[n] = 0;
    char *a = strchr(link, '['), *b = strchr(link, ']');
    if (a && b && b > a + 1 && (size_t)(b - a - 1) < sizeof ns) {
      memcpy(ns, a + 1, (size_t)(b - a - 1));
      ns[b - a - 1] = 0;
    }
  }
  sweep_orphans(root, ns);
  if (snprintf(work, sizeof work, "%s/checkpt-restore-%d.%s-XXXXXX", root, (int)getpid(), ns) >= (int)sizeof work) return 0;
  if (!mkdtemp(work)) {
    work[0] = 0;
    return 0;
  }
  snprintf(images, sizeof images, "%s/images", work);
  return mkdir(images, 0700) == 0;
}

/* src/engine/kdat.ts: CRIU's cache of kernel probes, root's alone. */
static void prepare_kdat(void) {
  struct stat st;
  if (lstat(KDAT_DIR, &st) == 0) {
    if (S_ISDIR(st.st_mode) && st.st_uid == 0 && (st.st_mode & 077) == 0) return;
    if (S_ISDIR(st.st_mode)) rm_tree(KDAT_DIR);
    else unlink(KDAT_DIR);
  }
  mkdir(KDAT_DIR, 0700);
}

static int count_pagemaps(void) {
  DIR *d = opendir(images);
  if (!d) return -1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    unsigned id;
    char tail[8];
    if (sscanf(e->d_name, "pagemap-%u.im%7s", &id, tail) == 2 && !strcmp(tail, "g")) n++;
  }
  closedir(d);
  return n;
}

/*
 * The command line /proc shows for a helper run without an exec: its own, as if exec'd, where the
 * front's would be (tests and `ps` read it). PR_SET_MM_MAP, which takes every field at once, needs
 * CAP_SYS_ADMIN (or CAP_CHECKPOINT_RESTORE), which the front has (root); the single-field form
 * needs CAP_SYS_RESOURCE, which containers often drop. The other fields stay as /proc says.
 */
static void retitle(char *const argv[]) {
  size_t len = 0;
  for (int i = 0; argv[i]; i++) len += strlen(argv[i]) + 1;
  char *buf = malloc(len), st[2048];
  char *at = stat_fields("/proc/self/stat", st, sizeof st);
  if (!buf || !at) {
    free(buf);
    return;
  }
  size_t off = 0;
  for (int i = 0; argv[i]; i++) {
    size_t l = strlen(argv[i]) + 1;
    memcpy(buf + off, argv[i], l);
    off += l;
  }
  /* proc(5)'s numbering: the state is field 3, start_code 26, start_data 45, env_end 51. */
  unsigned long long f[52] = {0};
  char *save = NULL;
  int k = 3;
  for (char *t = strtok_r(at, " ", &save); t && k < 52; t = strtok_r(NULL, " ", &save)) f[k++] = strtoull(t, NULL, 10);
  if (k < 52) {
    free(buf);
    return;
  }
  struct prctl_mm_map m = {
      .start_code = f[26], .end_code = f[27], .start_stack = f[28], .start_data = f[45], .end_data = f[46],
      .start_brk = f[47], .brk = (unsigned long)sbrk(0), .arg_start = (unsigned long)buf,
      .arg_end = (unsigned long)(buf + len), .env_start = f[50], .env_end = f[51], .exe_fd = (unsigned)-1,
  };
  if (prctl(PR_SET_MM, PR_SET_MM_MAP, (unsigned long)&m, sizeof m, 0) != 0) free(buf);
}

/*
 * In a child about to become `argv`: `fds[i]` as its fd i (-1: /dev/null), everything else closed,
 * the signals the front catches or ignores at their default; the file's tables unmapped first when
 * the child is this helper again (their fd was moved above if the child is given it). _exit(127)
 * on failure.
 */
static void become(const int *fds, int nfds, int session, int drop_img) {
  /* A detached copy's init: the terminal's signals and its hang-up are not the copy's any more. */
  if (session && setsid() < 0) _exit(127);
  int null = open("/dev/null", O_RDWR);
  /* Above every target fd first, so that placing one cannot close another still to be placed. */
  int moved[80];
  if (nfds > 80) _exit(127);
  for (int i = 0; i < nfds; i++) moved[i] = fds[i] < 0 ? null : fcntl(fds[i], F_DUPFD, 128);
  if (drop_img && img_open) front_close(&img);
  for (int i = 0; i < nfds; i++)
    if (moved[i] < 0 || dup2(moved[i], i) < 0) _exit(127);
  if (syscall(SYS_close_range, (unsigned)nfds, ~0u, 0) != 0)
    for (int fd = nfds; fd < 1024; fd++) close(fd);
  signal(SIGPIPE, SIG_DFL);
  signal(SIGTERM, SIG_DFL);
  signal(SIGINT, SIG_DFL);
  signal(SIGHUP, SIG_DFL);
}

struct spawned {
  char *const *argv;
  const int *fds;
  int nfds;
  char *const *envp;
  int session;
};

static int spawned_main(void *arg) {
  const struct spawned *a = arg;
  become(a->fds, a->nfds, a->session, 0);
  execve(a->argv[0], a->argv, a->envp);
  _exit(127);
}

/* Starts `argv` with `fds[i]` as its fd i (-1: /dev/null), everything else closed. */
static pid_t start(char *const argv[], const int *fds, int nfds, char *const envp[], int session) {
  /* This helper itself (the page server, the init) runs here without an exec, which costs 3-5 ms
   * on a guest where every mapping does: nothing of the front may stay with it but what an exec
   * would keep. */
  int self_again = !strcmp(argv[0], self);
  if (!self_again) {
    /* Another program (CRIU's daemon): its child shares this process's memory until its exec
     * (vfork semantics), where a fork copied the page tables and the exec tore the copy down again,
     * each step a trap on a guest where page tables cost (the daemon's fork to exec: ~6 ms here).
     * Its own stack; this process waits until the exec. */
    static char stack[64 * 1024] __attribute__((aligned(16)));
    struct spawned a = {argv, fds, nfds, envp, session};
    return clone(spawned_main, stack + sizeof stack, CLONE_VM | CLONE_VFORK | SIGCHLD, &a);
  }
  pid_t pid = fork();
  if (pid != 0) return pid;
  become(fds, nfds, session, 1);
  /* What an exec does to signals: those caught go back to their default, ignored ones stay. */
  for (int sig = 1; sig < NSIG; sig++) {
    struct sigaction sa;
    if (sigaction(sig, NULL, &sa) != 0) continue;
    if ((sa.sa_flags & SA_SIGINFO) || (sa.sa_handler != SIG_DFL && sa.sa_handler != SIG_IGN)) signal(sig, SIG_DFL);
  }
  environ = (char **)envp;
  retitle(argv);
  int argc = 0;
  while (argv[argc]) argc++;
  exit(helper_main(argc, (char **)argv));
}

/* The environment plus `extra` (NAME=VALUE strings, NULL-terminated). */
static char **env_with(char **extra) {
  size_t n = 0, m = 0;
  while (environ[n]) n++;
  while (extra[m]) m++;
  char **out = calloc(n + m + 1, sizeof *out);
  if (!out) return NULL;
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    int replaced = 0;
    for (size_t j = 0; j < m; j++) {
      size_t len = strchr(extra[j], '=') - extra[j] + 1;
      if (!strncmp(environ[i], extra[j], len)) replaced = 1;
    }
    if (!replaced) out[k++] = environ[i];
  }
  for (size_t j = 0; j < m; j++) out[k++] = extra[j];
  return out;
}

static int pidfd(pid_t pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }

static void put32(uint8_t *b, uint32_t v) { memcpy(b, &v, 4); }
static void put64(uint8_t *b, uint64_t v) { memcpy(b, &v, 8); }

static int send_msg(int fd, uint32_t type) {
  uint8_t m[MSG_SIZE] = {0};
  put32(m, type);
  return write(fd, m, sizeof m) == (ssize_t)sizeof m ? 0 : -1;
}

/*
 * The page server's plan (src/engine/page-server.ts encodePlan, with the page maps read by the
 * server), written piece by piece from the tables the front holds: a copy of them (1.2 MB for
 * 2 GB of memory) cost 10-15 ms of first touches on a 2-core guest, where each one traps.
 */
static int send_plan(int ctl) {
  uint8_t h[16], f[32], id[4];
  /* A send buffer as large as the plan and the orders after it (heap-2GB's tables: 1.2 MB), so
   * that the keeper goes on to start the daemon without waiting for the server to read them. */
  size_t bytes = sizeof h + 4 * MSG_SIZE;
  for (size_t i = 0; i < img.nmem; i++) bytes += sizeof f + sizeof id + (size_t)img.mem[i].count * 36;
  int sndbuf = bytes < (1u << 28) ? (int)bytes * 2 : 1 << 29;
  if (setsockopt(ctl, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof sndbuf) != 0)
    setsockopt(ctl, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
  put32(h, PLAN_MAGIC);
  put32(h + 4, (uint32_t)img.nmem);
  put32(h + 8, 0);
  put32(h + 12, PLAN_PAGEMAPS);
  if (write_all(ctl, h, sizeof h)) return -1;
  for (size_t i = 0; i < img.nmem; i++) {
    const struct front_mem *m = &img.mem[i];
    put64(f, m->size);
    put32(f + 8, img.flags & 4 ? 2 : 1);
    put32(f + 12, m->count);
    put32(f + 16, m->chunk);
    put32(f + 20, m->zstd ? 1 : 0);
    put64(f + 24, m->first);
    if (write_all(ctl, f, sizeof f) || write_all(ctl, m->table, (size_t)m->count * 36)) return -1;
  }
  for (size_t i = 0; i < img.nmem; i++) {
    put32(id, img.mem[i].id);
    if (write_all(ctl, id, sizeof id)) return -1;
  }
  return 0;
}

/* One line (at most len-1 bytes) from fd, waiting at most ms (-1: no limit); 0 on EOF or timeout. */
static int read_line(int fd, char *buf, size_t len, int ms) {
  size_t at = 0;
  while (at + 1 < len) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int r = poll(&p, 1, ms);
    if (r < 0 && errno == EINTR) {
      if (stopping) return 0;
      continue;
    }
    if (r <= 0) return 0;
    ssize_t n = read(fd, buf + at, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return 0;
    if (buf[at] == '\n') {
      buf[at] = 0;
      return 1;
    }
    at++;
  }
  buf[at] = 0;
  return 1;
}

static void say(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(int fd, const char *fmt, ...) {
  char line[2048];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof line - 1, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if (n > (int)sizeof line - 2) n = (int)sizeof line - 2;
  /* One line: a newline inside the message would end it early. */
  for (int i = 0; i < n; i++)
    if (line[i] == '\n') line[i] = ' ';
  line[n] = '\n';
  if (write_all(fd, line, (size_t)n + 1) < 0) { /* nobody listens any more */ }
}

static void kill_tree(pid_t pid) {
  if (pid <= 0) return;
  /* The children first: CRIU's probes, the helper's init (which takes its namespace with it). */
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/task/%d/children", (int)pid, (int)pid);
  FILE *f = fopen(path, "re");
  if (f) {
    int c;
    while (fscanf(f, "%d", &c) == 1) kill_tree(c);
    fclose(f);
  }
  kill(pid, SIGKILL);
}

/* The CPU the copy's first steps and CRIU's daemon share; -1: none (one CPU, or unknown). */
static int pin_cpu = -1;

static int choose_pin_cpu(void) {
  cpu_set_t m;
  if (sched_getaffinity(0, sizeof m, &m) != 0 || CPU_COUNT(&m) < 2) return -1;
  int c = sched_getcpu();
  return c >= 0 && c < CPU_SETSIZE && CPU_ISSET(c, &m) ? c : -1;
}

/*
 * The keeper: the daemon and the page server are its children; it tells P when the restore may
 * start, and the adopted Node how loading the memory ended (src/engine/lazy.ts's messages).
 */
static void keeper(int pk, int report, int held, int gate) {
  int status[2], pages[2], ctl[2], err[2];
  if (pipe2(status, O_CLOEXEC) || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pages) ||
      socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ctl) || pipe2(err, O_CLOEXEC)) {
    say(pk, "fail");
    _exit(0);
  }
  char staged_map[PATH_MAX + 32], pdeath[64], hold_sock[PATH_MAX + 32];
  snprintf(staged_map, sizeof staged_map, "CHECKPT_STAGED_MAP=%s/staged.map", work);
  snprintf(pdeath, sizeof pdeath, "CHECKPT_CRIU_PDEATHSIG=%d", (int)getpid());
  snprintf(hold_sock, sizeof hold_sock, "%s/hold.sock", work);
  /* checkpt's BLAKE3 beside this helper, for the daemon to check a fault's block itself. */
  char blake3_lib[PATH_MAX + 32];
  const char *slash = strrchr(self, '/');
  snprintf(blake3_lib, sizeof blake3_lib, "CHECKPT_HASH_LIBRARY=%.*s/checkpt-blake3.node",
           slash ? (int)(slash - self) : 1, slash ? self : ".");
  char lazy_hold[64];
  snprintf(lazy_hold, sizeof lazy_hold, "CHECKPT_CRIU_LAZY_HOLD=%d %d %d", HOLD_QUIET_MS, PIN_MS, pin_cpu);
  char *daemon_extra[] = {staged_map, pdeath, "CRIU_FAULT=130", blake3_lib, pin_cpu >= 0 ? lazy_hold : NULL, NULL};
  char **daemon_env = env_with(daemon_extra);
  char *daemon_argv[] = {(char *)CRIU, "lazy-pages", "-D", images, "-W", work, "-o", "lazy-pages.log", "-v2",
                         "--status-fd", "3", "--page-server", "--ps-socket", "4", NULL};
  /* Tests: a daemon that cannot start, once the restore already waits for it. */
  if (getenv("CHECKPT_TEST_FRONT_NO_DAEMON")) daemon_argv[0] = "/nonexistent/criu";
  int dfds[] = {-1, -1, -1, status[1], pages[0]};
  char *server_extra[] = {staged_map, NULL};
  char **server_env = env_with(server_extra);
  /* The server's checks stay off the CPU of the copy's first steps (heavy's first answer: 71 -> 63
   * ms here); a held copy waits for all of them, which get every CPU. The server moves itself,
   * once its plan is read: made to start on one CPU, it waited there behind this keeper. */
  char off_cpu[16];
  snprintf(off_cpu, sizeof off_cpu, "%d", pin_cpu >= 0 && !held ? pin_cpu : -1);
  char *server_argv[] = {self, "serve-pages", "--off-cpu", off_cpu, "--pagemaps", images, held ? "--hold" : NULL, held ? hold_sock : NULL, NULL};
  int sfds[6 + 64];
  int nsfds = 6;
  sfds[0] = -1;
  sfds[1] = -1;
  sfds[2] = err[1];
  sfds[3] = pages[1];
  sfds[4] = ctl[1];
  sfds[5] = img.fd;
  int staged_ok = img.nmem <= 64;
  for (size_t i = 0; i < img.nmem && staged_ok; i++) {
    char p[PATH_MAX + 64];
    snprintf(p, sizeof p, "%s/pages-%u.img", images, img.mem[i].id);
    int fd = open(p, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0 || ftruncate(fd, (off_t)img.mem[i].size) != 0) staged_ok = 0;
    sfds[nsfds++] = fd;
  }
  /* The server first: the restore waits for both, and the daemon, CRIU's start (~10 ms), was
   * ready sooner than the server's staging of what restore reads itself in most resumes here. */
  pid_t server = server_env && staged_ok ? start(server_argv, sfds, nsfds, server_env, 0) : -1;
  close(err[1]);
  close(pages[1]);
  close(ctl[1]);
  for (int i = 6; i < nsfds; i++)
    if (sfds[i] >= 0) close(sfds[i]);
  /* Its plan and orders at once, so that it stages what restore reads itself while the daemon
   * starts. */
  int planned = server > 0 && !send_plan(ctl[0]) && !send_msg(ctl[0], MSG_PLANNED) &&
                !(held && send_msg(ctl[0], MSG_CHECK_ALL)) && !send_msg(ctl[0], MSG_STAGE_EAGER);
  pid_t daemon = daemon_env && planned ? start(daemon_argv, dfds, 5, daemon_env, 0) : -1;
  close(status[1]);
  close(pages[0]);
  int ready = 0, eager = 0, checked = !held, over = 0, failed = 0, told = 0;
  pid_t helper = 0;
  char why[1024] = "";
  const char *code = "ERESTORE";
  int dfd = daemon > 0 ? pidfd(daemon) : -1, sfd = server > 0 ? pidfd(server) : -1;
  int dstatus = -1, sstatus = -1;
  /* The images' numbers, for the messages: the rest of the file's index is not needed any more. */
  uint32_t ids[64];
  size_t nids = img.nmem < 64 ? img.nmem : 64;
  for (size_t i = 0; i < nids; i++) ids[i] = img.mem[i].id;
  if (img_open) front_close(&img);
  img_open = 0;
  if (!planned || dfd < 0 || sfd < 0) {
    kill_tree(daemon);
    kill_tree(server);
    say(pk, "fail");
    _exit(0);
  }
  char errbuf[4096];
  size_t errlen = 0;
  uint8_t msgs[MSG_SIZE * 64];
  size_t mlen = 0;
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  while (dstatus < 0 || sstatus < 0) {
    struct pollfd p[6] = {
        {.fd = dstatus < 0 ? dfd : -1, .events = POLLIN},
        {.fd = sstatus < 0 ? sfd : -1, .events = POLLIN},
        {.fd = ctl[0], .events = POLLIN},
        {.fd = !ready ? status[0] : -1, .events = POLLIN},
        {.fd = over ? -1 : pk, .events = POLLIN},
        {.fd = err[0], .events = POLLIN},
    };
    int timeout = -1;
    if (!checked) {
      struct timespec now;
      clock_gettime(CLOCK_MONOTONIC, &now);
      long ms = (now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000;
      if (ms >= HOLD_LIMIT_MS) {
        snprintf(why, sizeof why, "The memory of %s was not all checked within %d s, so its copy was stopped before it ran. Resume again; CHECKPT_LAZY=0 checks all of it before CRIU starts.", file, HOLD_LIMIT_MS / 1000);
        failed = 1;
        checked = 1;
        if (server > 0) kill(server, SIGKILL);
        continue;
      }
      timeout = (int)(HOLD_LIMIT_MS - ms);
    }
    if (poll(p, 6, timeout) < 0 && errno != EINTR) break;
    if (p[0].revents) {
      siginfo_t si = {0};
      if (waitid(P_PIDFD, (id_t)dfd, &si, WEXITED) == 0)
        dstatus = si.si_code == CLD_EXITED ? si.si_status : 128 + si.si_status;
    }
    if (p[1].revents) {
      siginfo_t si = {0};
      if (waitid(P_PIDFD, (id_t)sfd, &si, WEXITED) == 0)
        sstatus = si.si_code == CLD_EXITED ? si.si_status : 128 + si.si_status;
    }
    if (p[5].revents) {
      ssize_t n = read(err[0], errbuf + errlen, sizeof errbuf - 1 - errlen);
      if (n > 0) errlen += (size_t)n;
      else {
        close(err[0]);
        err[0] = -1;
      }
      errbuf[errlen] = 0;
    }
    if (p[3].revents) {
      char c;
      ready = read(status[0], &c, 1) == 1 ? 1 : -1;
      bench_trace("k-daemon");
      close(status[0]);
      status[0] = -1;
      if (ready < 0) ready = 0, dstatus = dstatus < 0 ? 255 : dstatus;
    }
    if (p[2].revents) {
      ssize_t n = read(ctl[0], msgs + mlen, sizeof msgs - mlen);
      if (n > 0) mlen += (size_t)n;
      size_t at = 0;
      for (; mlen - at >= MSG_SIZE; at += MSG_SIZE) {
        uint32_t type;
        memcpy(&type, msgs + at, 4);
        if (type == MSG_EAGER_STAGED) eager = 1, bench_trace("k-eager");
        else if (type == MSG_ALL_CHECKED) checked = 1, bench_trace("k-checked");
        /* A block the server cannot check itself: only Node's reader could, and it is not here. */
        else if (type == MSG_NEED && !failed) {
          failed = 1;
          snprintf(why, sizeof why, "checkpt's page server could not check a memory chunk of %s itself; the copy was stopped. Resume again with CHECKPT_FRONT=0.", file);
          if (server > 0) kill(server, SIGKILL);
        }
      }
      memmove(msgs, msgs + at, mlen - at);
      mlen -= at;
      if (n <= 0) {
        close(ctl[0]);
        ctl[0] = -1;
      }
    }
    if (p[4].revents) {
      char line[64];
      if (!read_line(pk, line, sizeof line, 0) || !strncmp(line, "stop", 4)) {
        /* P gave up (or died) before the copy ran: nothing stays. */
        kill_tree(daemon);
        kill_tree(server);
        rm_tree(work);
        _exit(0);
      }
      if (!strncmp(line, "over ", 5)) {
        over = 1;
        helper = (pid_t)atoi(line + 5);
        close(pk);
        pk = -1;
        if (held && ctl[0] >= 0) send_msg(ctl[0], MSG_HOLD_OVER);
      }
    }
    if (!told && (dstatus >= 0 || sstatus >= 0) && !(ready && eager)) {
      /* No daemon (no userfaultfd here), or no server: Node loads the memory another way. */
      const char *dbg = getenv("CHECKPT_FRONT");
      if (dbg && !strcmp(dbg, "debug"))
        fprintf(stderr, "checkpt: resume front: daemon %d (ready %d), page server %d (eager staged %d): %s\n", dstatus, ready, sstatus, eager, errbuf);
      kill_tree(daemon);
      kill_tree(server);
      say(pk, "fail");
      told = 1;
    }
    if (!told && ready && eager) {
      say(pk, "ready");
      /* The restore started beside us goes on: it connects to the daemon now. */
      if (gate >= 0) {
        if (write(gate, "1", 1) != 1) { /* the restore is gone; P hears of it from the helper */ }
        close(gate);
        gate = -1;
      }
      told = 1;
      /* Non-held: nothing waits on the hold socket (restore.ts holdOver before the helper). */
      if (!held && ctl[0] >= 0) send_msg(ctl[0], MSG_HOLD_OVER);
    }
    if (sstatus >= 0 && dstatus < 0 && sstatus != PS_EXIT_CLOSED && sstatus != PS_EXIT_HUNG_UP) kill_tree(daemon);
  }
  /* How loading ended, as src/engine/lazy.ts and page-server.ts judge it. */
  if (!failed && sstatus == PS_EXIT_DAMAGED) {
    unsigned entry = 0;
    unsigned long long block = 0;
    char reason[128] = "";
    const char *d = strstr(errbuf, "damaged ");
    if (d) sscanf(d, "damaged %u %llu %127s", &entry, &block, reason);
    code = "EBADIMAGE";
    snprintf(why, sizeof why, "%s is damaged (memory chunk %llu of pages-%u.img failed its check: %s); the copy was stopped before it used it. Use another checkpoint", file, block, entry < nids ? ids[entry] : entry, reason);
    failed = 1;
  } else if (!failed && sstatus == PS_EXIT_BAD_MAP) {
    code = "EBADIMAGE";
    snprintf(why, sizeof why, "%s is damaged (a page map does not fit its memory); the copy was stopped. Use another checkpoint", file);
    failed = 1;
  } else if (!failed && sstatus != PS_EXIT_CLOSED && sstatus != PS_EXIT_HUNG_UP) {
    char *last = strrchr(errbuf, '\n');
    while (last && last > errbuf && last[1] == 0) {
      *last = 0;
      last = strrchr(errbuf, '\n');
    }
    snprintf(why, sizeof why, "CRIU's lazy-pages daemon %.300s while resuming %.500s; the copy was stopped. Resume again (CHECKPT_LAZY=0 loads memory before the program runs).", errlen ? (last ? last + 1 : errbuf) : "was served by a helper that ended", file);
    failed = 1;
  } else if (!failed && dstatus == 0 && sstatus != PS_EXIT_CLOSED) {
    snprintf(why, sizeof why, "CRIU's lazy-pages daemon exited without closing its page server connection, so the copy may not have all of its memory; the copy was stopped. Resume again (CHECKPT_LAZY=0 loads memory before the program runs).");
    failed = 1;
  } else if (!failed && dstatus != 0) {
    snprintf(why, sizeof why, "CRIU's lazy-pages daemon exited with %d before the copy had all of its memory; the copy was stopped. Resume again (CHECKPT_LAZY=0 loads memory before the program runs).", dstatus);
    failed = 1;
  }
  if (!told && pk >= 0) {
    say(pk, "fail");
    told = 1;
  } else if (failed && !over && pk >= 0) {
    /* P waits for the restore to be over, which may never come: the copy's tasks, still being
     * restored, can wait on memory whose daemon is gone. P stops the restore itself. */
    say(pk, "fail");
  }
  /* P's word first: a copy that restored meanwhile must not run on (failed), and CRIU's restore
   * writes its stats into the staging directory after the copy runs, until the helper says
   * "restored" (an emptied directory would come back with them). */
  if (!over && pk >= 0) {
    char line[64];
    if (read_line(pk, line, sizeof line, -1) && !strncmp(line, "over ", 5)) helper = (pid_t)atoi(line + 5);
  }
  if (failed && helper > 0) kill_tree(helper);
  rm_tree(work);
  if (failed) say(report, "fail %s %s", code, why);
  else say(report, "ok");
  _exit(0);
}

/* The helper's options and CRIU's restore (restore.ts, criu.ts restoreCommand), from the recipe. */
static pid_t start_helper(const struct recipe *r, int held, int status_fd, int gate) {
  char *argv[96];
  int n = 0;
  static char pidbuf[32], parentbuf[16], lockat[PATH_MAX + 64], message[PATH_MAX * 2 + 256], eof[8] = "4";
  static char inherit[3][PATH_MAX + 16], relays[2][4];
  int extra_stdin = 0;
  argv[n++] = self;
  argv[n++] = "init";
  /* Attached, it dies with checkpt (PR_SET_PDEATHSIG); detached, it is the copy's for good. */
  if (!detach) {
    argv[n++] = "--attached";
    snprintf(parentbuf, sizeof parentbuf, "%d", (int)getpid());
    argv[n++] = "--parent";
    argv[n++] = parentbuf;
  }
  /* Relays (restore.ts relaysFor): our stdout or stderr as a regular file, or a pipe in a socket. */
  for (int i = 0; i < r->nin; i++) {
    int fd = r->in[i].fd;
    if (fd != 1 && fd != 2) continue;
    struct stat st;
    if (fstat(fd, &st) != 0) continue;
    if (S_ISREG(st.st_mode) || (S_ISSOCK(st.st_mode) && !strncmp(r->in[i].key, "pipe:", 5))) {
      snprintf(relays[fd - 1], sizeof relays[0], "%d", fd);
      argv[n++] = "--relay";
      argv[n++] = relays[fd - 1];
    }
  }
  argv[n++] = "--status-fd";
  argv[n++] = "3";
  static char pinbuf[16], pinms[16];
  if (pin_cpu >= 0) {
    snprintf(pinbuf, sizeof pinbuf, "%d", pin_cpu);
    snprintf(pinms, sizeof pinms, "%d", PIN_MS);
    argv[n++] = "--pin-cpu";
    argv[n++] = pinbuf;
    argv[n++] = "--pin-ms";
    argv[n++] = pinms;
  }
  snprintf(pidbuf, sizeof pidbuf, "%ld", r->pid);
  argv[n++] = "--pid";
  argv[n++] = pidbuf;
  if (r->mount[0]) {
    /* The message the restored program reads (job.ts ControlMessage 'restored'), as JSON. */
    char esc[PATH_MAX * 2];
    size_t e = 0;
    for (const char *c = file; *c && e + 8 < sizeof esc; c++) {
      unsigned char ch = (unsigned char)*c;
      if (ch == '"' || ch == '\\') esc[e++] = '\\', esc[e++] = (char)ch;
      else if (ch < 0x20) e += (size_t)snprintf(esc + e, sizeof esc - e, "\\u%04x", ch);
      else esc[e++] = (char)ch;
    }
    esc[e] = 0;
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    struct tm tm;
    gmtime_r(&t.tv_sec, &tm);
    char when[64];
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    /* portsKept: the front restores only when no port is in the way, and moves none. */
    snprintf(message, sizeof message, "{\"t\":\"restored\",\"generation\":%ld,\"image\":\"%s\",\"restoredAt\":\"%s.%03ldZ\",\"portsKept\":true}", r->gen + 1, esc, when, t.tv_nsec / 1000000);
    argv[n++] = "--mount";
    argv[n++] = (char *)r->mount;
    argv[n++] = "--fifo";
    argv[n++] = (char *)r->fifo;
    argv[n++] = "--message";
    argv[n++] = message;
  }
  for (int i = 0; i < r->nin; i++)
    if (r->in[i].fd == 0) {
      struct stat st;
      if (detach || (fstat(0, &st) == 0 && S_ISCHR(st.st_mode))) {
        argv[n++] = "--eof-fd";
        argv[n++] = eof;
      } else extra_stdin = 1;
    }
  if (r->lock_table[0]) {
    snprintf(lockat, sizeof lockat, "%ld:%s/inventory.img", r->lock_offset, images);
    argv[n++] = "--lock-table";
    argv[n++] = (char *)r->lock_table;
    argv[n++] = "--lock-method-at";
    argv[n++] = lockat;
  }
  argv[n++] = "--";
  argv[n++] = (char *)CRIU;
  argv[n++] = "restore";
  argv[n++] = "-D";
  argv[n++] = images;
  argv[n++] = "-W";
  argv[n++] = work;
  argv[n++] = "-o";
  argv[n++] = "restore.log";
  argv[n++] = "-v2";
  argv[n++] = "--restore-detached";
  argv[n++] = "--shell-job";
  argv[n++] = "--file-locks";
  argv[n++] = r->tcp_closed ? "--tcp-close" : "--tcp-established";
  argv[n++] = "--lazy-pages";
  if (held) {
    argv[n++] = "--action-script";
    argv[n++] = self;
  }
  for (int i = 0; i < r->nin; i++) {
    /* CRIU's --shell-job keeps fd 0 for the terminal: the old stdin comes in on fd 4. */
    snprintf(inherit[i], sizeof inherit[0], "fd[%d]:%s", r->in[i].fd == 0 ? 4 : r->in[i].fd, r->in[i].key);
    argv[n++] = "--inherit-fd";
    argv[n++] = inherit[i];
  }
  argv[n] = NULL;
  static char hold_env[PATH_MAX + 64];
  snprintf(hold_env, sizeof hold_env, "CHECKPT_HOLD_SOCK=%s/hold.sock", work);
  /* The gate goes to CRIU on the fd after the others; CRIU reads its byte, then closes it. */
  int nfds = extra_stdin ? 5 : 4;
  static char gate_env[48];
  snprintf(gate_env, sizeof gate_env, "CHECKPT_CRIU_LAZY_GATE=%d", nfds);
  char *held_extra[] = {"CRIU_FAULT=130", hold_env, "CHECKPT_CRIU_SCRIPT_ACTIONS=post-restore", gate >= 0 ? gate_env : NULL, NULL};
  char *plain_extra[] = {"CRIU_FAULT=130", gate >= 0 ? gate_env : NULL, NULL};
  char **envp = env_with(held ? held_extra : plain_extra);
  if (!envp) return -1;
  /* Detached, its stdin is /dev/null (restore.ts spawnHelper's 'ignore'). */
  int fds[6] = {detach ? -1 : 0, 1, 2, status_fd, 0, -1};
  if (gate >= 0) fds[nfds++] = gate;
  return start(argv, fds, nfds, envp, detach);
}

/* 1 once the helper says the copy is restored (its line in `line`), 0 if the helper ended or said
 * otherwise, -1 if the keeper said "fail" first (or ended): the copy's memory failed its check or
 * its daemon ended while CRIU was still restoring, a restore that may then never end. */
static int restored_or_failed(int status, int pk, char *line, size_t len) {
  for (;;) {
    struct pollfd p[2] = {{.fd = status, .events = POLLIN}, {.fd = pk, .events = POLLIN}};
    if (poll(p, 2, -1) < 0) {
      if (errno == EINTR && !stopping) continue;
      return 0;
    }
    if (p[1].revents) {
      char word[64];
      if (!read_line(pk, word, sizeof word, 0) || !strncmp(word, "fail", 4)) return -1;
    }
    if (p[0].revents) return read_line(status, line, len, -1) && !strncmp(line, "restored ", 9) ? 1 : 0;
  }
}

static void stop_now(int pk, pid_t keeper_pid, pid_t helper) {
  if (helper > 0) kill_tree(helper);
  if (pk >= 0) say(pk, "stop");
  if (keeper_pid > 0) waitpid(keeper_pid, NULL, 0);
  if (helper > 0) waitpid(helper, NULL, 0);
}

int cmd_front(int argc, char **argv) {
  if (argc < 1) return 2;
  script = argv[0];
  node_args = argv + 1;
  node_argc = argc - 1;
  bench_trace("front");
  if (!applies()) fallback_because("not a plain `checkpt -r [-d] FILE` by root, off a terminal unless detached, without CHECKPT_ variables");
  if (!own_criu()) fallback_because("checkpt's own CRIU build is not at /opt/checkpt/criu (or was changed since it was built)");
  ssize_t sn = readlink("/proc/self/exe", self, sizeof self - 1);
  if (sn <= 0) fallback_because("its own path is unknown");
  self[sn] = 0;
  /* The keeper may be gone (all memory in) when it is told the helper's pid: no SIGPIPE for that. */
  signal(SIGPIPE, SIG_IGN);
  struct sigaction sa = {0};
  sa.sa_handler = on_stop;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGHUP, &sa, NULL);
  struct sigaction sh = {0};
  sh.sa_handler = on_held;
  sigaction(SIGSTKFLT, &sh, NULL);
  sigaction(SIGPWR, &sh, NULL);
  sigaction(SIGUSR2, &sh, NULL);
  sigaction(SIGQUIT, &sh, NULL);
  char why[512];
  if (front_open(file, &img, why, sizeof why) != FRONT_OK) fallback_because(why);
  img_open = 1;
  bench_trace("opened");
  struct recipe r;
  if (!img.nmem || !recipe_of(img.manifest, &r)) fallback_because("the file has no memory in it, or no recipe this front reads (an older checkpt wrote it, or it needs what only Node does)");
  uint64_t page_bytes = 0;
  for (size_t i = 0; i < img.nmem; i++) page_bytes += img.mem[i].size;
  /* Checked by the server itself, every chunk: zstd frames need libzstd (SHA-256 tables Nettle,
   * which front_open needed too). */
  for (size_t i = 0; i < img.nmem; i++)
    if (img.mem[i].zstd) {
      void *z = dlopen("libzstd.so.1", RTLD_NOW | RTLD_LOCAL);
      if (!z) fallback_because("libzstd is not here");
      break;
    }
  struct stat st;
  if (fstat(img.fd, &st) != 0 || !make_staging((uint64_t)st.st_size)) fallback_because("no staging directory could be made");
  if (front_extract(&img, images, why, sizeof why) != FRONT_OK) fallback_because(why);
  bench_trace("extracted");
  int held = page_bytes < LAZY_MIN_BYTES;
  if (held && count_pagemaps() != 1) fallback_because("a small image of more than one process (loaded eagerly)");
  if (!sockets_clear(&r)) fallback_because("a port of its sockets is in use on this host (Node plans them)");
  if (stopping) stopped_exit();
  prepare_kdat();
  pin_cpu = choose_pin_cpu();
  int pk[2], report[2], status[2], gate[2] = {-1, -1};
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pk) || socketpair(AF_UNIX, SOCK_STREAM, 0, report) ||
      socketpair(AF_UNIX, SOCK_STREAM, 0, status))
    fallback_because("no socket pair");
  fcntl(status[0], F_SETFD, FD_CLOEXEC);
  if (lazy_gate && pipe2(gate, O_CLOEXEC) != 0) gate[0] = gate[1] = -1;
  bench_trace("lazy-pages");
  pid_t keeper_pid = fork();
  if (keeper_pid < 0) fallback_because("no fork");
  if (keeper_pid == 0) {
    close(pk[0]);
    close(report[0]);
    close(status[0]);
    close(status[1]);
    if (gate[0] >= 0) close(gate[0]);
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    keeper(pk[1], report[1], held, gate[1]);
  }
  close(pk[1]);
  close(report[1]);
  if (gate[1] >= 0) close(gate[1]);
  /* CRIU's start, its reading of the images and the init's namespaces (~10 ms here) go on while
   * the keeper starts the daemon and stages the pages; CRIU waits at the gate for both. */
  pid_t helper = 0;
  if (gate[0] >= 0) {
    bench_trace("helper");
    helper = start_helper(&r, held, status[1], gate[0]);
    close(gate[0]);
    if (helper < 0) {
      stop_now(pk[0], keeper_pid, 0);
      work[0] = 0;
      fallback_because("no fork");
    }
  }
  front_close(&img);
  img_open = 0;
  char line[256];
  if (!read_line(pk[0], line, sizeof line, -1) || strcmp(line, "ready") != 0 || stopping) {
    stop_now(pk[0], keeper_pid, helper);
    close(report[0]);
    work[0] = 0; /* the keeper removed it */
    if (stopping) stopped_exit();
    fallback_because("the lazy-pages daemon or the page server did not start (no userfaultfd here?)");
  }
  bench_trace("daemon-ready");
  if (!helper) {
    bench_trace("helper");
    helper = start_helper(&r, held, status[1], -1);
  }
  close(status[1]);
  int restored = helper < 0 ? 0 : restored_or_failed(status[0], pk[0], line, sizeof line);
  if (restored <= 0 || stopping) {
    stop_now(pk[0], keeper_pid, helper);
    close(status[0]);
    close(report[0]);
    work[0] = 0;
    if (stopping) stopped_exit();
    /* Node resumes again and, failing the same way, says why. */
    fallback_because(restored < 0 ? "the copy's memory failed its check (or its daemon ended) before CRIU was done" : "CRIU could not restore the copy");
  }
  bench_trace("status-restored");
  say(pk[0], "over %d", (int)helper);
  close(pk[0]);
  /* Node's start takes the machine the copy needs for its first steps (its first answer came
   * 17-40 ms later with Node starting beside it, idle and heavy here): Node starts once the copy's
   * memory is all in, the copy says something (it ended), a signal comes (Node passes it on), or
   * after NODE_AFTER_MS. */
  struct pollfd wait_for[2] = {{.fd = status[0], .events = POLLIN}, {.fd = report[0], .events = POLLIN}};
  if (poll(wait_for, 2, NODE_AFTER_MS) < 0 && errno != EINTR) { /* Node starts now, then */ }
  bench_trace("node");
  if (stopping && nheld < 16) held_sigs[nheld++] = stopping;
  signal(SIGPIPE, SIG_DFL);
  /* Node takes over: the helper's status socket and the keeper's report stay open across exec. */
  int flags = fcntl(status[0], F_GETFD);
  fcntl(status[0], F_SETFD, flags & ~FD_CLOEXEC);
  signal(SIGTERM, SIG_DFL);
  signal(SIGINT, SIG_DFL);
  signal(SIGHUP, SIG_DFL);
  /* A signal in the few instructions left before exec is lost, as one before Node's handlers. */
  char sigs[80] = "";
  for (int i = 0; i < nheld; i++)
    snprintf(sigs + strlen(sigs), sizeof sigs - strlen(sigs), "%s%d", i ? "," : "", (int)held_sigs[i]);
  char handover[PATH_MAX * 2];
  snprintf(handover, sizeof handover, "1 %d %d %d %d %s %s %s", (int)helper, status[0], (int)keeper_pid, report[0], line + 9, sigs[0] ? sigs : "-", work);
  setenv("CHECKPT_FRONT_HANDOVER", handover, 1);
  /* Node's start takes a core for ~100 ms while the copy takes its first steps on its memory:
   * the copy goes first (adoptFront puts Node back at 0). */
  if (setpriority(PRIO_PROCESS, 0, 10) != 0) { /* the same race as before, then */ }
  char **nargv = calloc((size_t)node_argc + 3, sizeof *nargv);
  if (nargv) {
    nargv[0] = "node";
    nargv[1] = (char *)script;
    for (int i = 0; i < node_argc; i++) nargv[2 + i] = node_args[i];
    execvp("node", nargv);
  }
  fprintf(stderr, "checkpt: cannot run node to supervise the resumed program (%s); it was stopped.\n", strerror(errno));
  kill_tree(helper);
  _exit(127);
}
