/* `checkpt-helper serve-pages` (native/page-server.c): CRIU's page server for a lazy restore. */
#ifndef CHECKPT_PAGE_SERVER_H
#define CHECKPT_PAGE_SERVER_H
int cmd_serve_pages(int stage_only, const char *pagemaps, const char *hold, int off_cpu);
#endif
