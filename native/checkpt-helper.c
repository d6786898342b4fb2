/*
 * checkpt-helper: the few things Node.js cannot do itself.
 *
 *   checkpt-helper init [--attached] --pid N --mount DIR --fifo PATH --message TEXT
 *                       [--status-fd FD] -- CRIU ARGS...
 *     Creates a PID and mount namespace and forks its init, which gives this restore a private
 *     control FIFO, runs `criu restore -d`, wakes the restored process through the FIFO, then
 *     reaps it and exits with its status (criu itself does not report it). Reports on FD:
 *       "restored PID\n", then "exit CODE\n" or "signal SIG\n"; or "restore-failed STATUS\n".
 *     --relay FD (1 or 2, repeatable): CRIU reopens an inherited pipe through /proc/self/fd, which
 *     turns a regular file (`checkpt -r f >> log`) into a new open at offset 0 without O_APPEND, and
 *     fails on a socket. For such an FD the program gets a pipe, and a relay copies it to the FD.
 *     --attached: a foreground resume. Everything dies with the launcher, and on a terminal the
 *     resumed program becomes its foreground process group until it ends.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define EXIT_RESTORE_FAILED 125
#define EXIT_USAGE 126

static volatile sig_atomic_t target_pid = 0;
static volatile sig_atomic_t pending_sig = 0;
static int relay_fds[2];
static int nrelay = 0;
static const int relayed[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH, SIGCONT, SIGALRM};

static void die(const char *what) {
  fprintf(stderr, "checkpt-helper: %s: %s\n", what, strerror(errno));
  exit(EXIT_USAGE);
}

static void forward(int sig, siginfo_t *info, void *ctx) {
  (void)ctx;
  /* Terminal-generated signals already reach the program through its process group. */
  if (info->si_code != SI_USER && info->si_code != SI_QUEUE && info->si_code != SI_TKILL) return;
  if (target_pid > 0)
    kill(target_pid, sig);
  else
    pending_sig = sig;
}

/* Both the launcher side and the init pass user-sent signals one step further down. */
static void relay_signals(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = forward;
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  sigemptyset(&sa.sa_mask);
  for (size_t k = 0; k < sizeof relayed / sizeof relayed[0]; k++) sigaction(relayed[k], &sa, NULL);
}

static void mkdirs(const char *path) {
  char buf[4096];
  if (strlen(path) >= sizeof buf) die("path too long");
  strcpy(buf, path);
  for (char *p = buf + 1; *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    if (mkdir(buf, 0700) < 0 && errno != EEXIST) die(buf);
    *p = '/';
  }
  if (mkdir(buf, 0700) < 0 && errno != EEXIST) die(buf);
}

static void report(int fd, const char *fmt, int value) {
  char line[64];
  if (fd < 0) return;
  int n = snprintf(line, sizeof line, fmt, value);
  if (write(fd, line, (size_t)n) < 0) { /* the launcher may be gone (detached resume) */ }
}

static int run_init(pid_t pid, const char *mnt, const char *fifo, const char *message, int status_fd,
                    char **criu_argv);

/* Outside the new namespace: owns the terminal hand-over and passes signals to the init. */
static int cmd_init(int argc, char **argv) {
  pid_t pid = 0;
  const char *mnt = NULL, *fifo = NULL, *message = "";
  int status_fd = -1, attached = 0, i;
  for (i = 0; i < argc; i++) {
    if (!strcmp(argv[i], "--")) { i++; break; }
    if (!strcmp(argv[i], "--attached")) { attached = 1; continue; }
    if (i + 1 >= argc) { fprintf(stderr, "checkpt-helper init: %s needs a value\n", argv[i]); return EXIT_USAGE; }
    if (!strcmp(argv[i], "--pid")) pid = (pid_t)atoi(argv[++i]);
    else if (!strcmp(argv[i], "--relay")) {
      int fd = atoi(argv[++i]);
      if ((fd != 1 && fd != 2) || nrelay >= 2) { fprintf(stderr, "checkpt-helper init: --relay takes 1 or 2\n"); return EXIT_USAGE; }
      relay_fds[nrelay++] = fd;
    }
    else if (!strcmp(argv[i], "--mount")) mnt = argv[++i];
    else if (!strcmp(argv[i], "--fifo")) fifo = argv[++i];
    else if (!strcmp(argv[i], "--message")) message = argv[++i];
    else if (!strcmp(argv[i], "--status-fd")) status_fd = atoi(argv[++i]);
    else { fprintf(stderr, "checkpt-helper init: unknown option %s\n", argv[i]); return EXIT_USAGE; }
  }
  if (pid <= 1 || !mnt || !fifo || i >= argc) {
    fprintf(stderr, "usage: checkpt-helper init --pid N --mount DIR --fifo PATH --message TEXT [--status-fd FD] -- criu restore ...\n");
    return EXIT_USAGE;
  }
  if (status_fd >= 0) fcntl(status_fd, F_SETFD, FD_CLOEXEC);
  signal(SIGPIPE, SIG_IGN);
  if (attached && prctl(PR_SET_PDEATHSIG, SIGKILL) < 0) die("prctl(PDEATHSIG)");
  int tty = attached && isatty(0);
  pid_t fg = tty ? tcgetpgrp(0) : -1;
  if (unshare(CLONE_NEWPID | CLONE_NEWNS) < 0) die("unshare(PID|mount namespace)");
  pid_t init = fork();
  if (init < 0) die("fork init");
  if (init == 0) {
    if (attached && prctl(PR_SET_PDEATHSIG, SIGKILL) < 0) die("prctl(PDEATHSIG)");
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) die("make mounts private");
    if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0) die("mount /proc");
    if (tty) {
      /* CRIU gives the terminal to its parent's group, which must be visible in this namespace. */
      signal(SIGTTOU, SIG_IGN);
      if (setpgid(0, 0) < 0 || tcsetpgrp(0, getpgrp()) < 0) die("take the terminal");
      signal(SIGTTOU, SIG_DFL);
    } else if (setsid() < 0) {
      /* CRIU gives the program its restorer's session; one led from outside this namespace
       * would make a checkpoint taken in the resumed copy fail. */
      die("setsid");
    }
    return run_init(pid, mnt, fifo, message, status_fd, argv + i);
  }
  if (status_fd >= 0) close(status_fd);
  target_pid = init;
  relay_signals();
  int st;
  while (waitpid(init, &st, 0) < 0)
    if (errno != EINTR) die("waitpid init");
  if (fg > 0) {
    signal(SIGTTOU, SIG_IGN);
    tcsetpgrp(0, fg);
  }
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* Copies what the program writes into the pipe on to the real destination, until EOF. */
static pid_t start_relay(int fd) {
  int p[2];
  if (pipe(p) < 0) die("pipe");
  pid_t r = fork();
  if (r < 0) die("fork relay");
  if (r == 0) {
    close(p[1]);
    char buf[65536];
    for (;;) {
      ssize_t n = read(p[0], buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) _exit(0);
      for (ssize_t off = 0; off < n;) {
        ssize_t w = write(fd, buf + off, (size_t)(n - off));
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) _exit(1);
        off += w;
      }
    }
  }
  close(p[0]);
  if (dup2(p[1], fd) < 0) die("dup2 relay");
  close(p[1]);
  return r;
}

/* PID 1 of the new namespace. */
static int run_init(pid_t pid, const char *mnt, const char *fifo, const char *message, int status_fd,
                    char **criu_argv) {

  /* A tmpfs of our own at the FIFO's directory: concurrent restores of one image never share a channel. */
  mkdirs(mnt);
  if (mount("checkpt", mnt, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0700") < 0) die("mount tmpfs");
  char dir[4096];
  snprintf(dir, sizeof dir, "%s", fifo);
  char *slash = strrchr(dir, '/');
  if (slash && slash != dir) { *slash = '\0'; mkdirs(dir); }
  if (mkfifo(fifo, 0600) < 0) die("mkfifo");
  int ctl = open(fifo, O_RDWR | O_CLOEXEC);
  if (ctl < 0) die("open fifo");

  relay_signals();

  int relays_left = 0, pid_status = 0;
  pid_t relay_pids[2] = {0, 0};
  for (int k = 0; k < nrelay; k++) {
    relay_pids[k] = start_relay(relay_fds[k]);
    relays_left++;
  }

  pid_t criu = fork();
  if (criu < 0) die("fork");
  if (criu == 0) {
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (size_t k = 0; k < sizeof relayed / sizeof relayed[0]; k++) sigaction(relayed[k], &dfl, NULL);
    signal(SIGPIPE, SIG_DFL);
    execvp(criu_argv[0], criu_argv);
    fprintf(stderr, "checkpt-helper: cannot run %s: %s\n", criu_argv[0], strerror(errno));
    _exit(127);
  }
  int st;
  for (;;) {
    pid_t w = waitpid(-1, &st, 0);
    if (w == criu) break;
    if (w < 0 && errno != EINTR) die("waitpid criu");
    for (int k = 0; k < nrelay; k++)
      if (w == relay_pids[k]) relays_left--;
  }
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    report(status_fd, "restore-failed %d\n", WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
    return EXIT_RESTORE_FAILED;
  }

  target_pid = pid;
  size_t len = strlen(message);
  char *line = malloc(len + 2);
  if (!line) die("malloc");
  memcpy(line, message, len);
  line[len] = '\n';
  if (write(ctl, line, len + 1) != (ssize_t)(len + 1)) die("write fifo");
  free(line);
  close(ctl);
  report(status_fd, "restored %d\n", (int)pid);
  if (pending_sig) kill(pid, pending_sig);
  /* Only the program may hold the relay pipes now, so its exit reads as EOF there. */
  int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
  for (int k = 0; k < nrelay; k++) dup2(devnull, relay_fds[k]);

  /* The program's status is reported once its output has gone through the relays too. */
  int done = 0;
  for (;;) {
    if (done && relays_left == 0) break;
    pid_t w = waitpid(-1, &st, 0);
    if (w < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (w == pid) done = 1;
    for (int k = 0; k < nrelay; k++)
      if (w == relay_pids[k]) relays_left--;
    if (w == pid) pid_status = st;
  }
  if (!done) {
    /* The program is not our child: nothing left to wait for. */
    report(status_fd, "exit %d\n", 0);
    return 0;
  }
  if (WIFSIGNALED(pid_status)) {
    report(status_fd, "signal %d\n", WTERMSIG(pid_status));
    return 128 + WTERMSIG(pid_status);
  }
  report(status_fd, "exit %d\n", WEXITSTATUS(pid_status));
  return WEXITSTATUS(pid_status);
}

int main(int argc, char **argv) {
  if (argc >= 2 && !strcmp(argv[1], "init")) return cmd_init(argc - 2, argv + 2);
  if (argc >= 2 && !strcmp(argv[1], "--version")) { puts("checkpt-helper 1"); return 0; }
  fprintf(stderr, "usage: checkpt-helper init ... (internal to checkpt)\n");
  return EXIT_USAGE;
}
