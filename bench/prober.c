/*
 * The bench's first-answer probe, in C: the bench's own Node probe (a net.Socket a millisecond,
 * refused until the program listens) took ~0.2 ms of CPU a try on a 2-core guest, in the very
 * window where a resume is CPU-bound, and delayed checkpt's resumes ~5 ms more than the raw
 * restores it compares them with (docs/PERFORMANCE.md, "How it is measured").
 *
 * Reads "PORT DEADLINE_MS" lines on stdin; for each, from that moment, tries 127.0.0.1:PORT every
 * millisecond (a connection not made within 50 ms gives way to the next: a SYN dropped under
 * CRIU's network lock is sent again only after 1 s), sends GET / and waits up to 2 s for the status
 * line. Writes "ok NS" (CLOCK_MONOTONIC, Node's process.hrtime) once a "200" came, or "timeout".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* 1: answered 200; 0: not (yet). */
static int try_once(int port) {
  int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (s < 0) return 0;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int ok = 0;
  if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) {
    if (errno != EINPROGRESS) goto out;
    struct pollfd p = {.fd = s, .events = POLLOUT};
    if (poll(&p, 1, 50) != 1) goto out;
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err != 0) goto out;
  }
  static const char get[] = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
  if (write(s, get, sizeof get - 1) != (ssize_t)(sizeof get - 1)) goto out;
  char buf[256];
  size_t got = 0;
  long long until = now_ns() + 2000000000LL;
  while (got < sizeof buf - 1) {
    int left = (int)((until - now_ns()) / 1000000);
    if (left <= 0) goto out;
    struct pollfd p = {.fd = s, .events = POLLIN};
    if (poll(&p, 1, left) != 1) goto out;
    ssize_t n = read(s, buf + got, sizeof buf - 1 - got);
    if (n <= 0) goto out;
    got += (size_t)n;
    buf[got] = 0;
    if (strstr(buf, "\r\n")) {
      ok = strncmp(buf, "HTTP/1.1 200 ", 13) == 0 || strncmp(buf, "HTTP/1.0 200 ", 13) == 0;
      break;
    }
  }
out:
  close(s);
  return ok;
}

int main(void) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  char line[64];
  while (fgets(line, sizeof line, stdin)) {
    int port = 0;
    long long deadline_ms = 0;
    if (sscanf(line, "%d %lld", &port, &deadline_ms) != 2 || port <= 0 || port > 65535) {
      printf("bad %s", line);
      continue;
    }
    long long until = now_ns() + deadline_ms * 1000000LL;
    for (;;) {
      if (try_once(port)) {
        printf("ok %lld\n", now_ns());
        break;
      }
      if (now_ns() > until) {
        printf("timeout\n");
        break;
      }
      struct timespec ms = {0, 1000000};
      nanosleep(&ms, NULL);
    }
  }
  return 0;
}
