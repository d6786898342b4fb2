#ifndef CHECKPT_PUBLISH_H
#define CHECKPT_PUBLISH_H
/* `checkpt-helper publish ADDR:HOSTPORT:PORT...`: forwards host ports into a program's network namespace. */
int cmd_publish(int argc, char **argv);
#endif
