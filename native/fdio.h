/* Small fd helpers shared by the parts of checkpt-helper (defined in native/checkpt-helper.c). */
#ifndef CHECKPT_FDIO_H
#define CHECKPT_FDIO_H
#include <stddef.h>
#include <sys/types.h>
/* Writes all of buf, through EINTR and EAGAIN (a non-blocking fd is polled); 0, or -1. */
int write_all(int fd, const void *buf, size_t n);
/* The fields of a /proc stat file from the third (the state) on, after the command in parentheses,
 * which may hold anything; NULL when the process is gone. */
char *stat_fields(const char *path, char *buf, size_t len);
/* One /proc/PID/NAME file, NUL-terminated, into buf; -1 when the process is gone. */
ssize_t read_proc(pid_t pid, const char *name, char *buf, size_t size);
#endif
