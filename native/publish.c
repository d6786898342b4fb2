/*
 * checkpt-helper publish ADDR:HOSTPORT:PORT...
 *   The forwarder of `checkpt run --private-net --publish`. Binds every ADDR:HOSTPORT in the host's
 *   network namespace and says on stdout "ok", or "busy ADDR:HOSTPORT ERRNO" and exits 1, before the
 *   program starts. It then reads a pid on stdin (checkpt's init of the program's namespaces), joins
 *   that process's user namespace (when it is not ours) and network namespace, and for each
 *   connection accepted on a host port forks a child that connects to 127.0.0.1:PORT in there
 *   (a socket is made in the namespace of the process that makes it) and copies bytes both ways.
 *   It exits when that init does.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "publish.h"

#define MAX_PUBLISH 64

struct published {
  int listener;
  int port;
};

static int join_ns(pid_t pid, const char *name, int type) {
  char path[64];
  struct stat mine, theirs;
  snprintf(path, sizeof path, "/proc/%d/ns/%s", (int)pid, name);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  snprintf(path, sizeof path, "/proc/self/ns/%s", name);
  /* Root's program shares our user namespace, and setns into one's own fails (EINVAL). */
  if (fstat(fd, &theirs) == 0 && stat(path, &mine) == 0 && mine.st_ino == theirs.st_ino && mine.st_dev == theirs.st_dev) {
    close(fd);
    return 0;
  }
  int r = setns(fd, type);
  close(fd);
  return r;
}

/*
 * One connection: bytes both ways until both sides have ended (a half-close is passed on), or the
 * program's namespace is gone: a program dumped and stopped under a network lock ends its
 * connections without a word, and the client outside must not wait on us forever.
 */
static void copy_both_ways(int a, int b, int pidfd) {
  char buf[65536];
  int open_in[2] = {1, 1};
  int fds[2] = {a, b};
  while (open_in[0] || open_in[1]) {
    struct pollfd p[3] = {{open_in[0] ? a : -1, POLLIN, 0}, {open_in[1] ? b : -1, POLLIN, 0}, {pidfd, POLLIN, 0}};
    if (poll(p, 3, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (p[2].revents) return;
    for (int i = 0; i < 2; i++) {
      if (!open_in[i] || !(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      ssize_t n = read(fds[i], buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        /* A reset (or the copy's peer gone) ends the connection; an orderly end is passed on. */
        if (n < 0) return;
        open_in[i] = 0;
        shutdown(fds[1 - i], SHUT_WR);
        continue;
      }
      for (ssize_t off = 0; off < n;) {
        ssize_t w = write(fds[1 - i], buf + off, (size_t)(n - off));
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return;
        off += w;
      }
    }
  }
}

static void serve(int client, int port, int pidfd) {
  struct sockaddr_in to = {0};
  to.sin_family = AF_INET;
  to.sin_port = htons((uint16_t)port);
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int sk = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  /* Nothing listening inside: the client sees its connection closed. */
  if (sk < 0 || connect(sk, (struct sockaddr *)&to, sizeof to) < 0) _exit(1);
  copy_both_ways(client, sk, pidfd);
  _exit(0);
}

int cmd_publish(int argc, char **argv) {
  struct published pub[MAX_PUBLISH];
  int n = 0;
  if (argc < 1 || argc > MAX_PUBLISH) {
    fprintf(stderr, "usage: checkpt-helper publish ADDR:HOSTPORT:PORT... (at most %d)\n", MAX_PUBLISH);
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  /* What the launcher left open (a pipe someone waits on to end) is not ours to hold. */
  syscall(SYS_close_range, 3, ~0U, 0);
  for (int i = 0; i < argc; i++) {
    char addr[64];
    int host_port, port;
    struct sockaddr_in sa = {0};
    if (sscanf(argv[i], "%63[0-9.]:%d:%d", addr, &host_port, &port) != 3 || host_port < 1 || host_port > 65535 || port < 1 ||
        port > 65535 || inet_pton(AF_INET, addr, &sa.sin_addr) != 1) {
      fprintf(stderr, "checkpt-helper publish: not ADDR:HOSTPORT:PORT: %s\n", argv[i]);
      return 2;
    }
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)host_port);
    int one = 1, sk = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sk >= 0) setsockopt(sk, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (sk < 0 || bind(sk, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(sk, 128) < 0) {
      printf("busy %s:%d %d\n", addr, host_port, errno);
      fflush(stdout);
      return 1;
    }
    pub[n].listener = sk;
    pub[n].port = port;
    n++;
  }
  printf("ok\n");
  fflush(stdout);
  char line[32];
  ssize_t got = read(0, line, sizeof line - 1);
  if (got <= 0) return 0; /* checkpt gave up before the program started */
  line[got] = 0;
  pid_t pid = (pid_t)atoi(line);
  int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
  if (pid <= 1 || pidfd < 0) {
    fprintf(stderr, "checkpt-helper publish: no process %s\n", line);
    return 1;
  }
  if (join_ns(pid, "user", CLONE_NEWUSER) < 0 || join_ns(pid, "net", CLONE_NEWNET) < 0) {
    fprintf(stderr, "checkpt-helper publish: cannot enter the network namespace of %d: %s\n", (int)pid, strerror(errno));
    return 1;
  }
  /* Answered: checkpt need not keep our pipes (a detached run ends without us). */
  int devnull = open("/dev/null", O_RDWR);
  if (devnull >= 0) {
    dup2(devnull, 0);
    dup2(devnull, 1);
    if (devnull > 1) close(devnull);
  }
  struct sigaction sa = {0};
  sa.sa_handler = SIG_IGN;
  sa.sa_flags = SA_NOCLDWAIT; /* children reap themselves */
  sigaction(SIGCHLD, &sa, NULL);
  struct pollfd p[MAX_PUBLISH + 1];
  for (;;) {
    for (int i = 0; i < n; i++) p[i] = (struct pollfd){pub[i].listener, POLLIN, 0};
    p[n] = (struct pollfd){pidfd, POLLIN, 0};
    if (poll(p, (nfds_t)n + 1, -1) < 0) {
      if (errno == EINTR) continue;
      return 1;
    }
    if (p[n].revents) return 0; /* the program's namespace is gone */
    for (int i = 0; i < n; i++) {
      if (!(p[i].revents & POLLIN)) continue;
      int client = accept4(pub[i].listener, NULL, NULL, SOCK_CLOEXEC);
      if (client < 0) continue;
      pid_t child = fork();
      if (child == 0) {
        for (int j = 0; j < n; j++) close(pub[j].listener);
        serve(client, pub[i].port, pidfd);
      }
      close(client);
    }
  }
}
