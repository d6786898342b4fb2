/* `checkpt-helper front` (native/resume-front.c): `checkpt -r FILE` up to the running copy, without Node. */
#ifndef CHECKPT_RESUME_FRONT_H
#define CHECKPT_RESUME_FRONT_H
int cmd_front(int argc, char **argv);
/* `checkpt-helper front-sockets`: the front's socket check alone, for the tests. */
int cmd_front_sockets(int argc, char **argv);
/* checkpt-helper's main (native/checkpt-helper.c), which the front runs without an exec. */
int helper_main(int argc, char **argv);
/* A line of CHECKPT_BENCH_TRACE (the moments and counts the bench and the tests read). */
void bench_trace(const char *name);
#endif
