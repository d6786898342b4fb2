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
 *     --run: instead of restoring, start ARGS as the program (`checkpt run`); reports "started PID".
 *     --pty (with --attached, on a terminal): the program gets a pseudo-terminal of its own, led by
 *     the init, so a resumed copy can be checkpointed again; this side relays keys and output,
 *     passes window size changes on, and reports the checkpoint key as "key PGRP" (--key BYTE,
 *     default 5 = ^E, -1 for none) instead of passing it through.
 *     Without --fifo the restored program is not waiting to be told (it was dumped from outside).
 *     --netns: the program also gets a network namespace of its own, with only `lo` (up): its TCP
 *     connections among its own processes survive a checkpoint even without root.
 *     --host: no namespaces (an ordinary user may not make them without a user namespace, and
 *     an image made on the host by the granted CRIU must be restored there): the init is a child
 *     subreaper that adopts the restored program, the FIFO is made at its path (one copy at a
 *     time: the program needs its old pid on the host anyway) and removed after.
 *     --eof-fd FD: FD becomes the read end of an empty pipe whose write end is closed (for CRIU's
 *     --inherit-fd, when the program's old stdin pipe must read end-of-file).
 *     --lock-table 'inet CRIU-ID' --lock-method-at OFFSET:INVENTORY: see nft-lock.h.
 *     --pin-cpu C --pin-ms MS: CRIU and the copy run on CPU C (beside a lazy-pages daemon held
 *     there) until MS after the restore, then get back this process's CPUs.
 *
 *   checkpt-helper serve-pages [--stage-only] [--off-cpu C] [--pagemaps DIR] [--hold SOCKET]
 *     The page server of a lazy restore, checking memory chunks itself (native/page-server.c);
 *     --stage-only: no daemon, it checks and stages an eager restore's memory.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <ftw.h>
#include <libgen.h>
#include <limits.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <time.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/syscall.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <net/if.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>
#include "criu-rpc.h"
#include "page-server.h"
#include "resume-front.h"
#include "front-image.h"
#include "fdio.h"
#include "publish.h"
#include "nft-lock.h"

#define EXIT_RESTORE_FAILED 125
#define EXIT_USAGE 126

static volatile sig_atomic_t target_pid = 0;
static volatile sig_atomic_t pending_sig = 0;
static int relay_fds[2];
static pid_t relay_pids[2];
static int nrelay = 0;
static int pty_mode = 0;
static int wake_fd[2] = {-1, -1};
static int hold_slave = -1;
/* Not root: the namespaces are in a user namespace of our own (enter_own_userns). */
static int rootless = 0;
/* --netns: a network namespace of the program's own. */
static int netns = 0;
/* --host: restore on the host with the granted CRIU, no namespaces of ours (docs/ROOTLESS.md). */
static int host = 0;
static const int relayed[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH, SIGCONT, SIGALRM};

static void die(const char *what) {
  fprintf(stderr, "checkpt-helper: %s: %s\n", what, strerror(errno));
  exit(EXIT_USAGE);
}

static void forward(int sig, siginfo_t *info, void *ctx) {
  (void)ctx;
  /* Terminal-generated signals already reach the program through its process group. */
  if (pty_mode && sig == SIGWINCH) {
    /* Our own terminal changed size: the relay loop passes it on to the program's. */
    int e = errno;
    if (write(wake_fd[1], "w", 1) < 0) { /* the loop is already awake */ }
    errno = e;
    return;
  }
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

struct init_opts {
  pid_t pid;
  int run;
  const char *mnt, *fifo, *message;
  int status_fd;
  const char *slave;
  char **argv;
};

static int run_init(struct init_opts *o);

/*
 * --pin-cpu C --pin-ms MS (a lazy resume, native/resume-front.c): CRIU and the copy run on CPU C
 * beside CRIU's lazy-pages daemon (CHECKPT_CRIU_LAZY_HOLD), so that a page fault is answered on
 * the CPU that took it instead of waking another (~50 us a wake-up on a VM whose idle CPUs halt).
 * MS after the restore, every thread of the copy still on C alone gets back the CPUs checkpt had.
 */
static int pin_cpu = -1;
static long pin_ms = 0;
static cpu_set_t pin_saved;

static void pin_self(void) {
  cpu_set_t one;
  if (sched_getaffinity(0, sizeof pin_saved, &pin_saved) != 0 || !CPU_ISSET(pin_cpu, &pin_saved) || CPU_COUNT(&pin_saved) < 2) {
    pin_cpu = -1;
    return;
  }
  CPU_ZERO(&one);
  CPU_SET(pin_cpu, &one);
  if (sched_setaffinity(0, sizeof one, &one) != 0) pin_cpu = -1;
}

/*
 * The process tree walks (unpin_tree, dead_below, criu_holds) share these: visit(pid, ctx) for
 * `root` and each process below it, breadth first (the children of every thread), until a visit
 * returns non-zero, which walk_tree returns; 0 when none did.
 */
#define TREE_MAX 1024
typedef int (*tree_visit)(pid_t pid, void *ctx);
static int walk_tree(pid_t root, tree_visit visit, void *ctx) {
  pid_t queue[TREE_MAX];
  int head = 0, tail = 0;
  queue[tail++] = root;
  while (head < tail) {
    pid_t p = queue[head++];
    int r = visit(p, ctx);
    if (r) return r;
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)p);
    DIR *d = opendir(path);
    if (!d) continue;
    struct dirent *e;
    while ((e = readdir(d))) {
      if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
      char cpath[320];
      snprintf(cpath, sizeof cpath, "/proc/%d/task/%s/children", (int)p, e->d_name);
      FILE *f = fopen(cpath, "re");
      if (!f) continue;
      int c;
      while (tail < TREE_MAX && fscanf(f, "%d", &c) == 1) queue[tail++] = c;
      fclose(f);
    }
    closedir(d);
  }
  return 0;
}

/* Calls visit(tid, ctx) for each thread of `pid` until one returns non-zero, and returns that. */
static int each_thread(pid_t pid, tree_visit visit, void *ctx) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
  DIR *d = opendir(path);
  if (!d) return 0;
  int r = 0;
  struct dirent *e;
  while (!r && (e = readdir(d))) {
    pid_t tid = (pid_t)atoi(e->d_name);
    if (tid > 0) r = visit(tid, ctx);
  }
  closedir(d);
  return r;
}

/* Gives back the saved CPUs to a thread pinned to pin_cpu alone; counts it in *(int *)ctx. */
static int unpin_thread(pid_t tid, void *ctx) {
  cpu_set_t m;
  if (sched_getaffinity(tid, sizeof m, &m) == 0 && CPU_COUNT(&m) == 1 && CPU_ISSET(pin_cpu, &m) &&
      sched_setaffinity(tid, sizeof pin_saved, &pin_saved) == 0)
    ++*(int *)ctx;
  return 0;
}

static int unpin_process(pid_t pid, void *ctx) { return each_thread(pid, unpin_thread, ctx); }

/* Gives back the saved CPUs to each thread of `pid` and below pinned to pin_cpu alone; how many. */
static int unpin_tree(pid_t pid) {
  int n = 0;
  walk_tree(pid, unpin_process, &n);
  return n;
}

static void *unpin_later(void *arg) {
  (void)arg;
  struct timespec t = {pin_ms / 1000, (pin_ms % 1000) * 1000000L};
  while (nanosleep(&t, &t) != 0 && errno == EINTR) {}
  /* Again while a pass finds any: a thread started during one inherits its creator's old mask. */
  for (int pass = 0; pass < 8 && unpin_tree(getpid()) > 0; pass++) {}
  return NULL;
}

/*
 * The program's terminal: a pseudo-terminal from a devpts instance of its own, mounted over
 * /dev/pts in its mount namespace. A resumed copy gets the same /dev/pts/N it had (CRIU reopens
 * a terminal's other open files by that path), and never anyone else's terminal.
 */
static int open_private_pty(int index, const char **slave) {
  if (index < 0 || index > 4096) { errno = EINVAL; die("--pty-index"); }
  if (mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620") < 0)
    die("mount a devpts instance");
  /* Programs that open /dev/ptmx themselves must get terminals from the same instance. */
  if (mount("/dev/pts/ptmx", "/dev/ptmx", NULL, MS_BIND, NULL) < 0) { /* /dev/ptmx may be a symlink already */ }
  int *spare = calloc((size_t)index + 1, sizeof(int));
  if (!spare) die("calloc");
  int master = -1, n = 0;
  for (;;) {
    master = open("/dev/pts/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (master < 0 || unlockpt(master) < 0) die("open a pseudo-terminal");
    int got = -1;
    if (ioctl(master, TIOCGPTN, &got) < 0) die("TIOCGPTN");
    if (got == index) break;
    if (got > index) { errno = EEXIST; die("allocate the pseudo-terminal's number"); }
    spare[n++] = master;
  }
  while (n > 0) close(spare[--n]);
  free(spare);
  *slave = ptsname(master);
  if (!*slave) die("ptsname");
  /* The program starts with our terminal's modes and size, as if it ran on it directly. */
  struct termios t;
  struct winsize ws;
  int s = open(*slave, O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (s < 0) die("open the pseudo-terminal");
  if (tcgetattr(0, &t) == 0) tcsetattr(s, TCSANOW, &t);
  if (ioctl(0, TIOCGWINSZ, &ws) == 0) ioctl(s, TIOCSWINSZ, &ws);
  /* Held open here, so the master never reads as hung up while the program is being set up or
   * restored; the end of the program is the end of the init. */
  hold_slave = s;
  if (pipe2(wake_fd, O_CLOEXEC | O_NONBLOCK) < 0) die("pipe");
  return master;
}
static int relay_pty(int master, pid_t init, int status_fd, int key);

static void write_file(const char *path, const char *text) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) die(path);
  ssize_t n = write(fd, text, strlen(text));
  if (n != (ssize_t)strlen(text)) die(path);
  close(fd);
}

/*
 * Not root: the PID and mount namespaces belong to a user namespace of our own, in which our uid
 * and gid are 0 (as `unshare -U -r`). That gives CRIU (run with --unprivileged) the capabilities
 * it needs over this namespace and nothing outside it: one uid mapped, no supplementary groups.
 */
static void enter_own_userns(int more) {
  uid_t uid = geteuid();
  gid_t gid = getegid();
  char map[64];
  if (unshare(CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS | more) < 0) die("unshare(user|PID|mount namespace)");
  rootless = 1;
  write_file("/proc/self/setgroups", "deny");
  snprintf(map, sizeof map, "0 %u 1\n", (unsigned)uid);
  write_file("/proc/self/uid_map", map);
  snprintf(map, sizeof map, "0 %u 1\n", (unsigned)gid);
  write_file("/proc/self/gid_map", map);
}

/* A new network namespace has only `lo`, and down. */
static void loopback_up(void) {
  int sk = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  strcpy(ifr.ifr_name, "lo");
  if (sk < 0 || ioctl(sk, SIOCGIFFLAGS, &ifr) < 0) die("lo");
  ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
  if (ioctl(sk, SIOCSIFFLAGS, &ifr) < 0) die("bring lo up");
  close(sk);
}

static void on_child(int sig) {
  (void)sig;
  int e = errno;
  if (write(wake_fd[1], "c", 1) < 0) { /* the loop is already awake */ }
  errno = e;
}

/* Outside the new namespace: owns the terminal hand-over and passes signals to the init. */
static int cmd_init(int argc, char **argv) {
  struct init_opts o = {0, 0, NULL, NULL, "", -1, NULL, NULL};
  int attached = 0, key = 5, pty_index = 0, i;
  pid_t parent = 0;
  const char *lock_table = NULL, *lock_method_at = NULL;
  for (i = 0; i < argc; i++) {
    if (!strcmp(argv[i], "--")) { i++; break; }
    if (!strcmp(argv[i], "--attached")) { attached = 1; continue; }
    if (!strcmp(argv[i], "--parent") && i + 1 < argc) { parent = (pid_t)atoi(argv[++i]); continue; }
    if (!strcmp(argv[i], "--run")) { o.run = 1; continue; }
    if (!strcmp(argv[i], "--pty")) { pty_mode = 1; continue; }
    if (!strcmp(argv[i], "--netns")) { netns = 1; continue; }
    if (!strcmp(argv[i], "--host")) { host = 1; continue; }
    if (i + 1 >= argc) { fprintf(stderr, "checkpt-helper init: %s needs a value\n", argv[i]); return EXIT_USAGE; }
    if (!strcmp(argv[i], "--pid")) o.pid = (pid_t)atoi(argv[++i]);
    else if (!strcmp(argv[i], "--pin-cpu")) pin_cpu = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--pin-ms")) pin_ms = atol(argv[++i]);
    else if (!strcmp(argv[i], "--relay")) {
      int fd = atoi(argv[++i]);
      if ((fd != 1 && fd != 2) || nrelay >= 2) { fprintf(stderr, "checkpt-helper init: --relay takes 1 or 2\n"); return EXIT_USAGE; }
      relay_fds[nrelay++] = fd;
    }
    else if (!strcmp(argv[i], "--mount")) o.mnt = argv[++i];
    else if (!strcmp(argv[i], "--fifo")) o.fifo = argv[++i];
    else if (!strcmp(argv[i], "--message")) o.message = argv[++i];
    else if (!strcmp(argv[i], "--status-fd")) o.status_fd = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--key")) key = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--pty-index")) pty_index = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--lock-table")) lock_table = argv[++i];
    else if (!strcmp(argv[i], "--lock-method-at")) lock_method_at = argv[++i];
    else if (!strcmp(argv[i], "--eof-fd")) {
      /* An empty pipe, its write end closed, for a program whose stdin was a pipe: /dev/null in
       * its place breaks a restore when the program watched its stdin with epoll (EPERM). */
      int fd = atoi(argv[++i]), p[2];
      if (fd < 4 || pipe(p) < 0) { fprintf(stderr, "checkpt-helper init: --eof-fd needs a pipe on fd 4 or above\n"); return EXIT_USAGE; }
      if (p[0] != fd && (dup2(p[0], fd) < 0 || close(p[0]) < 0)) die("dup2");
      close(p[1]);
    }
    else { fprintf(stderr, "checkpt-helper init: unknown option %s\n", argv[i]); return EXIT_USAGE; }
  }
  if ((!o.run && o.pid <= 1) || (o.fifo && !o.mnt) || i >= argc) {
    fprintf(stderr, "usage: checkpt-helper init (--pid N | --run) [--mount DIR --fifo PATH --message TEXT] [--pty] [--status-fd FD] -- ARGS...\n");
    return EXIT_USAGE;
  }
  o.argv = argv + i;
  bench_trace("init");
  if (o.status_fd >= 0) fcntl(o.status_fd, F_SETFD, FD_CLOEXEC);
  if (pin_cpu >= 0 && (o.run || pin_cpu >= CPU_SETSIZE || pin_ms <= 0)) pin_cpu = -1;
  if (pin_cpu >= 0) pin_self();
  signal(SIGPIPE, SIG_IGN);
  if (attached && prctl(PR_SET_PDEATHSIG, SIGKILL) < 0) die("prctl(PDEATHSIG)");
  /* Our launcher died before that took effect: nothing would kill us with it. */
  if (attached && parent > 0 && getppid() != parent) _exit(128 + SIGKILL);
  if (pty_mode && !(attached && isatty(0))) pty_mode = 0;
  int tty = attached && isatty(0) && !pty_mode;
  pid_t fg = tty ? tcgetpgrp(0) : -1;
  if (host && (netns || o.run)) { fprintf(stderr, "checkpt-helper init: --host is only for a restore\n"); return EXIT_USAGE; }
  /* In the host's network namespace, where the dump's lock table would be. */
  if (lock_table && lock_method_at && !netns) skip_lock_if_gone(lock_table, lock_method_at);
  if (host) { /* no namespaces: see --host above */ }
  else if (geteuid() != 0) enter_own_userns(netns ? CLONE_NEWNET : 0);
  else if (unshare(CLONE_NEWPID | CLONE_NEWNS | (netns ? CLONE_NEWNET : 0)) < 0) die("unshare(PID|mount|network namespace)");
  if (netns) loopback_up();
  if (!host && mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) die("make mounts private");
  int master = -1;
  if (pty_mode) master = open_private_pty(pty_index, &o.slave);
  /* The init is pid 1 of its namespace, where getppid() says 0: it watches us through a pidfd. */
  int self_fd = attached ? (int)syscall(SYS_pidfd_open, getpid(), 0) : -1;
  pid_t init = fork();
  if (init < 0) die("fork init");
  if (init == 0) {
    /* Tests widen the window below to kill us inside it (test/launcher/run.test.mjs). */
    const char *stall = getenv("CHECKPT_TEST_INIT_STALL_MS");
    if (stall) usleep((useconds_t)atoi(stall) * 1000);
    if (attached && prctl(PR_SET_PDEATHSIG, SIGKILL) < 0) die("prctl(PDEATHSIG)");
    /* Killed between the fork and that, we would leave the program running with nobody above it. */
    if (self_fd >= 0 && poll(&(struct pollfd){self_fd, POLLIN, 0}, 1, 0) > 0) _exit(128 + SIGKILL);
    if (self_fd >= 0) close(self_fd);
    /* On the host the restored program is CRIU's child; when CRIU exits it comes to us. */
    if (host && prctl(PR_SET_CHILD_SUBREAPER, 1) < 0) die("prctl(CHILD_SUBREAPER)");
    if (!host && mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0) die("mount /proc");
    if (pty_mode) {
      close(master);
      close(hold_slave);
      close(wake_fd[0]);
      close(wake_fd[1]);
      pty_mode = 0;
      /* The init leads the program's session, so a checkpoint of the program finds its session
       * leader outside the dumped tree but inside this namespace. */
      if (setsid() < 0) die("setsid");
      int s = open(o.slave, O_RDWR);
      if (s < 0) die("open the pseudo-terminal");
      if (ioctl(s, TIOCSCTTY, 0) < 0) die("TIOCSCTTY");
      for (int fd = 0; fd <= 2; fd++)
        if (dup2(s, fd) < 0) die("dup2");
      if (s > 2) close(s);
    } else if (tty) {
      /* CRIU gives the terminal to its parent's group, which must be visible in this namespace. */
      signal(SIGTTOU, SIG_IGN);
      if (setpgid(0, 0) < 0 || tcsetpgrp(0, getpgrp()) < 0) die("take the terminal");
      signal(SIGTTOU, SIG_DFL);
    } else if (setsid() < 0) {
      /* CRIU gives the program its restorer's session; one led from outside this namespace
       * would make a checkpoint taken in the resumed copy fail. */
      die("setsid");
    }
    return run_init(&o);
  }
  if (self_fd >= 0) close(self_fd);
  if (!pty_mode && o.status_fd >= 0) close(o.status_fd);
  /* Only the init and what it starts run on the one CPU; this process just waits. */
  if (pin_cpu >= 0) sched_setaffinity(0, sizeof pin_saved, &pin_saved);
  target_pid = init;
  relay_signals();
  int st;
  if (pty_mode) {
    st = relay_pty(master, init, o.status_fd, key);
  } else {
    while (waitpid(init, &st, 0) < 0)
      if (errno != EINTR) die("waitpid init");
  }
  if (fg > 0) {
    signal(SIGTTOU, SIG_IGN);
    tcsetpgrp(0, fg);
  }
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int write_all(int fd, const void *data, size_t n) {
  const char *buf = data;
  while (n > 0) {
    ssize_t w = write(fd, buf, n);
    if (w < 0 && (errno == EINTR || errno == EAGAIN)) {
      if (errno == EAGAIN) poll(&(struct pollfd){fd, POLLOUT, 0}, 1, 100);
      continue;
    }
    if (w <= 0) return -1;
    buf += w;
    n -= (size_t)w;
  }
  return 0;
}

/*
 * Our terminal in raw mode, bytes passed both ways between it and the program's pseudo-terminal,
 * until the init ends. The key byte is not passed on: it is reported as a checkpoint request.
 */
static int relay_pty(int master, pid_t init, int status_fd, int key) {
  struct termios saved, raw;
  int have_tty = tcgetattr(0, &saved) == 0;
  if (have_tty) {
    raw = saved;
    cfmakeraw(&raw);
    tcsetattr(0, TCSADRAIN, &raw);
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_child;
  sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGCHLD, &sa, NULL);
  int st = 0, in_open = 1, out_open = 1;
  char buf[65536];
  for (;;) {
    if (waitpid(init, &st, WNOHANG) == init) break;
    struct pollfd p[3] = {{wake_fd[0], POLLIN, 0}, {in_open ? 0 : -1, POLLIN, 0}, {out_open ? master : -1, POLLIN, 0}};
    if (poll(p, 3, -1) < 0) {
      if (errno == EINTR) continue;
      die("poll");
    }
    if (p[0].revents & POLLIN) {
      char c[64];
      ssize_t n = read(wake_fd[0], c, sizeof c);
      for (ssize_t k = 0; k < n; k++)
        if (c[k] == 'w') {
          struct winsize ws;
          if (ioctl(0, TIOCGWINSZ, &ws) == 0) ioctl(master, TIOCSWINSZ, &ws);
        }
    }
    if (p[1].revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t n = read(0, buf, sizeof buf);
      if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) in_open = 0;
      size_t from = 0;
      for (ssize_t k = 0; k < n; k++) {
        if ((unsigned char)buf[k] != key) continue;
        if ((size_t)k > from && write_all(master, buf + from, (size_t)k - from) < 0) out_open = 0;
        from = (size_t)k + 1;
        char line[64];
        int len = snprintf(line, sizeof line, "key %d\n", (int)tcgetpgrp(master));
        if (status_fd >= 0 && write(status_fd, line, (size_t)len) < 0) { /* the launcher is gone */ }
      }
      if (n > 0 && (size_t)n > from && write_all(master, buf + from, (size_t)n - from) < 0) out_open = 0;
    }
    if (p[2].revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t n = read(master, buf, sizeof buf);
      if (n > 0) write_all(1, buf, (size_t)n);
      /* EIO: no one holds the program's side open any more (it may still be running detached). */
      else if (n == 0 || (errno != EINTR && errno != EAGAIN)) out_open = 0;
    }
  }
  /* What the program wrote just before it ended. */
  fcntl(master, F_SETFL, O_NONBLOCK);
  for (;;) {
    ssize_t n = read(master, buf, sizeof buf);
    if (n <= 0) break;
    write_all(1, buf, (size_t)n);
  }
  if (have_tty) tcsetattr(0, TCSADRAIN, &saved);
  close(master);
  return st;
}

/* Copies what the program writes into the pipe on to the real destination, until EOF. */
static pid_t start_relay(int fd) {
  int p[2];
  if (pipe(p) < 0) die("pipe");
  pid_t r = fork();
  if (r < 0) die("fork relay");
  if (r == 0) {
    close(p[1]);
    /* Hold nothing but our two ends: another relay's pipe or the status fd held here would
     * never let it see its end. */
    int null = open("/dev/null", O_RDWR);
    for (int k = 0; k <= 2; k++)
      if (k != fd) dup2(null, k);
    for (int k = 3; k < 1024; k++)
      if (k != p[0]) close(k);
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

/*
 * The program's first process adopts the program's orphans (PR_SET_CHILD_SUBREAPER survives exec):
 * a child that daemonizes (forks, its parent exits) stays in the tree a checkpoint dumps, instead
 * of passing to this init, outside it. The kernel still reaps them only if the adopter waits, as
 * shells do; CRIU dumps and restores the flag.
 */
static void adopt_orphans(void) {
  if (prctl(PR_SET_CHILD_SUBREAPER, 1) < 0) die("prctl(CHILD_SUBREAPER)");
}

static void default_signals(void) {
  struct sigaction dfl;
  memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  for (size_t k = 0; k < sizeof relayed / sizeof relayed[0]; k++) sigaction(relayed[k], &dfl, NULL);
  signal(SIGPIPE, SIG_DFL);
}

/*
 * CRIU finds an open file through its mount, and a /dev/null or a file our launcher opened belongs
 * to a mount outside this namespace: the program gets the same files opened from in here.
 */
static void reopen_inside(void) {
  for (int fd = 0; fd <= 2; fd++) {
    struct stat sb;
    if (fstat(fd, &sb) < 0) continue;
    int nfd = -1;
    if (S_ISCHR(sb.st_mode) && sb.st_rdev == makedev(1, 3)) {
      nfd = open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY);
    } else if (S_ISREG(sb.st_mode)) {
      char path[64];
      snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
      int flags = fcntl(fd, F_GETFL);
      off_t off = lseek(fd, 0, SEEK_CUR);
      nfd = open(path, flags & (O_ACCMODE | O_APPEND));
      if (nfd >= 0 && off > 0) lseek(nfd, off, SEEK_SET);
    }
    if (nfd < 0) continue;
    dup2(nfd, fd);
    close(nfd);
  }
}

/*
 * CRIU gives every restored process its old pid, so our own helpers here (relays, criu) must not
 * take one: they get pids from the far end of the range from the program's.
 */
static void keep_pids_free(pid_t pid) {
  long max = 32768;
  FILE *f = fopen("/proc/sys/kernel/pid_max", "r");
  if (f) {
    if (fscanf(f, "%ld", &max) != 1) max = 32768;
    fclose(f);
  }
  long last = pid < max / 2 ? max - 1000 : 1;
  f = fopen("/proc/sys/kernel/ns_last_pid", "w");
  if (!f) die("open ns_last_pid");
  fprintf(f, "%ld", last);
  if (fclose(f) != 0) die("write ns_last_pid");
}

/*
 * The program ends with its first process, as a container does with its main process: whatever
 * that left running is killed, or it would hold the output relays open and checkpt would never
 * return. Every process of the namespace but this init and the relays (from /proc: our own).
 */
static pid_t parent_of(pid_t pid) {
  char path[64], buf[512];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  char *f = stat_fields(path, buf, sizeof buf);
  int ppid;
  if (!f || sscanf(f, "%*c %d", &ppid) != 1) return -1;
  return (pid_t)ppid;
}

static void end_leftovers(void) {
  DIR *d = opendir("/proc");
  if (!d) return;
  struct dirent *e;
  while ((e = readdir(d))) {
    char *end;
    long p = strtol(e->d_name, &end, 10);
    if (*end || p <= 1) continue;
    int relay = 0;
    for (int k = 0; k < nrelay; k++) relay |= p == relay_pids[k];
    /* On the host /proc is everyone's: only what the program left to us (our children). */
    if (!relay && host && parent_of((pid_t)p) != getpid()) continue;
    if (!relay) kill((pid_t)p, SIGKILL);
  }
  closedir(d);
}

char *stat_fields(const char *path, char *buf, size_t len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return NULL;
  ssize_t n = read(fd, buf, len - 1);
  close(fd);
  if (n <= 0) return NULL;
  buf[n] = 0;
  char *at = strrchr(buf, ')');
  return at && at[1] == ' ' ? at + 2 : NULL;
}

/* Who traces `pid` (TracerPid in its status, in the pids of our /proc); 0 when nobody or gone. */
static pid_t tracer_of(pid_t pid) {
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  long tracer = 0;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "TracerPid: %ld", &tracer) == 1) break;
  fclose(f);
  return (pid_t)tracer;
}

static long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

/*
 * The CRIU that holds `pid` dead: every thread of it a zombie, traced by a process named criu.
 * Killed while CRIU dumped it, a multi-threaded program can stay so for good: CRIU waiting for a
 * process that will not stop again, its parent unable to reap it until CRIU lets go (CI emulation
 * 12 of stop 48: a restart under `checkpt run --restart` held to the dump's 120 s deadline).
 * Returns that CRIU's pid, else 0.
 */
static pid_t criu_holding_dead(pid_t pid) {
  char path[64], buf[512];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  char *f = stat_fields(path, buf, sizeof buf);
  if (!f || f[0] != 'Z') return 0;
  snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
  DIR *d = opendir(path);
  if (!d) return 0;
  int alive = 0;
  struct dirent *e;
  while (!alive && (e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    char tpath[320];
    snprintf(tpath, sizeof tpath, "/proc/%d/task/%s/stat", (int)pid, e->d_name);
    char *t = stat_fields(tpath, buf, sizeof buf);
    alive = t && t[0] != 'Z' && t[0] != 'X';
  }
  closedir(d);
  if (alive) return 0;
  pid_t tracer = tracer_of(pid);
  if (tracer <= 0) return 0;
  snprintf(path, sizeof path, "/proc/%d/comm", (int)tracer);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  return n == 5 && !memcmp(buf, "criu\n", 5) ? tracer : 0;
}

/* How long the program may lie dead in a CRIU's hands before that CRIU is ended. */
#define DEAD_HELD_MS 1000

/* What a caller's looks (every 250 ms or so) have seen lie dead in CRIU's hands, and since when. */
struct dead_watch {
  pid_t seen;
  long since;
};

/*
 * Whether this look's `seen` (0: nothing) is what every look has seen for DEAD_HELD_MS; then the
 * watch starts over, so that a caller acts on it once.
 */
static int dead_for_long(struct dead_watch *w, pid_t seen) {
  if (!seen || seen != w->seen) {
    w->seen = seen;
    w->since = seen ? now_ms() : 0;
    return 0;
  }
  if (now_ms() - w->since < DEAD_HELD_MS) return 0;
  w->seen = 0;
  w->since = 0;
  return 1;
}

/*
 * The CRIU (`only`, or any) that has held `pid` dead for DEAD_HELD_MS, said on stderr, for the
 * caller to end; else 0.
 */
static pid_t criu_to_end(pid_t pid, pid_t only, struct dead_watch *w) {
  pid_t criu = criu_holding_dead(pid);
  if (only && criu != only) criu = 0;
  if (!dead_for_long(w, criu)) return 0;
  fprintf(stderr, "checkpt: the program died while CRIU (pid %d) checkpointed it, and CRIU held on to it for %d ms: ending CRIU\n", (int)criu, DEAD_HELD_MS);
  return criu;
}

struct dead_look {
  pid_t root, criu;
};

static int dead_in_hands(pid_t p, void *ctx) {
  const struct dead_look *l = ctx;
  return p != l->root && criu_holding_dead(p) == l->criu ? (int)p : 0;
}

/* A process below `root` (not `root` itself) that lies dead in CRIU `criu`'s hands, else 0. */
static pid_t dead_below(pid_t root, pid_t criu) {
  struct dead_look l = {root, criu};
  return (pid_t)walk_tree(root, dead_in_hands, &l);
}

/* Blocks SIGCHLD in this thread (and threads it starts after); `*set` holds just SIGCHLD. */
static void block_sigchld(sigset_t *set) {
  sigemptyset(set);
  sigaddset(set, SIGCHLD);
  sigprocmask(SIG_BLOCK, set, NULL);
}

/*
 * Reaps until nothing is left in the namespace: the program's first process, what it left (killed
 * then), and the relays, which end once all its output is through. Returns whether the first
 * process was seen, its status in *status.
 */
static int wait_program(pid_t pid, int *status) {
  int done = 0, st;
  /* Blocked, SIGCHLD waits for sigtimedwait below, which also wakes every 250 ms to look. */
  sigset_t chld;
  block_sigchld(&chld);
  struct dead_watch watch = {0, 0};
  for (;;) {
    pid_t w = waitpid(-1, &st, WNOHANG);
    if (w < 0) {
      if (errno == EINTR) continue;
      return done;
    }
    if (w == 0) {
      pid_t criu = done ? 0 : criu_to_end(pid, 0, &watch);
      if (criu) kill(criu, SIGKILL);
      struct timespec tick = {0, 250 * 1000000L};
      sigtimedwait(&chld, NULL, &tick);
      continue;
    }
    if (w == pid) {
      done = 1;
      *status = st;
      target_pid = 0;
    }
    /* Again after each reap: a leftover may have forked before it was killed. */
    if (done) end_leftovers();
  }
}

/*
 * CRIU, through vfork: no copy of our page tables for its exec to tear down (~5 ms on a guest
 * where each page-table change traps). The child only resets signals and execs; a function of its
 * own, so that nothing of the caller's frame lives across the vfork.
 */
static __attribute__((noinline)) pid_t start_criu(char **argv) {
  pid_t pid = vfork();
  if (pid != 0) return pid;
  default_signals();
  execvp(argv[0], argv);
  /* No stdio here (its buffers are the parent's): the message in pieces. */
  const char *why = strerror(errno);
  struct iovec v[] = {{"checkpt-helper: cannot run ", 27}, {argv[0], strlen(argv[0])}, {": ", 2}, {(char *)why, strlen(why)}, {"\n", 1}};
  if (writev(2, v, 5) < 0) { /* nowhere to say it */ }
  _exit(127);
}

/* PID 1 of the new namespace. */
static int run_init(struct init_opts *o) {
  int ctl = -1;
  if (o->fifo) {
    /* A tmpfs of our own at the FIFO's directory: concurrent restores of one image never share a channel. */
    mkdirs(o->mnt);
    if (!host && mount("checkpt", o->mnt, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0700") < 0) die("mount tmpfs");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", o->fifo);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) { *slash = '\0'; mkdirs(dir); }
    /* On the host a FIFO left by a copy that was killed is in the way. */
    if (host) unlink(o->fifo);
    if (mkfifo(o->fifo, 0600) < 0) die("mkfifo");
    ctl = open(o->fifo, O_RDWR | O_CLOEXEC);
    if (ctl < 0) die("open fifo");
  }

  relay_signals();
  /* The host's pids are not ours to steer (that needs CAP_CHECKPOINT_RESTORE). */
  if (!o->run && !host) keep_pids_free(o->pid);

  int pid_status = 0;
  for (int k = 0; k < nrelay; k++) relay_pids[k] = start_relay(relay_fds[k]);

  int st;
  pid_t pid;
  if (o->run) {
    reopen_inside();
    /* Until the child has its own handlers and we know its pid, a signal relayed to either would
     * be lost in forward(): it waits blocked instead. */
    sigset_t relayset, oldmask;
    sigemptyset(&relayset);
    for (size_t k = 0; k < sizeof relayed / sizeof relayed[0]; k++) sigaddset(&relayset, relayed[k]);
    sigprocmask(SIG_BLOCK, &relayset, &oldmask);
    /* Closed by the child's exec: until then the child holds our fds (the status socket among
     * them), and a checkpoint taken meanwhile found them ("External socket is used"). */
    int execd[2];
    if (pipe2(execd, O_CLOEXEC) < 0) execd[0] = execd[1] = -1;
    pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
      if (execd[0] >= 0) close(execd[0]);
      default_signals();
      sigprocmask(SIG_SETMASK, &oldmask, NULL);
      adopt_orphans();
      /* Without root, CRIU cannot dump an fd the launcher opened in a mount namespace outside. */
      if (rootless) close_range(3, ~0U, CLOSE_RANGE_CLOEXEC);
      setpgid(0, 0);
      if (isatty(0)) {
        signal(SIGTTOU, SIG_IGN);
        tcsetpgrp(0, getpid());
        signal(SIGTTOU, SIG_DFL);
      }
      const char *stall = getenv("CHECKPT_TEST_RUN_EXEC_STALL_MS");
      if (stall) usleep((useconds_t)atoi(stall) * 1000);
      execvp(o->argv[0], o->argv);
      fprintf(stderr, "checkpt: cannot run %s: %s\n", o->argv[0], strerror(errno));
      _exit(errno == ENOENT ? 127 : 126);
    }
    setpgid(pid, pid);
    target_pid = pid;
    if (execd[1] >= 0) close(execd[1]);
    if (execd[0] >= 0) {
      char c;
      while (read(execd[0], &c, 1) < 0 && errno == EINTR) {
      }
      close(execd[0]);
    }
    sigprocmask(SIG_SETMASK, &oldmask, NULL);
    report(o->status_fd, "started %d\n", (int)pid);
  } else {
    pid = o->pid;
    /* The message waits in the FIFO before CRIU runs: the copy reads it the moment it runs, not
       once CRIU has exited. A copy whose restore fails never runs to read it. */
    if (ctl >= 0) {
      size_t len = strlen(o->message);
      char *line = malloc(len + 2);
      if (!line) die("malloc");
      memcpy(line, o->message, len);
      line[len] = '\n';
      if (write(ctl, line, len + 1) != (ssize_t)(len + 1)) die("write fifo");
      free(line);
    }
    /* CRIU puts back the size the terminal had at the checkpoint; this one's is what counts. */
    struct winsize ws;
    int have_ws = isatty(0) && ioctl(0, TIOCGWINSZ, &ws) == 0;
    bench_trace("criu-exec");
    pid_t criu = start_criu(o->argv);
    if (criu < 0) die("fork");
    for (;;) {
      pid_t w = waitpid(-1, &st, 0);
      if (w == criu) break;
      if (w < 0 && errno != EINTR) die("waitpid criu");
    }
    bench_trace("criu-exited");
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      if (host && o->fifo) unlink(o->fifo);
      report(o->status_fd, "restore-failed %d\n", WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
      return EXIT_RESTORE_FAILED;
    }
    target_pid = pid;
    if (ctl >= 0) {
      close(ctl);
      /* The program holds it open; its name is no longer needed, here or in our tmpfs (where the
       * copy would otherwise remove it itself, each step of that a page fault when resumed lazily). */
      unlink(o->fifo);
      char d[4096];
      snprintf(d, sizeof d, "%s", o->fifo);
      char *sl = strrchr(d, '/');
      if (sl && sl != d) { *sl = '\0'; rmdir(d); }
    }
    report(o->status_fd, "restored %d\n", (int)pid);
    /* The unpinning thread must not take the SIGCHLD wait_program() waits for. */
    sigset_t chld;
    block_sigchld(&chld);
    pthread_t unpin;
    if (pin_cpu >= 0 && pthread_create(&unpin, NULL, unpin_later, NULL) == 0) pthread_detach(unpin);
    else if (pin_cpu >= 0) {
      pin_ms = 0;
      unpin_later(NULL);
    }
    if (isatty(0)) {
      /* CRIU restores an external terminal without its foreground group: give it the program's. */
      pid_t pg = getpgid(pid);
      signal(SIGTTOU, SIG_IGN);
      if (pg > 0 && tcgetpgrp(0) != pg) tcsetpgrp(0, pg);
      signal(SIGTTOU, SIG_DFL);
      /* The terminal it wakes up on may have another size than the one it was checkpointed on. */
      if (have_ws) ioctl(0, TIOCSWINSZ, &ws);
      pid_t fg = tcgetpgrp(0);
      if (fg > 0) kill(-fg, SIGWINCH);
    }
  }
  if (pending_sig) kill(pid, pending_sig);
  /* Only the program may hold the relay pipes now, so its exit reads as EOF there. */
  int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
  for (int k = 0; k < nrelay; k++) dup2(devnull, relay_fds[k]);
  /* Nor the terminal: the launcher's relay sees the end of the program's output. */
  if (isatty(0)) {
    int in = open("/dev/null", O_RDONLY | O_CLOEXEC);
    dup2(in, 0);
    dup2(devnull, 1);
    dup2(devnull, 2);
  }

  int done = wait_program(pid, &pid_status);
  if (!done) {
    /* The program is not our child: nothing left to wait for. */
    report(o->status_fd, "exit %d\n", 0);
    return 0;
  }
  if (WIFSIGNALED(pid_status)) {
    report(o->status_fd, "signal %d\n", WTERMSIG(pid_status));
    return 128 + WTERMSIG(pid_status);
  }
  report(o->status_fd, "exit %d\n", WEXITSTATUS(pid_status));
  return WEXITSTATUS(pid_status);
}

#define DUMPED "{\"t\":\"dumped\"}\n"

static void nap_us(long us) {
  struct timespec ts = {0, us * 1000L};
  nanosleep(&ts, NULL);
}

/* One /proc/PID/NAME file, NUL-terminated, into buf; -1 when the process is gone. */
ssize_t read_proc(pid_t pid, const char *name, char *buf, size_t size) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, name);
  int f = open(path, O_RDONLY | O_CLOEXEC);
  if (f < 0) return -1;
  ssize_t n = read(f, buf, size - 1);
  close(f);
  if (n <= 0) return -1;
  buf[n] = '\0';
  return n;
}

/*
 * Whether the process sits in read(2) on the control FIFO (whatever its fd number): only then does
 * a restore resume it where it waits.
 */
static int blocked_on(pid_t pid, const struct stat *fifo) {
  char buf[128], path[64];
  if (read_proc(pid, "syscall", buf, sizeof buf) < 0) return -1;
  unsigned long fd;
  if (strncmp(buf, "0 0x", 4) != 0 || sscanf(buf + 4, "%lx", &fd) != 1) return 0;
  struct stat sb;
  snprintf(path, sizeof path, "/proc/%d/fd/%lu", (int)pid, fd);
  if (stat(path, &sb) < 0) return 0;
  return sb.st_ino == fifo->st_ino && sb.st_dev == fifo->st_dev;
}

/* Polls until the process blocks on the FIFO: 1, or 0 after timeout ms, or -1 if it is gone. */
static int wait_blocked(pid_t pid, const struct stat *fifo, long timeout, long nap) {
  long start = now_ms();
  for (;;) {
    int b = blocked_on(pid, fifo);
    if (b != 0) return b;
    if (now_ms() - start > timeout) return 0;
    nap_us(nap);
  }
}

/*
 * CRIU runs the dump as `criu swrk FD` (its RPC, the way libcriu runs it) and tells the front
 * each step a script would be run for as a notification on a SOCK_SEQPACKET socketpair; the front
 * answers each in-process, so nothing is forked or executed while the program is frozen.
 */

/* What `criu dump`'s command line (src/engine/criu.ts, dumpCommand) says, as criu_opts; -1 with
 * the reason on stderr for an option CRIU's RPC cannot carry. Opens -D and -W: CRIU reaches them
 * through /proc/FRONT/fd, the front being its RPC peer. */
static int dump_opts_from_argv(char **argv, pid_t pid, struct rpc_dump_opts *o) {
  memset(o, 0, sizeof *o);
  o->images_dir_fd = -1;
  o->work_dir_fd = -1;
  o->log_level = 2;
  o->notify_scripts = 1;
  if (!argv[0] || !argv[1] || strcmp(argv[1], "dump") != 0) {
    fprintf(stderr, "checkpt-helper dump: expected CRIU ARGS to be 'criu dump ...'\n");
    return -1;
  }
  for (int i = 2; argv[i]; i++) {
    const char *a = argv[i], *v = argv[i + 1];
    int needs = !strcmp(a, "-D") || !strcmp(a, "-W") || !strcmp(a, "-o") || !strcmp(a, "-t") ||
                !strcmp(a, "--network-lock") || !strcmp(a, "--external") || !strcmp(a, "--timeout");
    if (needs && !v) { fprintf(stderr, "checkpt-helper dump: criu option %s needs a value\n", a); return -1; }
    if (!strcmp(a, "-D") || !strcmp(a, "-W")) {
      /* Above the fds the front sets up next (3 becomes the FIFO). */
      int fd = open(v, O_RDONLY | O_DIRECTORY | O_CLOEXEC), high = fd < 0 ? -1 : fcntl(fd, F_DUPFD_CLOEXEC, 10);
      if (fd >= 0) close(fd);
      if (high < 0) { fprintf(stderr, "checkpt-helper dump: open %s: %s\n", v, strerror(errno)); return -1; }
      fd = high;
      if (a[1] == 'D') o->images_dir_fd = fd;
      else o->work_dir_fd = fd;
    } else if (!strcmp(a, "-o")) {
      /* CRIU's RPC takes a log file name only, in the work directory. */
      if (strchr(v, '/')) { fprintf(stderr, "checkpt-helper dump: the log file must be a name in the work directory: %s\n", v); return -1; }
      o->log_file = v;
    } else if (!strcmp(a, "-t")) {
      if (atoi(v) != pid) { fprintf(stderr, "checkpt-helper dump: criu -t %s is not --pid %d\n", v, (int)pid); return -1; }
      o->pid = pid;
    } else if (!strncmp(a, "-v", 2) && a[2] >= '0' && a[2] <= '4' && !a[3]) o->log_level = a[2] - '0';
    else if (!strcmp(a, "--leave-running")) o->leave_running = 1;
    else if (!strcmp(a, "--leave-stopped")) o->leave_stopped = 1;
    else if (!strcmp(a, "--shell-job")) o->shell_job = 1;
    else if (!strcmp(a, "--file-locks")) o->file_locks = 1;
    else if (!strcmp(a, "--tcp-established")) o->tcp_established = 1;
    else if (!strcmp(a, "--tcp-close")) o->tcp_close = 1;
    else if (!strcmp(a, "--skip-in-flight")) o->tcp_skip_in_flight = 1;
    else if (!strcmp(a, "--unprivileged")) o->unprivileged = 1;
    else if (!strcmp(a, "--network-lock")) {
      if (!strcmp(v, "nftables")) o->network_lock = RPC_NETLOCK_NFTABLES;
      else if (!strcmp(v, "iptables")) o->network_lock = RPC_NETLOCK_IPTABLES;
      else if (!strcmp(v, "skip")) o->network_lock = RPC_NETLOCK_SKIP;
      else { fprintf(stderr, "checkpt-helper dump: unknown --network-lock %s\n", v); return -1; }
    } else if (!strcmp(a, "--external")) {
      if (o->n_external >= RPC_MAX_EXTERNAL) { fprintf(stderr, "checkpt-helper dump: more than %d --external\n", RPC_MAX_EXTERNAL); return -1; }
      o->external[o->n_external++] = v;
    } else if (!strcmp(a, "--timeout")) {
      o->timeout = atol(v);
      if (o->timeout <= 0) { fprintf(stderr, "checkpt-helper dump: bad --timeout %s\n", v); return -1; }
    } else {
      fprintf(stderr, "checkpt-helper dump: criu option %s has no counterpart in the front's RPC request (native/checkpt-helper.c, dump_opts_from_argv)\n", a);
      return -1;
    }
    if (needs) i++;
  }
  if (o->pid <= 0 || o->images_dir_fd < 0) {
    fprintf(stderr, "checkpt-helper dump: criu dump needs -t PID and -D DIR\n");
    return -1;
  }
  return 0;
}

/* One message from CRIU: its length, 0 when CRIU closed its end, -1 on an error (said on stderr). */
static ssize_t rpc_recv(int sk, uint8_t *buf, size_t size) {
  char cbuf[CMSG_SPACE(sizeof(int) * 4)];
  struct iovec iov = {buf, size};
  struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
  ssize_t n;
  do n = recvmsg(sk, &mh, MSG_TRUNC | MSG_CMSG_CLOEXEC); while (n < 0 && errno == EINTR);
  /* A dump's notifications carry no fd (only a restore's orphan-pts-master does): none is kept. */
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
      for (int *fd = (int *)CMSG_DATA(c); (char *)(fd + 1) <= (char *)c + c->cmsg_len; fd++) close(*fd);
  /* A CRIU that died with our answer unread resets the connection: it is gone all the same. */
  if (n < 0 && errno == ECONNRESET) return 0;
  if (n < 0) { fprintf(stderr, "checkpt-helper: Error (rpc): reading from CRIU: %s\n", strerror(errno)); return -1; }
  if ((size_t)n > size || (mh.msg_flags & MSG_TRUNC)) {
    fprintf(stderr, "checkpt-helper: Error (rpc): CRIU sent a message of %zd bytes, more than the %zu any response needs\n", n, size);
    return -1;
  }
  return n;
}

static int rpc_send(int sk, const struct rpc_buf *b) {
  ssize_t n;
  do n = send(sk, b->data, b->len, MSG_NOSIGNAL); while (n < 0 && errno == EINTR);
  /* CRIU died before our answer: its exit status says what happened, not this. */
  if (n < 0 && (errno == EPIPE || errno == ECONNRESET)) return -1;
  if (n != (ssize_t)b->len) { fprintf(stderr, "checkpt-helper: Error (rpc): writing to CRIU: %s\n", n < 0 ? strerror(errno) : "short write"); return -1; }
  return 0;
}

/* poll() for one fd and CRIU's exit until `until` (ms, now_ms's clock): 1 readable, 0 not by
 * then, -1 CRIU exited first. */
static int wait_readable(int fd, int criu_pidfd, long until) {
  for (;;) {
    long left = until - now_ms();
    if (left < 0) left = 0;
    struct pollfd p[2] = {{fd, POLLIN, 0}, {criu_pidfd, POLLIN, 0}};
    int n = poll(p, criu_pidfd >= 0 ? 2 : 1, (int)(left > 60000 ? 60000 : left));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -1;
    if (p[0].revents) return 1;
    if (criu_pidfd >= 0 && p[1].revents) return -1;
    if (now_ms() >= until) return 0;
  }
}

/*
 * Checkpoint and exit: the images are complete and the program is still frozen, its connections in
 * repair mode and locked. Says "dumped" on checkpt's socket (src/engine/post-dump.ts) and waits for
 * its verdict: 1 only for '1' (the file is durable); 0 for anything else, checkpt's death
 * included, and CRIU then rolls back: network unlocked, sockets out of repair, program resumed.
 * The packing worker may still be starting: connecting is retried for connect_ms. -1: `until`
 * passed, or CRIU exited (criu_pidfd), first.
 */
static int script_verdict(const char *path, const char *greeting, long connect_ms, long until, int criu_pidfd) {
  struct sockaddr_un a = { .sun_family = AF_UNIX };
  if (strlen(path) >= sizeof a.sun_path) { fprintf(stderr, "checkpt hook: socket path too long (CHECKPT_TMPDIR under 90 characters?)\n"); return 0; }
  strcpy(a.sun_path, path);
  long start = now_ms();
  int s = -1;
  for (;;) {
    s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) { fprintf(stderr, "checkpt hook: socket: %s\n", strerror(errno)); return 0; }
    if (connect(s, (struct sockaddr *)&a, sizeof a) == 0) break;
    int e = errno;
    close(s);
    if ((e != ENOENT && e != ECONNREFUSED) || now_ms() - start > connect_ms) {
      fprintf(stderr, "checkpt hook: connect %s: %s\n", path, strerror(e));
      return 0;
    }
    if (now_ms() >= until) return -1;
    nap_us(2000);
  }
  size_t glen = strlen(greeting);
  if (send(s, greeting, glen, MSG_NOSIGNAL) != (ssize_t)glen) { fprintf(stderr, "checkpt hook: write: %s\n", strerror(errno)); close(s); return 0; }
  int w = wait_readable(s, criu_pidfd, until);
  if (w <= 0) { close(s); return -1; }
  char v = 0;
  ssize_t n;
  do n = read(s, &v, 1); while (n < 0 && errno == EINTR);
  close(s);
  if (n == 1 && v == '1') return 1;
  return 0;
}

static int post_dump_verdict(const char *path, long connect_ms, long until, int criu_pidfd) {
  int v = script_verdict(path, "dumped\n", connect_ms, until, criu_pidfd);
  if (v == 0) fprintf(stderr, "checkpt hook: checkpt did not keep the checkpoint; CRIU resumes the program\n");
  return v;
}

/* checkpt's page server listens before CRIU starts: a socket not there is the server gone. */
#define HOLD_CONNECT_MS 5000

/*
 * CRIU's "post-restore" action script for a small image restored lazily (src/engine/restore.ts,
 * CHECKPT_HOLD_SOCK): the copy is restored but none of it has run. Says "restored" and waits,
 * without a deadline of its own, for the page server's '1' (every block of its memory passed its
 * check; native/page-server.c, --hold); anything else, the server's end included (a damaged block,
 * checkpt's death, checkpt's deadline), fails the step and CRIU kills the copy before it runs.
 */
static int cmd_hold_script(const char *sock) {
  bench_trace("hold");
  int v = script_verdict(sock, "restored\n", HOLD_CONNECT_MS, LONG_MAX / 2, -1);
  bench_trace("held");
  if (v == 1) return 0;
  fprintf(stderr, "checkpt hook: the copy's memory did not pass its check; CRIU kills it before it runs\n");
  return 1;
}

/* After the deadline, while CRIU rolls back a refused checkpoint-and-exit (sockets out of repair,
 * network unlocked, program resumed): killed at once, it would leave all of that in place. */
#define ROLLBACK_GRACE_MS 5000
/* After the deadline, from CRIU's SIGALRM to SIGKILL: its handler makes the call it waits in fail
 * (EINTR), retries each second, and gives up by itself after five. */
#define INTERRUPT_GRACE_MS 5500
/* After the deadline, how long CRIU may go on to a moment where interrupting it spares the program
 * (its parasite out): by then it has usually reached a notification, which is refused instead. */
#define HOLD_GRACE_MS 10000

/* compel's injected system call on x86_64: `syscall`, then `int3` six times. */
static const unsigned char compel_syscall_code[8] = {0x0f, 0x05, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc};

/* Whether CRIU holds `pid` (or a process below it) where interrupting or losing CRIU would kill
 * it: traced, with its parasite mapped (compel's memfd), compel's system call written over the first
 * executable page, or a thread in a ptrace stop whose signal CRIU has not collected yet (a trap's
 * SIGTRAP, delivered to a program nobody traces any more). */
/* Why criu_holds last said "held", for the line the dump front writes when its grace runs out. */
static char hold_why[160];

/* Whether anyone traces `pid`. */
static int traced(pid_t pid) { return tracer_of(pid) != 0; }

/* A thread of a traced process in a ptrace stop whose signal its tracer has not collected. */
static int stopped_with_signal(pid_t tid, void *ctx) {
  pid_t pid = *(const pid_t *)ctx;
  char tpath[96], stat[1024];
  snprintf(tpath, sizeof tpath, "/proc/%d/task/%d/stat", (int)pid, (int)tid);
  /* Field 3, the state, ... field 52, exit_code: the signal of a ptrace stop until the tracer
   * collects it (events carry bits above the low byte). */
  char *fields = stat_fields(tpath, stat, sizeof stat);
  if (!fields) return 0;
  char state = 0;
  long code = 0;
  int field = 2;
  for (char *tok = strtok(fields, " "); tok; tok = strtok(NULL, " ")) {
    if (++field == 3) state = tok[0];
    if (field == 52) { code = atol(tok); break; }
  }
  if (state != 't' || code == 0 || (code >> 8) != 0) return 0;
  snprintf(hold_why, sizeof hold_why, "thread %d of pid %d is in a ptrace stop with signal %ld", (int)tid, (int)pid, code);
  return 1;
}

/* Whether CRIU holds `pid` itself where an interruption would kill it (hold_why says how). */
static int criu_holds_process(pid_t pid, void *ctx) {
  (void)ctx;
  char path[64], line[512];
  /* Untraced, nothing of CRIU's can hurt it: a parasite mapping a killed CRIU left behind is inert,
   * and waiting for it to go cost every later timed-out checkpoint the whole grace. */
  if (!traced(pid)) return 0;
  snprintf(path, sizeof path, "/proc/%d/maps", (int)pid);
  FILE *f = fopen(path, "r");
  unsigned long exec_start = 0;
  int held = 0;
  while (f && fgets(line, sizeof line, f)) {
    unsigned long lo, hi;
    char perms[8];
    if (strstr(line, "CRIUMFD")) held = 1;
    if (!exec_start && sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) == 3 && perms[2] == 'x' && hi - lo >= 4096)
      exec_start = lo;
  }
  if (f) fclose(f);
  if (held) {
    snprintf(hold_why, sizeof hold_why, "pid %d maps CRIU's parasite (CRIUMFD)", (int)pid);
    return 1;
  }
  if (exec_start) {
    unsigned char code[sizeof compel_syscall_code];
    snprintf(path, sizeof path, "/proc/%d/mem", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
      held = pread(fd, code, sizeof code, (off_t)exec_start) == (ssize_t)sizeof code &&
             !memcmp(code, compel_syscall_code, sizeof code);
      close(fd);
      if (held) {
        snprintf(hold_why, sizeof hold_why, "pid %d has compel's system call at 0x%lx", (int)pid, exec_start);
        return 1;
      }
    }
  }
  return each_thread(pid, stopped_with_signal, &pid);
}

/* The same for `pid` and every process below it, which CRIU dumps too. */
static int criu_holds(pid_t pid) { return walk_tree(pid, criu_holds_process, NULL); }

/* Stops CRIU and, if it holds nothing of the program where an interruption would kill it, leaves
 * SIGALRM pending for it and lets it go on: its dump then fails and puts the program back. */
static int interrupt_if_safe(pid_t criu, pid_t pid) {
  if (kill(criu, SIGSTOP) < 0) return 0;
  /* Stopped for sure before looking: what it holds cannot change meanwhile. */
  for (int i = 0; i < 50; i++) {
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)criu);
    char *fields = stat_fields(path, buf, sizeof buf);
    if (!fields || fields[0] == 'T' || fields[0] == 't' || fields[0] == 'Z') break;
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
  int safe = !criu_holds(pid);
  if (safe) kill(criu, SIGALRM);
  kill(criu, SIGCONT);
  return safe;
}

/* The longest a checkpoint() waits for its packing worker to load before the program blocks. */
#define WORKER_READY_MS 3000

/*
 * Until the packing worker (checkpoint()) has loaded: it says so on its end of `fd`, or closes it
 * by ending. Bounded by WORKER_READY_MS and half of `left`: a slow worker lengthens the pause, it
 * never fails the checkpoint.
 */
static void wait_worker_ready(int fd, long left) {
  long bound = left / 2 < WORKER_READY_MS ? left / 2 : WORKER_READY_MS;
  long until = now_ms() + bound;
  for (;;) {
    long wait = until - now_ms();
    if (wait <= 0) return;
    struct pollfd p = {fd, POLLIN, 0};
    int n = poll(&p, 1, (int)wait);
    if (n < 0 && errno == EINTR) continue;
    return;
  }
}

/*
 * How CRIU ended ("criu STATUS MS", "timeout MS", "blocked WHY"): a line on the worker's pipe, or,
 * with no worker (go = -1), a message on the control FIFO (fd 3) to the program, which packs.
 */
static void say_end(int go, const char *word) {
  char line[192];
  int n = go >= 0 ? snprintf(line, sizeof line, "%s\n", word)
                  : snprintf(line, sizeof line, "{\"t\":\"front\",\"said\":\"%s\"}\n", word);
  if (write(go >= 0 ? go : 3, line, (size_t)n) < 0) { /* the reader is gone: nobody to tell */ }
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st; (void)flag; (void)ftw;
  if (remove(path) < 0) { /* what cannot go stays for the next sweep (staging.ts) */ }
  return 0;
}

/* How often the front looks whether a program packing its own file is done, or gone. */
#define TIDY_POLL_MS 50

static int unlock_table(const char *table);

/* Removes the lock table of this dump's CRIU (`inet CRIU-<run id>`, its name cut as nftables cuts
 * it, src/engine/netlock.ts), if it made one. */
static void drop_run_lock(void) {
  const char *id = getenv("CHECKPT_CRIU_RUN_ID");
  if (!id || !*id) return;
  char table[64];
  snprintf(table, sizeof table, "inet CRIU-%s", id);
  table[31] = '\0';
  if (unlock_table(table) == 1) fprintf(stderr, "checkpt: could not remove the network lock %s of the ended CRIU\n", table);
}

/* Waits for child `child` to end, at most `bound_ms`. */
static void wait_child(pid_t child, long bound_ms) {
  long until = now_ms() + bound_ms;
  while (child > 0) {
    pid_t w = waitpid(child, NULL, WNOHANG);
    if (w == child || (w < 0 && errno != EINTR) || now_ms() >= until) return;
    poll(NULL, 0, 20);
  }
}

/*
 * A program that packs its own file (no worker) may die before it is done: then the front removes
 * what it left, the staging directory `work` (only a checkpt-dump-* one) and the temporary file
 * `tmp` (a file already renamed into place stays). Done is the program removing its control FIFO;
 * the front looks until then, the program's end, or `bound_ms`. With neither (a worker's dump whose
 * program died), only the control FIFO and its directory go.
 */
static void tidy_after(pid_t pid, int pidfd, const char *fifo, const struct stat *fifo_st,
                       const char *work, const char *tmp, long bound_ms) {
  long until = now_ms() + bound_ms;
  for (;;) {
    struct stat st;
    if (stat(fifo, &st) < 0 || st.st_ino != fifo_st->st_ino || st.st_dev != fifo_st->st_dev) return;
    int gone;
    if (pidfd >= 0) {
      struct pollfd p = {pidfd, POLLIN, 0};
      gone = poll(&p, 1, TIDY_POLL_MS) == 1;
    } else {
      gone = kill(pid, 0) < 0 && errno == ESRCH;
      if (!gone) poll(NULL, 0, TIDY_POLL_MS);
    }
    if (gone) break;
    if (now_ms() >= until) return;
  }
  if (tmp && unlink(tmp) < 0) { /* never made, or already in place */ }
  char copy[PATH_MAX];
  if (work && snprintf(copy, sizeof copy, "%s", work) < (int)sizeof copy &&
      !strncmp(basename(copy), "checkpt-dump-", 13))
    nftw(work, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
  /* And its channel, which staging.ts would otherwise sweep at the next checkpoint. */
  if (unlink(fifo) == 0 && snprintf(copy, sizeof copy, "%s", fifo) < (int)sizeof copy)
    rmdir(dirname(copy));
}

/*
 * checkpt-helper dump --pid P --fifo PATH --timeout-ms N [--async]
 *                    [--post-dump-sock PATH --post-dump-timeout-ms N]
 *                    [--worker NODE SCRIPT JOB | --work-dir DIR --tmp FILE] -- CRIU dump ARGS...
 * The front of a checkpoint, started by the program itself (it detaches from the program's tree at
 * once). The packing worker (Node) starts loading right away, in parallel. Without --worker
 * (checkpt() of a plain file: the program packs it itself) there is none, and the last word goes
 * on the FIFO as {"t":"front","said":"..."}; should the program die before it is done, the front
 * removes its --work-dir and --tmp (tidy_after). CRIU runs as `criu
 * swrk` and gets one DUMP request with what ARGS say (dump_opts_from_argv); without --async, only
 * once the program blocks on its control FIFO. The front answers CRIU's notifications itself:
 * "pre-dump" (--async: the program runs on through CRIU's start-up) writes {"t":"freeze"} on fd 3,
 * the FIFO, once the worker has loaded (it closes its --ready-fd: Node's start beside a frozen
 * program lengthened its pause), and answers once the program blocks there; "post-dump" with
 * --async writes "dumped" (the images are complete: the program reads it the moment CRIU lets it
 * go), and with --post-dump-sock asks checkpt whether the file is durable (checkpoint and exit).
 * Then it tells the worker how CRIU ended ("criu STATUS MS", "timeout MS", "died PID MS" or
 * "blocked WHY") on a pipe. While CRIU runs it looks every 250 ms whether the program lies dead in
 * CRIU's hands (criu_to_end: CRIU is killed, and its lock table and the program's channel removed
 * for the dead program) or a process below it does (dead_below: the dump is stopped as at the
 * deadline, and the end word is "died").
 * --timeout-ms is one deadline for all of it, from the front's start: waiting for the program to
 * block, CRIU's pre-dump step and CRIU's run share it; CRIU is killed when it passes.
 */
static int cmd_dump(int argc, char **argv) {
  pid_t pid = 0;
  int async = 0, i;
  long timeout = 0; /* checkpt always gives it: its default lives in src/common/config.ts */
  long post_dump_ms = 0;
  char *node = NULL, *script = NULL, *job = NULL, *fifo = NULL, *post_dump_sock = NULL;
  char *work = NULL, *tmp = NULL;
  for (i = 0; i < argc; i++) {
    if (!strcmp(argv[i], "--")) { i++; break; }
    if (!strcmp(argv[i], "--async")) { async = 1; continue; }
    if (!strcmp(argv[i], "--worker") && i + 3 < argc) {
      node = argv[++i]; script = argv[++i]; job = argv[++i];
      continue;
    }
    if (i + 1 >= argc) { fprintf(stderr, "checkpt-helper dump: %s needs a value\n", argv[i]); return EXIT_USAGE; }
    if (!strcmp(argv[i], "--pid")) pid = (pid_t)atoi(argv[++i]);
    else if (!strcmp(argv[i], "--timeout-ms")) timeout = atol(argv[++i]);
    else if (!strcmp(argv[i], "--fifo")) fifo = argv[++i];
    else if (!strcmp(argv[i], "--post-dump-sock")) post_dump_sock = argv[++i];
    else if (!strcmp(argv[i], "--post-dump-timeout-ms")) post_dump_ms = atol(argv[++i]);
    else if (!strcmp(argv[i], "--work-dir")) work = argv[++i];
    else if (!strcmp(argv[i], "--tmp")) tmp = argv[++i];
    else { fprintf(stderr, "checkpt-helper dump: unknown option %s\n", argv[i]); return EXIT_USAGE; }
  }
  /* Only a program that waits for the whole checkpoint can pack the file itself. */
  int self = !node;
  if (pid <= 0 || !fifo || timeout <= 0 || i >= argc || (post_dump_sock && post_dump_ms <= 0) ||
      (self && (async || post_dump_sock)) || (!self && (work || tmp))) {
    fprintf(stderr, "usage: checkpt-helper dump --pid P --fifo PATH --timeout-ms MS [--async] [--post-dump-sock PATH --post-dump-timeout-ms MS] [--worker NODE SCRIPT JOB] -- criu dump ...\n"
                    "  (without --worker: neither --async nor --post-dump-sock; --work-dir and --tmp only without it)\n");
    return EXIT_USAGE;
  }
  char **criu_argv = argv + i;
  long deadline = now_ms() + timeout;
  struct rpc_dump_opts opts;
  struct rpc_buf req;
  /* Checked before anything exists: an option CRIU's RPC cannot carry fails here, not in CRIU. */
  if (dump_opts_from_argv(criu_argv, pid, &opts) < 0) return EXIT_USAGE;
  if (rpc_encode_dump(&req, &opts) < 0) { fprintf(stderr, "checkpt-helper dump: the dump request is too large\n"); return EXIT_USAGE; }
  /* The control FIFO, held open on fd 3 before the program opens its read end (which then never
   * blocks): when this and the worker are gone, the program reads end-of-file, never hangs. */
  if (mkfifo(fifo, 0600) < 0) die("mkfifo");
  int keep = open(fifo, O_RDWR);
  if (keep < 0) die("open the control FIFO");
  if (keep != 3) {
    if (dup2(keep, 3) < 0) die("dup2");
    close(keep);
  }
  struct stat fifo_st;
  if (fstat(3, &fifo_st) < 0) die("fstat the control FIFO");
  /* Out of the program's tree and session, or CRIU would dump us along with it. */
  pid_t d = fork();
  if (d < 0) die("fork");
  if (d > 0) _exit(0);
  setsid();
  signal(SIGPIPE, SIG_IGN);
  /* Before anything can end the program: its pid is then never another's. */
  int prog_pidfd = (int)syscall(SYS_pidfd_open, pid, 0);

  int go[2] = {-1, -1}, ready[2] = {-1, -1};
  if (!self && pipe2(go, O_CLOEXEC) < 0) die("pipe");
  if (async && pipe2(ready, O_CLOEXEC) < 0) die("pipe");
  pid_t worker = self ? 0 : fork();
  if (worker < 0) die("fork worker");
  if (!self && worker == 0) {
    /* checkpoint(): Node's start-up would share the CPU with CRIU while the program is frozen; it
     * packs at this priority anyway (src/common/procfs.ts, lowerPriority). */
    if (async && setpriority(PRIO_PROCESS, 0, 10) < 0) { /* it only costs the pause some time */ }
    char fdarg[16], readyarg[16];
    int r = dup(go[0]), w = async ? dup(ready[1]) : 0; /* the ends the worker keeps */
    if (r < 0 || w < 0) _exit(127);
    snprintf(fdarg, sizeof fdarg, "%d", r);
    snprintf(readyarg, sizeof readyarg, "%d", w);
    char *args[] = {node, script, job, "--go-fd", fdarg, async ? "--ready-fd" : NULL, readyarg, NULL};
    execv(node, args);
    fprintf(stderr, "checkpt-helper: cannot run %s: %s\n", node, strerror(errno));
    _exit(127);
  }
  if (!self) close(go[0]);
  if (async) close(ready[1]);
  char line[128];
  /* With --async the program runs on until CRIU's pre-dump notification tells it to block. */
  int b = async ? 1 : wait_blocked(pid, &fifo_st, deadline - now_ms(), 500);
  if (b != 1) {
    say_end(self ? -1 : go[1], b < 0 ? "blocked vanished" : "blocked timeout");
    if (self) tidy_after(pid, prog_pidfd, fifo, &fifo_st, work, tmp, timeout);
    else if (b < 0) {
      close(go[1]); /* the worker reads it to its end */
      wait_child(worker, timeout);
      tidy_after(pid, prog_pidfd, fifo, &fifo_st, NULL, NULL, timeout);
    }
    return 0;
  }

  /* Made here, by the detached front: CRIU takes its RPC peer's pid from this socket to reach the
   * directories' fds through /proc. */
  int sp[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) < 0) die("socketpair");
  long t0 = now_ms();
  pid_t front = getpid();
  pid_t criu = fork();
  if (criu < 0) die("fork criu");
  if (criu == 0) {
    /* CRIU must not outlive a killed front: the worker, told nothing, would remove the work
     * directory while CRIU still writes into it. SIGALRM, not SIGKILL: CRIU's dump fails on it
     * and takes its parasite out first; killed at one of the parasite's traps, it would take the
     * program with it. Before CRIU sets its handler, SIGALRM ends it as SIGKILL would. */
    if (prctl(PR_SET_PDEATHSIG, SIGALRM) < 0 || getppid() != front) _exit(128 + SIGALRM);
    close(3);
    int fd = dup(sp[1]); /* without FD_CLOEXEC: CRIU's end */
    if (fd < 0) _exit(127);
    char fdarg[16];
    snprintf(fdarg, sizeof fdarg, "%d", fd);
    execlp(criu_argv[0], criu_argv[0], "swrk", fdarg, (char *)NULL);
    fprintf(stderr, "checkpt-helper: cannot run %s: %s\n", criu_argv[0], strerror(errno));
    _exit(127);
  }
  close(sp[1]);
  int sk = sp[0];
  /* CRIU's exit wakes the loop; before Linux 5.3 (no pidfd) the loop looks every 10 ms. */
  int criu_pidfd = (int)syscall(SYS_pidfd_open, criu, 0), reaped = 0;
  /* Into the socket's buffer: CRIU reads it once it has started. */
  int sk_open = rpc_send(sk, &req) == 0;
  int st = 0, told = !async, timed_out = 0, killed = 0, answered = 0, dumped_ok = 0;
  /* Past the deadline, looking for a moment to interrupt CRIU, until hold_until. */
  int holding = 0;
  long kill_at = deadline, hold_until = 0;
  /* The program, and the processes below it, as seen dead in CRIU's hands. */
  struct dead_watch prog_watch = {0, 0}, child_watch = {0, 0};
  /* The program died while CRIU held it, and this front ended that CRIU (criu_to_end). */
  int died_held = 0;
  /* The process below the program whose death in CRIU's hands stopped the checkpoint. */
  pid_t child_died = 0;
  static uint8_t msg[RPC_MAX_MSG];
  for (;;) {
    if (!killed && now_ms() >= kill_at) {
      if (!timed_out && !reaped) {
        /* Killed now, CRIU could leave its parasite in the program, which then dies of its trap
         * (SIGTRAP). Interrupted (SIGALRM), its dump fails and puts the program back, but only
         * where it holds no thread at a trap: an interrupted wait for one leaves it due. So CRIU
         * (stopped by a fault, perhaps) goes on until such a moment, or a notification, refused. */
        kill(criu, SIGCONT);
        timed_out = holding = 1;
        hold_until = now_ms() + HOLD_GRACE_MS;
      }
      if (holding && !reaped) {
        /* Too long: interrupted wherever it is, as a last resort. */
        int late = now_ms() >= hold_until;
        if (late) {
          kill(criu, SIGALRM);
          /* Rare, and worth knowing why: said on the program's stderr, where the front's goes. */
          fprintf(stderr, "checkpt: CRIU still held the program %d ms past the checkpoint's deadline (%s); interrupted anyway\n",
                  HOLD_GRACE_MS, hold_why[0] ? hold_why : "no reason recorded");
        }
        if (late || interrupt_if_safe(criu, pid)) {
          holding = 0;
          kill_at = now_ms() + INTERRUPT_GRACE_MS;
        } else {
          kill_at = now_ms() + 5;
        }
        continue;
      }
      if (!reaped) kill(criu, SIGKILL); /* never a pid reaped and reused */
      killed = timed_out = 1;
    }
    long left = kill_at - now_ms();
    /* At most 250 ms: the program may die in CRIU's hands, its parent unable to reap it. */
    int wait_ms = killed ? 60000 : (int)(left < 0 ? 0 : left > 250 ? 250 : left);
    if (criu_pidfd < 0 && wait_ms > 10) wait_ms = 10;
    struct pollfd p[2] = {{sk_open ? sk : -1, POLLIN, 0}, {criu_pidfd, POLLIN, 0}};
    int n = poll(p, 2, wait_ms);
    if (n < 0 && errno != EINTR) die("poll");
    if (n == 0 && !killed && !reaped && criu_to_end(pid, criu, &prog_watch)) {
      kill(criu, SIGKILL);
      killed = died_held = 1;
      continue;
    }
    /* A process of the program's, not the first, dead in CRIU's hands: the program lives, so CRIU
     * is interrupted where that spares it, as at the deadline, and the failure says who died. */
    if (n == 0 && !killed && !reaped && !timed_out) {
      pid_t dead = dead_below(pid, criu);
      if (dead_for_long(&child_watch, dead)) {
        fprintf(stderr, "checkpt: process %d of the program died while CRIU (pid %d) checkpointed it, and CRIU held on to it for %d ms: stopping the checkpoint\n", (int)dead, (int)criu, DEAD_HELD_MS);
        child_died = dead;
        kill_at = now_ms();
        continue;
      }
    }
    if (criu_pidfd < 0 && !reaped && waitpid(criu, &st, WNOHANG) == criu) reaped = 1;
    if (n <= 0 && !reaped) continue;
    /* A message CRIU sent just before it exited is still read. */
    if (sk_open && (p[0].revents & (POLLIN | POLLHUP | POLLERR))) {
      ssize_t len = rpc_recv(sk, msg, sizeof msg);
      if (len <= 0) {
        sk_open = 0;
        if (len < 0 && !killed) { if (!reaped) kill(criu, SIGKILL); killed = 1; }
        continue;
      }
      struct rpc_resp r;
      const char *why;
      if (rpc_decode_resp(msg, (size_t)len, &r, &why) < 0) {
        fprintf(stderr, "checkpt-helper: Error (rpc): CRIU sent a malformed message (%s); CRIU was stopped\n", why);
        if (!reaped) kill(criu, SIGKILL);
        killed = 1;
        sk_open = 0;
        continue;
      }
      if (r.type == RPC_DUMP) {
        answered = 1;
        dumped_ok = r.success;
        continue;
      }
      if (r.type != RPC_NOTIFY) {
        /* send_criu_err: CRIU refused the request itself (its log says why). */
        fprintf(stderr, "checkpt-helper: Error (rpc): CRIU refused the dump request%s%s\n", r.errmsg[0] ? ": " : "", r.errmsg);
        continue;
      }
      int ok = !timed_out;
      if (timed_out) {
        /* Too late: whatever CRIU asks now is refused, so it rolls back, uninterrupted. */
        if (holding) {
          holding = 0;
          kill_at = now_ms() + ROLLBACK_GRACE_MS;
        }
      } else if (!strcmp(r.script, "pre-dump") && async) {
        /* Only now does the program block on its channel: it ran through CRIU's start-up. */
        const char *freeze = "{\"t\":\"freeze\"}\n";
        /* Node's start beside CRIU while the program is frozen lengthened the pause by half. */
        wait_worker_ready(ready[0], kill_at - now_ms());
        if (write(3, freeze, strlen(freeze)) < 0) ok = 0;
        else {
          int blocked = wait_blocked(pid, &fifo_st, kill_at - now_ms(), 200);
          if (blocked < 0) fprintf(stderr, "checkpt hook: process %d is gone\n", (int)pid);
          if (blocked == 0) fprintf(stderr, "checkpt hook: process %d did not block\n", (int)pid);
          ok = blocked == 1;
        }
      } else if (!strcmp(r.script, "post-dump")) {
        /* The images are complete: the program reads this as soon as CRIU lets it go. */
        if (!told && write(3, DUMPED, strlen(DUMPED)) > 0) told = 1;
        if (post_dump_sock) {
          int v = post_dump_verdict(post_dump_sock, post_dump_ms, kill_at, criu_pidfd);
          if (v < 0 && !killed && now_ms() >= kill_at) {
            /* Refused, not killed: CRIU puts the program and its connections back as they were. */
            timed_out = 1;
            kill_at = now_ms() + ROLLBACK_GRACE_MS;
          }
          ok = v == 1;
        }
      }
      struct rpc_buf reply;
      rpc_encode_notify_reply(&reply, ok);
      if (rpc_send(sk, &reply) < 0) sk_open = 0;
      continue;
    }
    if (reaped || (p[1].revents & POLLIN)) {
      if (sk_open) {
        /* Exited: whatever it sent before is read first, then nothing more will come. */
        struct pollfd q = {sk, POLLIN, 0};
        if (poll(&q, 1, 0) == 1) continue;
      }
      break;
    }
  }
  while (!reaped && waitpid(criu, &st, 0) < 0)
    if (errno != EINTR) die("waitpid criu");
  long ms = now_ms() - t0;
  int status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  if (status == 0 && !(answered && dumped_ok)) {
    fprintf(stderr, "checkpt-helper: Error (rpc): CRIU exited without %s\n", answered ? "dumping (its response said it failed)" : "answering the dump request");
    status = 1;
  }
  int ok = !timed_out && status == 0;
  if (!told && ok) {
    if (write(3, DUMPED, strlen(DUMPED)) < 0) { /* the program is gone */ }
  }
  if (child_died) snprintf(line, sizeof line, "died %d %ld", (int)child_died, ms);
  else if (timed_out) snprintf(line, sizeof line, "timeout %ld", ms);
  else snprintf(line, sizeof line, "criu %d %ld", status, ms);
  /* The killed CRIU's lock table: a living program removes it by its run id (releaseLocksAfter). */
  if (died_held) drop_run_lock();
  say_end(self ? -1 : go[1], line);
  if (self) tidy_after(pid, prog_pidfd, fifo, &fifo_st, work, tmp, timeout);
  else if (died_held) {
    /* The worker reports the failure on the channel, then the channel goes, as the program would. */
    close(go[1]); /* the worker reads it to its end */
    wait_child(worker, timeout);
    tidy_after(pid, prog_pidfd, fifo, &fifo_st, NULL, NULL, timeout);
  }
  return 0;
}

/*
 * CRIU's "post-dump" action script for a checkpoint-and-exit taken from outside (`checkpt run`,
 * src/engine/outside.ts: CRIU runs under nsenter, in the program's namespaces, with
 * CHECKPT_POST_DUMP_SOCK and CHECKPT_POST_DUMP_TIMEOUT_MS set): exits 0 only for checkpt's '1'.
 */
static int cmd_post_dump_script(const char *sock) {
  const char *t = getenv("CHECKPT_POST_DUMP_TIMEOUT_MS");
  /* Failing rolls the dump back: better than guessing how long checkpt meant to wait. */
  if (!t || atol(t) <= 0) { fprintf(stderr, "checkpt hook: CHECKPT_POST_DUMP_TIMEOUT_MS is not set; is the native helper as new as checkpt? Run npm run build.\n"); return 1; }
  /* No deadline of its own: the supervisor's answer or its death (end-of-file) ends the wait. */
  return post_dump_verdict(sock, atol(t), LONG_MAX / 2, -1) == 1 ? 0 : 1;
}

/*
 * checkpt-helper rpc-request --pid P -- CRIU dump ARGS: the DUMP request the front would send for
 * ARGS, in hex on stdout (for the tests); exit 126 with the reason when it would refuse them.
 */
static int cmd_rpc_request(int argc, char **argv) {
  if (argc < 4 || strcmp(argv[0], "--pid") != 0 || strcmp(argv[2], "--") != 0) {
    fprintf(stderr, "usage: checkpt-helper rpc-request --pid P -- criu dump ...\n");
    return EXIT_USAGE;
  }
  struct rpc_dump_opts opts;
  struct rpc_buf req;
  if (dump_opts_from_argv(argv + 3, (pid_t)atoi(argv[1]), &opts) < 0) return EXIT_USAGE;
  if (rpc_encode_dump(&req, &opts) < 0) { fprintf(stderr, "checkpt-helper: the dump request is too large\n"); return EXIT_USAGE; }
  for (size_t k = 0; k < req.len; k++) printf("%02x", req.data[k]);
  printf("\n");
  return 0;
}

/*
 * checkpt-helper rpc-decode: one criu_resp from stdin, decoded as the dump front decodes CRIU's
 * messages (criu-rpc.c), for the tests. Prints "type=N success=N script=S errno=N errmsg=S" and
 * exits 0, or prints "malformed: WHY" and exits 1.
 */
static int cmd_rpc_decode(void) {
  static uint8_t buf[RPC_MAX_MSG + 1];
  size_t len = 0;
  for (;;) {
    ssize_t n = read(0, buf + len, sizeof buf - len);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) die("read");
    if (n == 0) break;
    len += (size_t)n;
    if (len == sizeof buf) break;
  }
  struct rpc_resp r;
  const char *why;
  if (len > RPC_MAX_MSG) why = "the message is larger than any response CRIU sends";
  else if (rpc_decode_resp(buf, len, &r, &why) == 0) {
    printf("type=%d success=%d script=%s errno=%d errmsg=%s\n", r.type, r.success, r.script, r.cr_errno, r.errmsg);
    return 0;
  }
  printf("malformed: %s\n", why);
  return 1;
}

/*
 * checkpt-helper unlock 'inet CRIU-<id>': deletes the nftables table CRIU left locking the
 * connections of a checkpoint-and-exit that will not be resumed, so their peers get a reset
 * instead of silence. libnftables is what CRIU itself links; it is loaded only here, at run time.
 * Exit 0: deleted; 3: no such table; 1: failed (the reason on stderr).
 */
static int cmd_unlock(const char *table) {
  if (strncmp(table, "inet CRIU-", 10) != 0 || strspn(table + 10, "0123456789abcdef-") != strlen(table + 10)) {
    fprintf(stderr, "checkpt-helper unlock: not a CRIU lock table: %s\n", table);
    return EXIT_USAGE;
  }
  return unlock_table(table);
}

/* Deletes nftables table `table`: 0 deleted, 3 no such table, 1 failed (the reason on stderr). */
static int unlock_table(const char *table) {
  void *lib = dlopen("libnftables.so.1", RTLD_NOW);
  if (!lib) { fprintf(stderr, "checkpt-helper unlock: %s\n", dlerror()); return 1; }
  void *(*ctx_new)(unsigned) = (void *(*)(unsigned))dlsym(lib, "nft_ctx_new");
  int (*buffer_error)(void *) = (int (*)(void *))dlsym(lib, "nft_ctx_buffer_error");
  const char *(*error_of)(void *) = (const char *(*)(void *))dlsym(lib, "nft_ctx_get_error_buffer");
  int (*run)(void *, const char *) = (int (*)(void *, const char *))dlsym(lib, "nft_run_cmd_from_buffer");
  if (!ctx_new || !buffer_error || !error_of || !run) { fprintf(stderr, "checkpt-helper unlock: libnftables lacks its API\n"); return 1; }
  void *ctx = ctx_new(0);
  if (!ctx) { fprintf(stderr, "checkpt-helper unlock: nft_ctx_new failed\n"); return 1; }
  buffer_error(ctx);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "delete table %s", table);
  if (run(ctx, cmd) == 0) return 0;
  const char *err = error_of(ctx);
  if (err && strstr(err, "No such file or directory")) return 3;
  fprintf(stderr, "checkpt-helper unlock: %s", err ? err : "failed\n");
  return 1;
}

/*
 * checkpt-helper nft-list: prints the inet family's ruleset as libnftables' JSON, so checkpt can
 * find a lock table a killed CRIU left behind by the connections in it (its name is a random id).
 * Exit 0: printed; 1: failed (the reason on stderr).
 */
static int cmd_nft_list(void) {
  void *lib = dlopen("libnftables.so.1", RTLD_NOW);
  if (!lib) { fprintf(stderr, "checkpt-helper nft-list: %s\n", dlerror()); return 1; }
  void *(*ctx_new)(unsigned) = (void *(*)(unsigned))dlsym(lib, "nft_ctx_new");
  int (*buffer_output)(void *) = (int (*)(void *))dlsym(lib, "nft_ctx_buffer_output");
  int (*buffer_error)(void *) = (int (*)(void *))dlsym(lib, "nft_ctx_buffer_error");
  void (*set_flags)(void *, unsigned) = (void (*)(void *, unsigned))dlsym(lib, "nft_ctx_output_set_flags");
  const char *(*output_of)(void *) = (const char *(*)(void *))dlsym(lib, "nft_ctx_get_output_buffer");
  const char *(*error_of)(void *) = (const char *(*)(void *))dlsym(lib, "nft_ctx_get_error_buffer");
  int (*run)(void *, const char *) = (int (*)(void *, const char *))dlsym(lib, "nft_run_cmd_from_buffer");
  if (!ctx_new || !buffer_output || !buffer_error || !set_flags || !output_of || !error_of || !run) {
    fprintf(stderr, "checkpt-helper nft-list: libnftables lacks its API\n");
    return 1;
  }
  void *ctx = ctx_new(0);
  if (!ctx) { fprintf(stderr, "checkpt-helper nft-list: nft_ctx_new failed\n"); return 1; }
  buffer_output(ctx);
  buffer_error(ctx);
  set_flags(ctx, 1u << 4); /* NFT_CTX_OUTPUT_JSON */
  if (run(ctx, "list ruleset inet") != 0) {
    const char *err = error_of(ctx);
    fprintf(stderr, "checkpt-helper nft-list: %s", err ? err : "failed\n");
    return 1;
  }
  const char *out = output_of(ctx);
  fputs(out ? out : "", stdout);
  return 0;
}

/*
 * checkpt-helper unrepair PID...: takes the TCP sockets of these processes out of repair mode. A
 * CRIU killed mid-dump leaves the connections it had paused in repair mode, where the program's
 * reads fail with EPERM and nothing is sent; CRIU's own rollback would have done this.
 * Prints one line per socket released ("PID FD"); exit 0, or 1 when one could not be examined.
 */
static int cmd_unrepair(int argc, char **argv) {
  int bad = 0;
  for (int i = 0; i < argc; i++) {
    int pid = atoi(argv[i]);
    if (pid <= 0) { fprintf(stderr, "checkpt-helper unrepair: not a pid: %s\n", argv[i]); return EXIT_USAGE; }
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pidfd < 0) { if (errno != ESRCH) bad = 1; continue; }
    char dir[64];
    snprintf(dir, sizeof dir, "/proc/%d/fd", pid);
    DIR *d = opendir(dir);
    if (!d) { close(pidfd); continue; }
    struct dirent *e;
    while ((e = readdir(d))) {
      if (e->d_name[0] == '.') continue;
      char link[320], target[64];
      snprintf(link, sizeof link, "%s/%s", dir, e->d_name);
      ssize_t n = readlink(link, target, sizeof target - 1);
      if (n <= 0) continue;
      target[n] = 0;
      if (strncmp(target, "socket:[", 8) != 0) continue;
      int fd = (int)syscall(SYS_pidfd_getfd, pidfd, atoi(e->d_name), 0);
      if (fd < 0) { bad = 1; continue; }
      int on = 0;
      socklen_t len = sizeof on;
      if (getsockopt(fd, IPPROTO_TCP, TCP_REPAIR, &on, &len) == 0 && on) {
        int off = 0; /* TCP_REPAIR_OFF: the kernel sends a window probe, the peer resumes */
        if (setsockopt(fd, IPPROTO_TCP, TCP_REPAIR, &off, sizeof off) == 0) printf("%d %s\n", pid, e->d_name);
        else bad = 1;
      }
      close(fd);
    }
    closedir(d);
    close(pidfd);
  }
  return bad;
}

int main(int argc, char **argv) { return helper_main(argc, argv); }

int helper_main(int argc, char **argv) {
  /* CRIU runs an action script by its path alone, with the event in its environment. */
  const char *action = getenv("CRTOOLS_SCRIPT_ACTION");
  if (argc == 1 && action) {
    const char *sock = getenv("CHECKPT_POST_DUMP_SOCK");
    if (sock && !strcmp(action, "post-dump")) return cmd_post_dump_script(sock);
    const char *hold = getenv("CHECKPT_HOLD_SOCK");
    if (hold && !strcmp(action, "post-restore")) return cmd_hold_script(hold);
    return 0; /* every other action: nothing to do */
  }
  if (argc >= 3 && !strcmp(argv[1], "front")) return cmd_front(argc - 2, argv + 2);
  if (argc >= 2 && !strcmp(argv[1], "front-sockets")) return cmd_front_sockets(argc - 2, argv + 2);
  if (argc >= 2 && !strcmp(argv[1], "init")) return cmd_init(argc - 2, argv + 2);
  if (argc >= 2 && !strcmp(argv[1], "dump")) return cmd_dump(argc - 2, argv + 2);
  if (argc == 3 && !strcmp(argv[1], "unlock")) return cmd_unlock(argv[2]);
  if (argc == 2 && !strcmp(argv[1], "nft-list")) return cmd_nft_list();
  if (argc >= 3 && !strcmp(argv[1], "unrepair")) return cmd_unrepair(argc - 2, argv + 2);
  if (argc == 2 && !strcmp(argv[1], "rpc-decode")) return cmd_rpc_decode();
  if (argc == 4 && !strcmp(argv[1], "unpack")) return cmd_unpack(argv[2], argv[3]);
  if (argc >= 2 && !strcmp(argv[1], "publish")) return cmd_publish(argc - 2, argv + 2);
  if (argc >= 2 && !strcmp(argv[1], "rpc-request")) return cmd_rpc_request(argc - 2, argv + 2);
  if (argc >= 2 && !strcmp(argv[1], "serve-pages")) {
    int stage_only = 0;
    const char *pagemaps = NULL, *hold = NULL;
    int i = 2, off_cpu = -1;
    for (; i < argc; i++) {
      if (!strcmp(argv[i], "--stage-only")) stage_only = 1;
      else if (!strcmp(argv[i], "--off-cpu") && i + 1 < argc) off_cpu = atoi(argv[++i]);
      else if (!strcmp(argv[i], "--pagemaps") && i + 1 < argc) pagemaps = argv[++i];
      else if (!strcmp(argv[i], "--hold") && i + 1 < argc) hold = argv[++i];
      else break;
    }
    if (i == argc) return cmd_serve_pages(stage_only, pagemaps, hold, off_cpu);
  }
  if (argc >= 2 && !strcmp(argv[1], "--version")) { puts("checkpt-helper 4"); return 0; }
  fprintf(stderr, "usage: checkpt-helper init ... (internal to checkpt)\n");
  return EXIT_USAGE;
}
