/* Helpers shared by every C test program: the C tests in c-tests/ (through
 * common.h) and tests/pjlib/test_pjlib_driver.c, which is built against
 * pjlib with its own reporter. Nothing here includes a pj header. */
#ifndef PJWS_CTEST_TESTUTIL_H
#define PJWS_CTEST_TESTUTIL_H

#include <pthread.h>

/* 1 when PJWS_UNDER_VALGRIND is set (the runners set it under valgrind). */
int under_valgrind(void);
/* 1 when this program was built with AddressSanitizer: its allocator keeps
 * freed memory in quarantine and mallinfo2() does not see its heap, so
 * memory figures are only meaningful natively. */
int under_asan(void);
/* Scales a timeout for valgrind (x10). */
int tmo(int ms);
double now_ms(void); /* monotonic clock, milliseconds */
void sleep_ms(int ms);

/* The number after "key:" in /proc/self/status (e.g. "VmRSS", "FDSize"),
 * -1 if absent. */
long proc_status_field(const char *key);

/* The descriptor-table cases. Slots in the table (FDSize), -1 if unknown. */
long fd_table_slots(void);
/* The slots the library reserves ahead: min(1024, RLIMIT_NOFILE), -1 if
 * unknown. */
long fd_table_reserve_want(void);
/* FDSize once it reaches `want`, or after `ms` (0: read once). */
long fd_table_wait(long want, int ms);
/* Holds duplicates of descriptor 0 in fds[] (at most max) until one is at
 * least fd_min. Returns how many it holds (close them when done), or -1
 * with errno set (none held) when dup failed. */
int fd_hold_up_to(int fd_min, int *fds, int max);

/* Waits on cv (with mu) until pred(ctx, arg) is true or ms elapsed; pred
 * runs with mu held. Returns pred's last value. */
int cond_wait_until(pthread_mutex_t *mu, pthread_cond_t *cv, int (*pred)(void *ctx, void *arg), void *ctx,
                    void *arg, int ms);

#endif
