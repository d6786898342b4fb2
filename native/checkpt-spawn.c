/*
 * checkpt-spawn.node: starts a process with posix_spawn, which glibc makes with vfork semantics
 * (clone(CLONE_VM | CLONE_VFORK)). Node's child_process forks, and a fork copies the page tables
 * of the whole Node process first: 2.5 ms from a bare Node, 6 ms from one of 110 MB, on the
 * main thread of a resume that starts three processes (docs/PERFORMANCE.md). Here it is ~0.3 ms
 * whatever the size. src/engine/spawn.ts wraps it in what the callers use of a ChildProcess.
 *
 * Built without node-gyp or Node's headers, like the other addons (napi-min.h).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "napi-min.h"

extern napi_status napi_get_value_string_utf8(napi_env env, napi_value value, char *buf,
                                              size_t bufsize, size_t *result);
extern napi_status napi_get_value_int32(napi_env env, napi_value value, int32_t *result);
extern napi_status napi_get_value_bool(napi_env env, napi_value value, bool *result);
extern napi_status napi_get_array_length(napi_env env, napi_value value, uint32_t *result);
extern napi_status napi_get_element(napi_env env, napi_value object, uint32_t index,
                                    napi_value *result);
extern napi_status napi_set_element(napi_env env, napi_value object, uint32_t index,
                                    napi_value value);
extern napi_status napi_create_int32(napi_env env, int32_t value, napi_value *result);
extern napi_status napi_create_array_with_length(napi_env env, size_t length, napi_value *result);

/* Past the fds a child gets (at most this many): the parent's temporary copies never collide. */
#define MAX_FDS 64

static napi_value int32(napi_env env, int32_t v) {
  napi_value r = NULL;
  napi_create_int32(env, v, &r);
  return r;
}

/* A JavaScript string as a malloc'd C string; NULL when it is not a string. */
static char *string(napi_env env, napi_value v) {
  size_t len = 0;
  if (napi_get_value_string_utf8(env, v, NULL, 0, &len) != 0) return NULL;
  char *s = malloc(len + 1);
  if (!s) return NULL;
  if (napi_get_value_string_utf8(env, v, s, len + 1, &len) != 0) {
    free(s);
    return NULL;
  }
  return s;
}

/* A JavaScript array of strings as a NULL-terminated malloc'd vector; NULL on any failure. */
static char **strings(napi_env env, napi_value v) {
  uint32_t n = 0;
  if (napi_get_array_length(env, v, &n) != 0) return NULL;
  char **out = calloc((size_t)n + 1, sizeof *out);
  if (!out) return NULL;
  for (uint32_t i = 0; i < n; i++) {
    napi_value e;
    if (napi_get_element(env, v, i, &e) != 0 || !(out[i] = string(env, e))) {
      for (uint32_t j = 0; j < i; j++) free(out[j]);
      free(out);
      return NULL;
    }
  }
  return out;
}

static void free_strings(char **v) {
  if (!v) return;
  for (char **p = v; *p; p++) free(*p);
  free(v);
}

/*
 * spawn(file, argv, env, fds, setsid): the pid, or -errno (exec's own errors included: glibc's
 * posix_spawn reports them). Child fd i is the parent's fds[i]; where that is -1, /dev/null for
 * 0-2 and nothing past them (the parent's close-on-exec fds are gone there).
 * Every signal starts with its default action and unblocked, as libuv does (Node ignores SIGPIPE).
 */
static napi_value spawn_(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value a[5];
  if (napi_get_cb_info(env, info, &argc, a, NULL, NULL) != 0 || argc < 5) return int32(env, -EINVAL);
  char *file = string(env, a[0]);
  char **argv = strings(env, a[1]);
  char **envp = strings(env, a[2]);
  uint32_t nfds = 0;
  bool setsid_ = false;
  napi_get_array_length(env, a[3], &nfds);
  napi_get_value_bool(env, a[4], &setsid_);
  int result = -EINVAL;
  int tmp[MAX_FDS];
  uint32_t made = 0;
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t attr;
  bool fa_ok = false, attr_ok = false;
  if (!file || !argv || !envp || nfds > MAX_FDS) goto out;
  if (posix_spawn_file_actions_init(&fa) != 0) goto out;
  fa_ok = true;
  if (posix_spawnattr_init(&attr) != 0) goto out;
  attr_ok = true;
  for (; made < nfds; made++) {
    napi_value e;
    int32_t fd = -1;
    if (napi_get_element(env, a[3], made, &e) != 0 || napi_get_value_int32(env, e, &fd) != 0) goto out;
    if (fd < 0) {
      tmp[made] = -1;
      /* Left as they are past stdio, /dev/null on 0-2: what libuv does for 'ignore'. */
      if (made > 2) continue;
      int flags = made == 0 ? O_RDONLY : O_RDWR;
      if ((result = posix_spawn_file_actions_addopen(&fa, (int)made, "/dev/null", flags, 0)) != 0) {
        result = -result;
        goto out;
      }
      continue;
    }
    /* A copy above every target first: dup2 onto a target never clobbers a source still needed. */
    tmp[made] = fcntl(fd, F_DUPFD_CLOEXEC, MAX_FDS);
    if (tmp[made] < 0) {
      result = -errno;
      goto out;
    }
    if ((result = posix_spawn_file_actions_adddup2(&fa, tmp[made], (int)made)) != 0) {
      made++;
      result = -result;
      goto out;
    }
  }
  sigset_t all, none;
  sigfillset(&all);
  /* glibc's own two (SIGCANCEL, SIGSETXID) too, which sigfillset leaves out: posix_spawn would
   * leave them ignored in the child, and a program that is not glibc's would keep that. */
  for (int sig = 32; sig <= 33; sig++)
    all.__val[(sig - 1) / (8 * sizeof all.__val[0])] |= 1UL << ((sig - 1) % (8 * sizeof all.__val[0]));
  sigemptyset(&none);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK |
                                      (setsid_ ? POSIX_SPAWN_SETSID : 0));
  pid_t pid;
  int err = posix_spawn(&pid, file, &fa, &attr, argv, envp);
  result = err == 0 ? (int)pid : -err;
out:
  for (uint32_t i = 0; i < made; i++)
    if (tmp[i] >= 0) close(tmp[i]);
  if (fa_ok) posix_spawn_file_actions_destroy(&fa);
  if (attr_ok) posix_spawnattr_destroy(&attr);
  free(file);
  free_strings(argv);
  free_strings(envp);
  return int32(env, result);
}

/* The call's one argument, a pid; -EINVAL when it is not one. */
static int32_t pid_arg(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value a[1];
  int32_t pid = 0;
  if (napi_get_cb_info(env, info, &argc, a, NULL, NULL) != 0 || argc < 1 ||
      napi_get_value_int32(env, a[0], &pid) != 0 || pid <= 0)
    return -EINVAL;
  return pid;
}

struct watch {
  pid_t pid;
  int fd;
};

/* Waits for the end without collecting it (WNOWAIT): the pid stays the child's until reap(). */
static void *watcher(void *p) {
  struct watch w = *(struct watch *)p;
  free(p);
  siginfo_t si;
  while (waitid(P_PID, (id_t)w.pid, &si, WEXITED | WNOWAIT) < 0 && errno == EINTR)
    ;
  close(w.fd);
  return NULL;
}

/* watch(pid): the read end of a pipe that reaches its end when the child has ended; or -errno. */
static napi_value watch_(napi_env env, napi_callback_info info) {
  int32_t pid = pid_arg(env, info);
  if (pid < 0) return int32(env, pid);
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) < 0) return int32(env, -errno);
  struct watch *w = malloc(sizeof *w);
  if (!w) {
    close(fds[0]);
    close(fds[1]);
    return int32(env, -ENOMEM);
  }
  w->pid = pid;
  w->fd = fds[1];
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, 64 * 1024);
  /* The thread must not take a signal meant for Node's own threads. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_t t;
  int err = pthread_create(&t, &attr, watcher, w);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_attr_destroy(&attr);
  if (err != 0) {
    free(w);
    close(fds[0]);
    close(fds[1]);
    return int32(env, -err);
  }
  return int32(env, fds[0]);
}

/* reap(pid): the wait status of a child that has ended (watch's pipe at its end), or -errno. */
static napi_value reap_(napi_env env, napi_callback_info info) {
  int32_t pid = pid_arg(env, info);
  if (pid < 0) return int32(env, pid);
  int status = 0;
  pid_t r;
  do r = waitpid(pid, &status, 0); while (r < 0 && errno == EINTR);
  return int32(env, r < 0 ? -errno : status);
}

/* socketpair(): two connected Unix stream sockets (close-on-exec), as libuv makes for 'pipe'. */
static napi_value socketpair_(napi_env env, napi_callback_info info) {
  (void)info;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) return int32(env, -errno);
  napi_value r = NULL;
  napi_create_array_with_length(env, 2, &r);
  napi_set_element(env, r, 0, int32(env, sv[0]));
  napi_set_element(env, r, 1, int32(env, sv[1]));
  return r;
}

__attribute__((visibility("default"))) napi_value napi_register_module_v1(napi_env env,
                                                                          napi_value exports) {
  static const struct {
    const char *name;
    napi_callback cb;
  } fns[] = {{"spawn", spawn_}, {"watch", watch_}, {"reap", reap_}, {"socketpair", socketpair_}};
  for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
    napi_value fn;
    if (napi_create_function(env, fns[i].name, NAPI_AUTO_LENGTH, fns[i].cb, NULL, &fn) != 0)
      return NULL;
    if (napi_set_named_property(env, exports, fns[i].name, fn) != 0) return NULL;
  }
  return exports;
}
