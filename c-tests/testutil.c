#include "testutil.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

int under_valgrind(void)
{
    const char *v = getenv("PJWS_UNDER_VALGRIND");
    return v && *v && strcmp(v, "0") != 0;
}

#if defined(__SANITIZE_ADDRESS__)
#define PJWS_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PJWS_ASAN 1
#endif
#endif

int under_asan(void)
{
#ifdef PJWS_ASAN
    return 1;
#else
    return 0;
#endif
}

int tmo(int ms)
{
    return under_valgrind() ? ms * 10 : ms;
}

double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
}

void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

int cond_wait_until(pthread_mutex_t *mu, pthread_cond_t *cv, int (*pred)(void *ctx, void *arg), void *ctx,
                    void *arg, int ms)
{
    struct timespec ts;
    int ok;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(mu);
    while (!(ok = pred(ctx, arg))) {
        if (pthread_cond_timedwait(cv, mu, &ts) == ETIMEDOUT) {
            ok = pred(ctx, arg);
            break;
        }
    }
    pthread_mutex_unlock(mu);
    return ok;
}

long proc_status_field(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    size_t klen = strlen(key);
    long v = -1;
    if (!f)
        return -1;
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, key, klen) == 0 && line[klen] == ':') {
            v = strtol(line + klen + 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    return v;
}

long fd_table_slots(void)
{
    return proc_status_field("FDSize");
}

long fd_table_reserve_want(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return -1;
    return rl.rlim_cur < 1024 ? (long)rl.rlim_cur : 1024;
}

long fd_table_wait(long want, int ms)
{
    double end = now_ms() + ms;
    long n;
    while ((n = fd_table_slots()) < want && now_ms() < end)
        sleep_ms(5);
    return n;
}

int fd_hold_up_to(int fd_min, int *fds, int max)
{
    int n = 0;
    while (n < max) {
        int fd = dup(0);
        if (fd < 0) {
            int e = errno;
            while (n > 0)
                close(fds[--n]);
            errno = e;
            return -1;
        }
        fds[n++] = fd;
        if (fd >= fd_min)
            break;
    }
    return n;
}
