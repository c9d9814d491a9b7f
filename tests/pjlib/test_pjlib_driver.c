/* libpjwebsock against a real pjlib: the "pjlib driver" (instances created
 * with the application's pj_ioqueue_t and pj_timer_heap_t).
 *
 * Built and run by tests/pjlib/run.py against a pjproject build (pjlib
 * headers and libpj) and build/lib/libpjwebsock.so; the peers are
 *   WS_ECHO_URL  ws://127.0.0.1:PORT   tests/servers/ws_server.py
 *   WS_RAW_URL   ws://127.0.0.1:PORT   tests/servers/raw_server.py
 * and PJWS_UNDER_VALGRIND=1 under valgrind (longer timeouts, smaller loads).
 *
 * The application side is what a PJSIP program does: pj_init, a caching
 * pool, an ioqueue and a timer heap polled by two pjlib threads, each
 * looping pj_timer_heap_poll + pj_ioqueue_poll with a 10 ms timeout.
 *
 *   test_pjlib_driver [--list | GROUP...]
 * runs every case, or the groups of cases named by letter (--list prints
 * them in order; tests/pjlib/run.py uses that to go on after a crash).
 *
 * Output: one line per case, "ok - <name>", "not ok - <name>: <why>" or
 * "SKIPPED - <name>: <why>"; "#" lines are diagnostics; the last line is
 * "# <P> passed, <F> failed, <S> skipped". Exit status 0 if no case failed,
 * 1 if some did, 3 when the watchdog stopped a hung case, 4 when instances
 * of a case were never freed (the program cannot go on safely).
 *
 * Include order: pjlib and pjlib-util first (pjlib-util.h brings the
 * upstream <pjlib-util/websock.h>), then libpjwebsock's header: it skips
 * what those declared and adds the extension API.
 */
#include <pjlib.h>
#include <pjlib-util.h>
#include <pjwebsock/websock.h>

#include "testutil.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define NPOLL 2              /* poll threads per loop */
#define MiB ((size_t)1024 * 1024)

/* ------------------------------------------------------------------ */
/* Reporter and watchdog                                               */

typedef struct tcase {
    const char *name;
    int failed;
    int skipped;
    char why[2048];
} tcase;

static int g_passed, g_failed, g_skipped;
static atomic_int g_own_threads;      /* threads this program started and has not joined */

static pthread_mutex_t g_wd_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_wd_cv = PTHREAD_COND_INITIALIZER;
static const char *g_wd_name;
static double g_wd_deadline;
static int g_wd_stop;
static int g_wd_started;
static pthread_t g_wd_thread;
static int g_case_timeout_s = 120;

static void fail_at(tcase *tc, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void fail_at(tcase *tc, const char *file, int line, const char *fmt, ...)
{
    const char *base = strrchr(file, '/');
    size_t used = strlen(tc->why);
    va_list ap;
    if (!tc->failed) {
        tc->why[0] = '\0';
        used = 0;
    }
    tc->failed++;
    if (used + 80 >= sizeof(tc->why))
        return;
    used += (size_t)snprintf(tc->why + used, sizeof(tc->why) - used, "%s%s:%d: ", used ? "; " : "",
                             base ? base + 1 : file, line);
    va_start(ap, fmt);
    vsnprintf(tc->why + used, sizeof(tc->why) - used, fmt, ap);
    va_end(ap);
    for (char *p = tc->why; *p; ++p)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
}

static void skip(tcase *tc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void skip(tcase *tc, const char *fmt, ...)
{
    va_list ap;
    if (tc->failed)
        return;
    tc->skipped = 1;
    va_start(ap, fmt);
    vsnprintf(tc->why, sizeof(tc->why), fmt, ap);
    va_end(ap);
}

#define CHECK(tc, cond, ...)                                  \
    do {                                                      \
        if (!(cond))                                          \
            fail_at((tc), __FILE__, __LINE__, __VA_ARGS__);   \
    } while (0)

/* Like CHECK, but jumps to the case's "out:" label on failure. */
#define REQUIRE(tc, cond, ...)                                \
    do {                                                      \
        if (!(cond)) {                                        \
            fail_at((tc), __FILE__, __LINE__, __VA_ARGS__);   \
            goto out;                                         \
        }                                                     \
    } while (0)

static void *watchdog_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&g_wd_mu);
    while (!g_wd_stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 200 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&g_wd_cv, &g_wd_mu, &ts);
        if (g_wd_name && now_ms() > g_wd_deadline) {
            printf("not ok - %s: watchdog: case still running after %d s (hang?)\n", g_wd_name,
                   g_case_timeout_s);
            printf("# %d passed, %d failed, %d skipped (aborted)\n", g_passed, g_failed + 1, g_skipped);
            fflush(stdout);
            _exit(3);
        }
    }
    pthread_mutex_unlock(&g_wd_mu);
    return NULL;
}

static void run_case(const char *name, void (*fn)(tcase *tc))
{
    tcase tc;
    memset(&tc, 0, sizeof(tc));
    tc.name = name;
    pthread_mutex_lock(&g_wd_mu);
    if (!g_wd_started && pthread_create(&g_wd_thread, NULL, watchdog_main, NULL) == 0) {
        g_wd_started = 1;
        atomic_fetch_add(&g_own_threads, 1);
    }
    g_wd_name = name;
    g_wd_deadline = now_ms() + g_case_timeout_s * 1000.0;
    pthread_mutex_unlock(&g_wd_mu);

    printf("# running %s\n", name);
    fflush(stdout);
    double t0 = now_ms();
    fn(&tc);
    double dt = now_ms() - t0;

    pthread_mutex_lock(&g_wd_mu);
    g_wd_name = NULL;
    pthread_mutex_unlock(&g_wd_mu);

    if (tc.failed) {
        g_failed++;
        printf("not ok - %s: %s\n", name, tc.why[0] ? tc.why : "failed");
    } else if (tc.skipped) {
        g_skipped++;
        printf("SKIPPED - %s: %s\n", name, tc.why[0] ? tc.why : "skipped");
    } else {
        g_passed++;
        printf("ok - %s\n", name);
    }
    printf("#   (%.0f ms)\n", dt);
    fflush(stdout);
}

static int report_done(void)
{
    pthread_mutex_lock(&g_wd_mu);
    g_wd_stop = 1;
    pthread_cond_broadcast(&g_wd_cv);
    int started = g_wd_started;
    g_wd_started = 0;
    pthread_mutex_unlock(&g_wd_mu);
    if (started) {
        pthread_join(g_wd_thread, NULL);
        atomic_fetch_sub(&g_own_threads, 1);
    }
    printf("# %d passed, %d failed, %d skipped\n", g_passed, g_failed, g_skipped);
    fflush(stdout);
    return g_failed ? 1 : 0;
}

/* ------------------------------------------------------------------ */
/* Small helpers                                                       */

static pj_caching_pool g_cp;
static pj_pool_factory *g_pf;
static char g_echo_url[256];     /* WS_ECHO_URL */
static char g_raw_url[256];      /* WS_RAW_URL */

static const char *st(pj_status_t status)
{
    static __thread char bufs[8][200];
    static __thread unsigned idx;
    char *out = bufs[idx++ % 8];
    char text[160];
    pj_str_t s = pj_websock_strerror(status, text, sizeof(text));
    int n = (s.ptr && s.slen > 0) ? (int)s.slen : 0;
    snprintf(out, 200, "%d (%.*s)", status, n, s.ptr ? s.ptr : "");
    return out;
}

static pj_str_t cstr(const char *s)
{
    pj_str_t r;
    r.ptr = (char *)s;
    r.slen = s ? (pj_ssize_t)strlen(s) : 0;
    return r;
}

/* byte i = ((i + off) * 7) % 251, as tests/servers' pattern() */
static void pat_fill(unsigned char *p, size_t len, size_t off)
{
    unsigned v = (unsigned)((off % 251) * 7 % 251);
    for (size_t i = 0; i < len; ++i) {
        p[i] = (unsigned char)v;
        v += 7;
        if (v >= 251)
            v -= 251;
    }
}

/* printable ASCII for TEXT messages */
static void pat_fill_text(unsigned char *p, size_t len, size_t off)
{
    for (size_t i = 0; i < len; ++i)
        p[i] = (unsigned char)(0x20 + ((i + off) * 7) % 95);
}

/* Busy-waits us microseconds (widens the window in which overlapping
 * callbacks would be caught; it decides nothing by itself). */
static void spin_us(int us)
{
    double end = now_ms() + us / 1000.0;
    while (now_ms() < end) {
    }
}

static const char *thread_desc(char *buf, size_t size)
{
    char name[32] = "?";
    pthread_getname_np(pthread_self(), name, sizeof(name));
    snprintf(buf, size, "'%s' (tid %ld)", name, (long)gettid());
    return buf;
}

/* Number of threads of this process, and their names. */
static int count_tasks(char *names, size_t size)
{
    DIR *d = opendir("/proc/self/task");
    struct dirent *e;
    int n = 0;
    size_t used = 0;
    if (names && size)
        names[0] = '\0';
    if (!d)
        return -1;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        n++;
        if (names) {
            char path[300], comm[64] = "?";
            snprintf(path, sizeof(path), "/proc/self/task/%s/comm", e->d_name);
            FILE *f = fopen(path, "r");
            if (f) {
                if (fgets(comm, sizeof(comm), f))
                    comm[strcspn(comm, "\n")] = '\0';
                fclose(f);
            }
            if (used + 80 < size)
                used += (size_t)snprintf(names + used, size - used, "%s%s[%s]", used ? ", " : "", comm,
                                         e->d_name);
        }
    }
    closedir(d);
    return n;
}

/* Pools of the caching pool in use, and the bytes used in them. */
typedef struct pool_stat {
    unsigned long count;
    unsigned long used;
    unsigned long listed;
} pool_stat;

static pool_stat pools_now(void)
{
    pool_stat s;
    pj_lock_acquire(g_cp.lock);
    s.count = (unsigned long)g_cp.used_count;
    s.used = 0;
    s.listed = 0;
    for (pj_pool_t *p = (pj_pool_t *)g_cp.used_list.next; (void *)p != (void *)&g_cp.used_list;
         p = p->next) {
        s.used += (unsigned long)pj_pool_get_used_size(p);
        s.listed++;
    }
    pj_lock_release(g_cp.lock);
    return s;
}

/* ------------------------------------------------------------------ */
/* The application's event loop: ioqueue + timer heap + poll threads   */

typedef struct loop {
    pj_pool_t *pool;
    pj_ioqueue_t *ioq;
    pj_timer_heap_t *th;
    pj_thread_t *thr[NPOLL];
    pthread_t tid[NPOLL];
    pj_thread_t *pjself[NPOLL];
    atomic_int next_idx;
    atomic_int started;
    atomic_int quit;
    struct loop *next_active;
} loop;

static pthread_mutex_t g_loops_mu = PTHREAD_MUTEX_INITIALIZER;
static loop *g_loops;           /* active loops */

static int poll_main(void *arg)
{
    loop *L = arg;
    int i = atomic_fetch_add(&L->next_idx, 1);
    L->tid[i] = pthread_self();
    L->pjself[i] = pj_thread_this();
    atomic_fetch_add(&L->started, 1);
    while (!atomic_load(&L->quit)) {
        pj_time_val t = {0, 10};
        pj_timer_heap_poll(L->th, NULL);
        pj_ioqueue_poll(L->ioq, &t);
    }
    return 0;
}

static int loop_start(tcase *tc, loop *L, pj_size_t max_handles)
{
    pj_status_t rc;
    memset(L, 0, sizeof(*L));
    L->pool = pj_pool_create(g_pf, "testloop", 4000, 4000, NULL);
    if (!L->pool) {
        fail_at(tc, __FILE__, __LINE__, "pj_pool_create failed");
        return 0;
    }
    rc = pj_ioqueue_create(L->pool, max_handles, &L->ioq);
    if (rc != PJ_SUCCESS) {
        fail_at(tc, __FILE__, __LINE__, "pj_ioqueue_create(%lu): %s", (unsigned long)max_handles, st(rc));
        pj_pool_release(L->pool);
        L->pool = NULL;
        return 0;
    }
    rc = pj_timer_heap_create(L->pool, 256, &L->th);
    if (rc != PJ_SUCCESS) {
        fail_at(tc, __FILE__, __LINE__, "pj_timer_heap_create: %s", st(rc));
        pj_ioqueue_destroy(L->ioq);
        pj_pool_release(L->pool);
        L->pool = NULL;
        return 0;
    }
    /* Timers are scheduled from API threads too: the heap needs a lock, as
     * pjsip's endpoint gives its own (pj_timer_heap_set_lock). */
    {
        pj_lock_t *thl;
        rc = pj_lock_create_recursive_mutex(L->pool, "th", &thl);
        if (rc != PJ_SUCCESS) {
            fail_at(tc, __FILE__, __LINE__, "pj_lock_create_recursive_mutex: %s", st(rc));
            pj_timer_heap_destroy(L->th);
            pj_ioqueue_destroy(L->ioq);
            pj_pool_release(L->pool);
            L->pool = NULL;
            return 0;
        }
        pj_timer_heap_set_lock(L->th, thl, PJ_TRUE);
    }
    for (int i = 0; i < NPOLL; ++i) {
        rc = pj_thread_create(L->pool, "poll", &poll_main, L, 0, 0, &L->thr[i]);
        if (rc != PJ_SUCCESS) {
            fail_at(tc, __FILE__, __LINE__, "pj_thread_create: %s", st(rc));
            atomic_store(&L->quit, 1);
            for (int j = 0; j < i; ++j) {
                pj_thread_join(L->thr[j]);
                pj_thread_destroy(L->thr[j]);
                atomic_fetch_sub(&g_own_threads, 1);
            }
            pj_timer_heap_destroy(L->th);
            pj_ioqueue_destroy(L->ioq);
            pj_pool_release(L->pool);
            L->pool = NULL;
            return 0;
        }
        atomic_fetch_add(&g_own_threads, 1);
    }
    double end = now_ms() + 10000;
    while (atomic_load(&L->started) < NPOLL && now_ms() < end)
        sleep_ms(1);
    pthread_mutex_lock(&g_loops_mu);
    L->next_active = g_loops;
    g_loops = L;
    pthread_mutex_unlock(&g_loops_mu);
    return 1;
}

static void loop_stop(loop *L)
{
    if (!L->pool)
        return;
    pthread_mutex_lock(&g_loops_mu);
    for (loop **pp = &g_loops; *pp; pp = &(*pp)->next_active) {
        if (*pp == L) {
            *pp = L->next_active;
            break;
        }
    }
    pthread_mutex_unlock(&g_loops_mu);
    atomic_store(&L->quit, 1);
    for (int i = 0; i < NPOLL; ++i) {
        if (L->thr[i]) {
            pj_thread_join(L->thr[i]);
            pj_thread_destroy(L->thr[i]);
            atomic_fetch_sub(&g_own_threads, 1);
        }
    }
    pj_timer_heap_destroy(L->th);
    pj_ioqueue_destroy(L->ioq);
    pj_pool_release(L->pool);
    L->pool = NULL;
}

/* Index of the calling thread among L's poll threads, or -1. */
static int poll_index(const loop *L)
{
    pthread_t self = pthread_self();
    for (int i = 0; i < NPOLL; ++i)
        if (atomic_load(&((loop *)L)->started) > i && pthread_equal(L->tid[i], self))
            return i;
    return -1;
}

static int on_any_poll_thread(void)
{
    int found = 0;
    pthread_mutex_lock(&g_loops_mu);
    for (loop *L = g_loops; L && !found; L = L->next_active)
        found = poll_index(L) >= 0;
    pthread_mutex_unlock(&g_loops_mu);
    return found;
}

/* ------------------------------------------------------------------ */
/* One WebSocket instance and its callbacks                            */

enum { DESTROY_NONE, DESTROY_IN_CONNECT, DESTROY_IN_RX, DESTROY_IN_CLOSE };
enum { THREADS_ANY = 0, THREADS_POLL = 1, THREADS_NOT_POLL = -1 };

typedef struct msg {
    int op;
    size_t len;
    unsigned char *data;
} msg;

typedef struct inst {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pj_websock *ws;
    loop *L;               /* NULL: the library's own event loop */
    int threads;           /* THREADS_*: where callbacks must run */
    int spin;              /* microseconds spent in each callback */
    int destroy_in;        /* DESTROY_*: destroy from inside that callback */
    int keep;              /* keep copies of received messages */

    atomic_int in_cb;
    atomic_int n_overlap;
    atomic_int n_wrong_thread;
    atomic_int n_unregistered;
    atomic_int n_after_destroy;
    atomic_int destroyed;  /* pj_websock_destroy has returned */
    char wrong_thread[200];

    int n_connect;
    pj_status_t connect_status;
    int n_close;
    unsigned close_code;
    pj_websock_close_info close_info;
    size_t n_rx;
    msg *msgs;
    size_t n_msgs, cap;
    pj_status_t destroy_rc;
    int n_destroy_cb;      /* destroys done from inside a callback */
} inst;

static void inst_init(inst *c, loop *L, int threads)
{
    memset(c, 0, sizeof(*c));
    pthread_mutex_init(&c->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c->cv, &ca);
    pthread_condattr_destroy(&ca);
    c->L = L;
    c->threads = threads;
    c->keep = 1;
}

static void inst_free(inst *c)
{
    for (size_t i = 0; i < c->n_msgs; ++i)
        free(c->msgs[i].data);
    free(c->msgs);
    c->msgs = NULL;
    c->n_msgs = c->cap = 0;
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
}

static void cb_enter(inst *c, const char *what)
{
    if (atomic_load(&c->destroyed))
        atomic_fetch_add(&c->n_after_destroy, 1);
    if (atomic_fetch_add(&c->in_cb, 1) != 0)
        atomic_fetch_add(&c->n_overlap, 1);
    if (c->threads != THREADS_ANY) {
        int bad = 0;
        char td[96], why[200];
        why[0] = '\0';
        if (c->threads == THREADS_POLL) {
            int i = poll_index(c->L);
            if (i < 0) {
                bad = 1;
                snprintf(why, sizeof(why), "%s ran on thread %s, not on a poll thread", what,
                         thread_desc(td, sizeof(td)));
            } else if (!pj_thread_is_registered() || pj_thread_this() != c->L->pjself[i]) {
                bad = 1;
                snprintf(why, sizeof(why), "%s: pj_thread_this() is not the poll thread's", what);
            }
        } else if (on_any_poll_thread()) {
            bad = 1;
            snprintf(why, sizeof(why), "%s ran on a poll thread %s (own event loop expected)", what,
                     thread_desc(td, sizeof(td)));
        }
        if (bad && atomic_fetch_add(&c->n_wrong_thread, 1) == 0) {
            pthread_mutex_lock(&c->mu);
            snprintf(c->wrong_thread, sizeof(c->wrong_thread), "%s", why);
            pthread_mutex_unlock(&c->mu);
        }
    }
    /* callbacks may call pjlib: the thread must be known to pjlib */
    if (!pj_thread_is_registered())
        atomic_fetch_add(&c->n_unregistered, 1);
}

static void cb_leave(inst *c)
{
    if (c->spin)
        spin_us(c->spin);
    atomic_fetch_sub(&c->in_cb, 1);
}

static void do_destroy_in_cb(inst *c, pj_websock *ws)
{
    pj_status_t rc = pj_websock_destroy(ws);
    pthread_mutex_lock(&c->mu);
    c->destroy_rc = rc;
    c->n_destroy_cb++;
    atomic_store(&c->destroyed, 1);
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

static void on_connect(pj_websock *ws, pj_status_t status)
{
    inst *c = pj_websock_get_user_data(ws);
    cb_enter(c, "on_connect");
    pthread_mutex_lock(&c->mu);
    c->n_connect++;
    c->connect_status = status;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    if (c->destroy_in == DESTROY_IN_CONNECT)
        do_destroy_in_cb(c, ws);
    cb_leave(c);
}

static void on_rx_msg(pj_websock *ws, pj_websock_opcode op, const void *data, pj_size_t len)
{
    inst *c = pj_websock_get_user_data(ws);
    unsigned char *copy = NULL;
    cb_enter(c, "on_rx_msg");
    if (c->keep) {
        copy = malloc(len + 1);
        if (!copy)
            abort();
        if (len)
            memcpy(copy, data, len);
        copy[len] = '\0';
    }
    pthread_mutex_lock(&c->mu);
    if (c->keep) {
        if (c->n_msgs == c->cap) {
            size_t cap = c->cap ? c->cap * 2 : 16;
            msg *m = realloc(c->msgs, cap * sizeof(*m));
            if (!m)
                abort();
            c->msgs = m;
            c->cap = cap;
        }
        c->msgs[c->n_msgs].op = (int)op;
        c->msgs[c->n_msgs].len = len;
        c->msgs[c->n_msgs].data = copy;
        c->n_msgs++;
    }
    c->n_rx++;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    if (c->destroy_in == DESTROY_IN_RX && !atomic_load(&c->destroyed))
        do_destroy_in_cb(c, ws);
    cb_leave(c);
}

static void on_close(pj_websock *ws, pj_uint16_t code, const pj_str_t *reason)
{
    inst *c = pj_websock_get_user_data(ws);
    pj_websock_close_info info;
    (void)reason;
    cb_enter(c, "on_close");
    memset(&info, 0, sizeof(info));
    pj_websock_get_close_info(ws, &info);
    pthread_mutex_lock(&c->mu);
    c->n_close++;
    c->close_code = code;
    c->close_info = info;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    if (c->destroy_in == DESTROY_IN_CLOSE)
        do_destroy_in_cb(c, ws);
    cb_leave(c);
}

static void inst_param(inst *c, pj_websock_param *p)
{
    pj_websock_param_default(p);
    p->ioqueue = c->L ? c->L->ioq : NULL;
    p->timer_heap = c->L ? c->L->th : NULL;
    p->cb.on_connect = &on_connect;
    p->cb.on_rx_msg = &on_rx_msg;
    p->cb.on_close = &on_close;
    p->user_data = c;
    p->ping_interval = 0;   /* cases that want pings set them */
}

/* pj_websock_create with the instance's loop (p may be NULL for defaults). */
static pj_status_t inst_create(inst *c, pj_pool_t *pool, const pj_websock_param *p)
{
    pj_websock_param def;
    if (!p) {
        inst_param(c, &def);
        p = &def;
    }
    c->ws = NULL;
    return pj_websock_create(pool, p, &c->ws);
}

/* Predicates for cond_wait_until (testutil.h); ctx is the inst. */
static int inst_wait(inst *c, int (*pred)(void *c, void *arg), void *arg, int ms)
{
    return cond_wait_until(&c->mu, &c->cv, pred, c, arg, ms);
}

static int p_connect(void *ctx, void *a)
{
    const inst *c = ctx;
    (void)a;
    return c->n_connect > 0;
}

static int p_close(void *ctx, void *a)
{
    const inst *c = ctx;
    (void)a;
    return c->n_close > 0;
}

static int p_rx(void *ctx, void *a)
{
    const inst *c = ctx;
    return c->n_rx >= *(size_t *)a;
}

static int p_destroyed(void *ctx, void *a)
{
    const inst *c = ctx;
    (void)a;
    return atomic_load(&c->destroyed);
}

static int wait_connect(inst *c, int ms) { return inst_wait(c, p_connect, NULL, ms); }
static int wait_close(inst *c, int ms) { return inst_wait(c, p_close, NULL, ms); }
static int wait_rx(inst *c, size_t n, int ms) { return inst_wait(c, p_rx, &n, ms); }

static int inst_connect(tcase *tc, inst *c, const char *url)
{
    pj_str_t u = cstr(url);
    pj_status_t rc = pj_websock_connect(c->ws, &u, NULL);
    if (rc != PJ_SUCCESS) {
        fail_at(tc, __FILE__, __LINE__, "pj_websock_connect(%s): %s", url, st(rc));
        return 0;
    }
    return 1;
}

/* create (unless created) + connect + wait for on_connect(PJ_SUCCESS) */
static int inst_open(tcase *tc, inst *c, pj_pool_t *pool, const char *url)
{
    pj_status_t rc;
    if (!c->ws) {
        rc = inst_create(c, pool, NULL);
        if (rc != PJ_SUCCESS) {
            fail_at(tc, __FILE__, __LINE__, "pj_websock_create: %s", st(rc));
            return 0;
        }
    }
    if (!inst_connect(tc, c, url))
        return 0;
    if (!wait_connect(c, tmo(15000))) {
        fail_at(tc, __FILE__, __LINE__, "no on_connect within %d ms (%s)", tmo(15000), url);
        return 0;
    }
    if (c->connect_status != PJ_SUCCESS) {
        fail_at(tc, __FILE__, __LINE__, "on_connect(%s): %s", url, st(c->connect_status));
        return 0;
    }
    return 1;
}

static int inst_close_wait(tcase *tc, inst *c)
{
    pj_status_t rc = pj_websock_close(c->ws, 1000, NULL);
    if (rc != PJ_SUCCESS) {
        fail_at(tc, __FILE__, __LINE__, "pj_websock_close: %s", st(rc));
        return 0;
    }
    if (!wait_close(c, tmo(15000))) {
        fail_at(tc, __FILE__, __LINE__, "no on_close within %d ms after pj_websock_close", tmo(15000));
        return 0;
    }
    return 1;
}

static void inst_destroy(inst *c)
{
    if (c->ws && !atomic_load(&c->destroyed)) {
        c->destroy_rc = pj_websock_destroy(c->ws);
        atomic_store(&c->destroyed, 1);
    }
}

/* Sends len bytes (TEXT: printable pattern, BIN: byte pattern) and checks
 * the echo byte for byte. */
static int echo_check(tcase *tc, inst *c, pj_websock_opcode op, size_t len, size_t off)
{
    unsigned char *buf = malloc(len ? len : 1);
    size_t n;
    msg m;
    int ok = 0;
    if (!buf)
        abort();
    if (op == PJ_WEBSOCK_OP_TEXT)
        pat_fill_text(buf, len, off);
    else
        pat_fill(buf, len, off);
    pthread_mutex_lock(&c->mu);
    n = c->n_rx;
    pthread_mutex_unlock(&c->mu);
    pj_status_t rc = pj_websock_send(c->ws, op, buf, len);
    if (rc != PJ_SUCCESS) {
        fail_at(tc, __FILE__, __LINE__, "send %s %zu bytes: %s", op == PJ_WEBSOCK_OP_TEXT ? "text" : "bin", len,
                st(rc));
        goto out;
    }
    if (!wait_rx(c, n + 1, tmo(30000))) {
        fail_at(tc, __FILE__, __LINE__, "no echo of %s %zu bytes within %d ms", op == PJ_WEBSOCK_OP_TEXT ? "text" : "bin",
                len, tmo(30000));
        goto out;
    }
    pthread_mutex_lock(&c->mu);
    m = c->msgs[n];
    pthread_mutex_unlock(&c->mu);
    if (m.op != (int)op || m.len != len) {
        fail_at(tc, __FILE__, __LINE__, "echo of %s %zu bytes came back as opcode %d, %zu bytes",
                op == PJ_WEBSOCK_OP_TEXT ? "text" : "bin", len, m.op, m.len);
        goto out;
    }
    if (len && memcmp(m.data, buf, len) != 0) {
        size_t i = 0;
        while (i < len && m.data[i] == buf[i])
            i++;
        fail_at(tc, __FILE__, __LINE__, "echo of %s %zu bytes differs at byte %zu",
                op == PJ_WEBSOCK_OP_TEXT ? "text" : "bin", len, i);
        goto out;
    }
    ok = 1;
out:
    free(buf);
    /* drop the copy: large messages add up */
    pthread_mutex_lock(&c->mu);
    if (n < c->n_msgs) {
        free(c->msgs[n].data);
        c->msgs[n].data = NULL;
    }
    pthread_mutex_unlock(&c->mu);
    return ok;
}

/* Waits until every instance is completely freed (the library's live
 * count is back to base), which in pjlib mode happens from inside the
 * poll threads once the group lock's last reference goes. */
static int settle(tcase *tc, unsigned base, int ms)
{
    double end = now_ms() + ms;
    unsigned live = pj_websock_get_live_count();
    while (live > base && now_ms() < end) {
        sleep_ms(5);
        live = pj_websock_get_live_count();
    }
    if (live > base) {
        fail_at(tc, __FILE__, __LINE__, "%u instance(s) still not freed %d ms after destroy", live - base, ms);
        /* Their callbacks may still come, into this case's memory and
         * loop: nothing after this is safe. Report and stop here (the
         * runner goes on with the cases after this one). */
        printf("not ok - %s: %s\n", tc->name, tc->why);
        printf("# stopping: instances of this case are still alive\n");
        printf("# %d passed, %d failed, %d skipped (stopped)\n", g_passed, g_failed + 1, g_skipped);
        fflush(stdout);
        _exit(4);
    }
    return 1;
}

/* The per-instance invariants every case checks. */
static void check_inst(tcase *tc, inst *c, const char *label)
{
    int v;
    if ((v = atomic_load(&c->n_overlap)) != 0)
        fail_at(tc, __FILE__, __LINE__, "%s: callbacks overlapped %d time(s)", label, v);
    if ((v = atomic_load(&c->n_after_destroy)) != 0)
        fail_at(tc, __FILE__, __LINE__, "%s: %d callback(s) after pj_websock_destroy returned", label, v);
    if ((v = atomic_load(&c->n_unregistered)) != 0)
        fail_at(tc, __FILE__, __LINE__, "%s: %d callback(s) on a thread not registered with pjlib", label, v);
    if (c->destroy_rc != PJ_SUCCESS)
        fail_at(tc, __FILE__, __LINE__, "%s: pj_websock_destroy: %s", label, st(c->destroy_rc));
}

static void check_threads(tcase *tc, inst *c, const char *label)
{
    int v = atomic_load(&c->n_wrong_thread);
    if (v)
        fail_at(tc, __FILE__, __LINE__, "%s: %d callback(s) on the wrong thread, first: %s", label, v,
                c->wrong_thread);
}

static void url_of(char *buf, size_t size, const char *base, const char *path)
{
    snprintf(buf, size, "%s%s", base, path);
}

/* ------------------------------------------------------------------ */
/* Most cases: one instance, with a loop and a pool of its own         */

typedef struct fixture {
    unsigned base;     /* the library's live count before the case */
    loop L;
    pj_pool_t *pool;   /* the application's pool the instance is created from */
    inst c;
} fixture;

/* Starts f->L (64 handles), creates the pool and initialises f->c on the
 * loop; 0 (the case has failed) if the loop did not start. */
static int fixture_start(tcase *tc, fixture *f, const char *pool_name, int threads)
{
    f->base = pj_websock_get_live_count();
    if (!loop_start(tc, &f->L, 64))
        return 0;
    f->pool = pj_pool_create(g_pf, pool_name, 1000, 1000, NULL);
    inst_init(&f->c, &f->L, threads);
    return 1;
}

/* Destroys the instance (unless a callback did), waits until the library
 * has freed it, and checks the per-instance invariants. */
static void fixture_check(tcase *tc, fixture *f)
{
    inst_destroy(&f->c);
    settle(tc, f->base, tmo(10000));
    check_inst(tc, &f->c, "instance");
}

/* Frees the instance's test state, the pool and the loop. */
static void fixture_free(fixture *f)
{
    inst_free(&f->c);
    pj_pool_release(f->pool);
    loop_stop(&f->L);
}

/* ------------------------------------------------------------------ */
/* a. callbacks on the poll threads, never overlapping                 */

#define A_INST 4
#define A_MSGS 40

static int g_a_done, g_a_threads_bad, g_a_overlap;
static char g_a_threads_why[400], g_a_overlap_why[400];

static void case_a_run(tcase *tc)
{
    loop L;
    inst c[A_INST];
    char url[300];
    int n = 0;
    unsigned base = pj_websock_get_live_count();
    pj_pool_t *pool = NULL;
    if (!loop_start(tc, &L, 64))
        return;
    pool = pj_pool_create(g_pf, "app-a", 1000, 1000, NULL);
    url_of(url, sizeof(url), g_echo_url, "/a");
    for (; n < A_INST; ++n) {
        inst_init(&c[n], &L, THREADS_POLL);
        c[n].spin = 300;
        pj_websock_param p;
        inst_param(&c[n], &p);
        pj_status_t rc = inst_create(&c[n], pool, &p);
        REQUIRE(tc, rc == PJ_SUCCESS, "pj_websock_create: %s", st(rc));
        /* pings every 50 ms: timer callbacks interleave with I/O */
        pj_websock_set_ping_interval_ms(c[n].ws, 50);
    }
    for (int i = 0; i < A_INST; ++i)
        REQUIRE(tc, inst_connect(tc, &c[i], url), "connect");
    for (int i = 0; i < A_INST; ++i) {
        REQUIRE(tc, wait_connect(&c[i], tmo(15000)), "instance %d: no on_connect", i);
        REQUIRE(tc, c[i].connect_status == PJ_SUCCESS, "instance %d: on_connect %s", i,
                st(c[i].connect_status));
    }
    /* bursts from the main thread while the poll threads deliver echoes */
    for (int k = 0; k < A_MSGS; ++k) {
        for (int i = 0; i < A_INST; ++i) {
            unsigned char buf[3000];
            size_t len = (size_t)(1 + (k * 397 + i * 131) % sizeof(buf));
            pat_fill(buf, len, (size_t)k);
            pj_status_t rc = pj_websock_send(c[i].ws, PJ_WEBSOCK_OP_BIN, buf, len);
            REQUIRE(tc, rc == PJ_SUCCESS, "send: %s", st(rc));
        }
    }
    for (int i = 0; i < A_INST; ++i)
        REQUIRE(tc, wait_rx(&c[i], A_MSGS, tmo(20000)), "instance %d: %zu of %d echoes", i, c[i].n_rx, A_MSGS);
    for (int i = 0; i < A_INST; ++i)
        REQUIRE(tc, inst_close_wait(tc, &c[i]), "close");
out:
    for (int i = 0; i < n; ++i)
        inst_destroy(&c[i]);
    settle(tc, base, tmo(10000));
    g_a_threads_bad = g_a_overlap = 0;
    g_a_threads_why[0] = g_a_overlap_why[0] = '\0';
    for (int i = 0; i < n; ++i) {
        int w = atomic_load(&c[i].n_wrong_thread), o = atomic_load(&c[i].n_overlap);
        if (w && !g_a_threads_bad)
            snprintf(g_a_threads_why, sizeof(g_a_threads_why), "instance %d: %d callback(s) off the poll threads, first: %s",
                     i, w, c[i].wrong_thread);
        if (o && !g_a_overlap)
            snprintf(g_a_overlap_why, sizeof(g_a_overlap_why), "instance %d: callbacks overlapped %d time(s)", i, o);
        g_a_threads_bad += w;
        g_a_overlap += o;
        if (atomic_load(&c[i].n_after_destroy))
            fail_at(tc, __FILE__, __LINE__, "instance %d: callback after destroy", i);
        if (atomic_load(&c[i].n_unregistered))
            fail_at(tc, __FILE__, __LINE__, "instance %d: callback on a thread unknown to pjlib", i);
        inst_free(&c[i]);
    }
    if (pool)
        pj_pool_release(pool);
    loop_stop(&L);
    g_a_done = !tc->failed;
}

static void case_a1(tcase *tc)
{
    case_a_run(tc);
    if (tc->failed)
        return;
    CHECK(tc, g_a_threads_bad == 0, "%s", g_a_threads_why);
}

static void case_a2(tcase *tc)
{
    if (!g_a_done) {
        fail_at(tc, __FILE__, __LINE__, "the traffic of a1 did not complete");
        return;
    }
    CHECK(tc, g_a_overlap == 0, "%s", g_a_overlap_why);
}

/* ------------------------------------------------------------------ */
/* b. echo of text and binary messages of many sizes                   */

static void case_b(tcase *tc)
{
    static const size_t sizes[] = {0, 1, 125, 126, 65535, 65536, 1 * MiB, 16 * MiB};
    fixture f;
    inst *c = &f.c;
    char url[300];
    if (!fixture_start(tc, &f, "app-b", THREADS_ANY))
        return;
    pj_websock_param p;
    inst_param(c, &p);
    p.max_rx_msg_size = 17 * MiB;
    pj_status_t rc = inst_create(c, f.pool, &p);
    REQUIRE(tc, rc == PJ_SUCCESS, "pj_websock_create: %s", st(rc));
    url_of(url, sizeof(url), g_echo_url, "/b");
    REQUIRE(tc, inst_open(tc, c, f.pool, url), "open");
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); ++i) {
        if (!echo_check(tc, c, PJ_WEBSOCK_OP_TEXT, sizes[i], i))
            goto out;
        if (!echo_check(tc, c, PJ_WEBSOCK_OP_BIN, sizes[i], i + 3))
            goto out;
    }
    REQUIRE(tc, inst_close_wait(tc, c), "close");
    CHECK(tc, c->close_code == 1000, "on_close code %u, want 1000", c->close_code);
out:
    fixture_check(tc, &f);
    fixture_free(&f);
}

/* ------------------------------------------------------------------ */
/* c. many concurrent connections on one (epoll) ioqueue               */

static void case_c(tcase *tc)
{
    const char *backend = pj_ioqueue_name();
    int N = under_valgrind() ? 100 : 1000;
    const int batch = 100;
    loop L;
    inst *c = NULL;
    int created = 0;
    char url[300];
    unsigned base = pj_websock_get_live_count();
    pj_pool_t *pool = NULL;
    struct rlimit rl;
    double t0;

    /* "select", or "epoll[0x3]" (with its EPOLL flags) */
    if (strncmp(backend, "epoll", 5) != 0) {
        skip(tc, "pjlib's ioqueue is \"%s\"; %d sockets need the epoll backend (configure --enable-epoll)",
             backend, N);
        return;
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)(N + 200)) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
        if (rl.rlim_cur < (rlim_t)(N + 200)) {
            skip(tc, "RLIMIT_NOFILE hard limit %lu is below %d", (unsigned long)rl.rlim_max, N + 200);
            return;
        }
    }
    if (!loop_start(tc, &L, (pj_size_t)N + 16))
        return;
    pool = pj_pool_create(g_pf, "app-c", 1000, 1000, NULL);
    c = calloc((size_t)N, sizeof(*c));
    if (!c)
        abort();
    url_of(url, sizeof(url), g_echo_url, "/c");
    t0 = now_ms();
    /* connect in batches (the peer's listen backlog is finite), but keep
     * every connection open: all N are open at the same time below */
    for (int b = 0; b < N; b += batch) {
        int e = b + batch < N ? b + batch : N;
        for (int i = b; i < e; ++i) {
            inst_init(&c[i], &L, THREADS_ANY);
            created++;
            pj_status_t rc = inst_create(&c[i], pool, NULL);
            REQUIRE(tc, rc == PJ_SUCCESS, "pj_websock_create #%d: %s", i, st(rc));
            REQUIRE(tc, inst_connect(tc, &c[i], url), "connect #%d", i);
        }
        for (int i = b; i < e; ++i) {
            REQUIRE(tc, wait_connect(&c[i], tmo(30000)), "connection #%d: no on_connect within %d ms", i, tmo(30000));
            REQUIRE(tc, c[i].connect_status == PJ_SUCCESS, "connection #%d: on_connect %s", i,
                    st(c[i].connect_status));
        }
    }
    printf("# %d connections open after %.0f ms\n", N, now_ms() - t0);
    for (int i = 0; i < N; ++i)
        REQUIRE(tc, pj_websock_get_state(c[i].ws) == PJ_WEBSOCK_STATE_OPEN, "connection #%d not OPEN", i);
    for (int i = 0; i < N; ++i) {
        char m[64];
        int len = snprintf(m, sizeof(m), "message of connection %d", i);
        pj_status_t rc = pj_websock_send(c[i].ws, PJ_WEBSOCK_OP_TEXT, m, (pj_size_t)len);
        REQUIRE(tc, rc == PJ_SUCCESS, "send #%d: %s", i, st(rc));
    }
    for (int i = 0; i < N; ++i) {
        char m[64];
        int len = snprintf(m, sizeof(m), "message of connection %d", i);
        REQUIRE(tc, wait_rx(&c[i], 1, tmo(30000)), "connection #%d: no echo", i);
        REQUIRE(tc, c[i].msgs[0].len == (size_t)len && memcmp(c[i].msgs[0].data, m, (size_t)len) == 0,
                "connection #%d: wrong echo '%s'", i, (const char *)c[i].msgs[0].data);
    }
    printf("# %d echoes after %.0f ms\n", N, now_ms() - t0);
    for (int i = 0; i < N; ++i) {
        pj_status_t rc = pj_websock_close(c[i].ws, 1000, NULL);
        REQUIRE(tc, rc == PJ_SUCCESS, "close #%d: %s", i, st(rc));
    }
    for (int i = 0; i < N; ++i)
        REQUIRE(tc, wait_close(&c[i], tmo(30000)), "connection #%d: no on_close", i);
    printf("# %d closed after %.0f ms\n", N, now_ms() - t0);
out:
    for (int i = 0; i < created; ++i)
        inst_destroy(&c[i]);
    settle(tc, base, tmo(20000));
    for (int i = 0; i < created; ++i) {
        if (!tc->failed) {
            char label[32];
            snprintf(label, sizeof(label), "connection #%d", i);
            check_inst(tc, &c[i], label);
        }
        inst_free(&c[i]);
    }
    free(c);
    if (pool)
        pj_pool_release(pool);
    loop_stop(&L);
}

/* ------------------------------------------------------------------ */
/* d. keep-alive pings and dead-peer detection from the timer heap     */

static char g_d_threads_why[600];
static int g_d_threads_bad = -1;   /* -1: d1/d2 did not get far enough */

static void d_note_threads(inst *c, const char *label)
{
    int w = atomic_load(&c->n_wrong_thread);
    if (g_d_threads_bad < 0)
        g_d_threads_bad = 0;
    if (w && !g_d_threads_bad)
        snprintf(g_d_threads_why, sizeof(g_d_threads_why), "%s: %d callback(s) off the poll threads, first: %s", label,
                 w, c->wrong_thread);
    g_d_threads_bad += w;
}

/* Creates the instance with keep-alive pings every 200 ms. */
static int d_create(tcase *tc, inst *c, pj_pool_t *pool)
{
    pj_status_t rc = inst_create(c, pool, NULL);
    if (rc != PJ_SUCCESS) {
        fail_at(tc, __FILE__, __LINE__, "pj_websock_create: %s", st(rc));
        return 0;
    }
    rc = pj_websock_set_ping_interval_ms(c->ws, 200);
    if (rc != PJ_SUCCESS) {
        fail_at(tc, __FILE__, __LINE__, "set_ping_interval_ms: %s", st(rc));
        return 0;
    }
    return 1;
}

/* raw_server.py's /count-pings?n=3 sends "pings=3" after the third ping */
static void case_d1(tcase *tc)
{
    fixture f;
    inst *c = &f.c;
    char url[300];
    if (!fixture_start(tc, &f, "app-d1", THREADS_POLL))
        return;
    if (!d_create(tc, c, f.pool))
        goto out;
    url_of(url, sizeof(url), g_raw_url, "/count-pings?n=3");
    double t0 = now_ms();
    REQUIRE(tc, inst_open(tc, c, f.pool, url), "open");
    REQUIRE(tc, wait_rx(c, 1, tmo(10000)), "the server saw fewer than 3 pings within %d ms", tmo(10000));
    double dt = now_ms() - t0;
    CHECK(tc, c->msgs[0].op == PJ_WEBSOCK_OP_TEXT && strcmp((const char *)c->msgs[0].data, "pings=3") == 0,
          "unexpected message '%s'", (const char *)c->msgs[0].data);
    printf("# 3 pings seen by the server %.0f ms after connect\n", dt);
    if (!under_valgrind())
        CHECK(tc, dt >= 500, "3 pings at 200 ms intervals after only %.0f ms", dt);
    CHECK(tc, c->n_close == 0, "on_close(%u) while the peer answers pings", c->close_code);
    CHECK(tc, pj_websock_get_state(c->ws) == PJ_WEBSOCK_STATE_OPEN, "not OPEN after the pings");
    REQUIRE(tc, inst_close_wait(tc, c), "close");
out:
    fixture_check(tc, &f);
    if (!tc->failed)
        d_note_threads(c, "d1");
    fixture_free(&f);
}

/* ws_server.py's /silent never reads nor answers: the ping timeout fails
 * the connection from a timer callback */
static void case_d2(tcase *tc)
{
    fixture f;
    inst *c = &f.c;
    char url[300];
    if (!fixture_start(tc, &f, "app-d2", THREADS_POLL))
        return;
    if (!d_create(tc, c, f.pool))
        goto out;
    url_of(url, sizeof(url), g_echo_url, "/silent");
    double t0 = now_ms();
    REQUIRE(tc, inst_open(tc, c, f.pool, url), "open");
    REQUIRE(tc, wait_close(c, tmo(10000)), "no on_close within %d ms from a silent peer", tmo(10000));
    printf("# dead peer reported %.0f ms after connect\n", now_ms() - t0);
    CHECK(tc, c->close_code == 0, "on_close code %u, want 0", c->close_code);
    CHECK(tc, c->close_info.status == PJ_WEBSOCK_EPINGTIMEOUT, "close status %s, want PJ_WEBSOCK_EPINGTIMEOUT",
          st(c->close_info.status));
    CHECK(tc, c->close_info.initiator == PJ_WEBSOCK_CLOSE_TIMEOUT, "close initiator %d, want TIMEOUT",
          (int)c->close_info.initiator);
out:
    fixture_check(tc, &f);
    if (!tc->failed)
        d_note_threads(c, "d2");
    fixture_free(&f);
}

static void case_d3(tcase *tc)
{
    if (g_d_threads_bad < 0) {
        fail_at(tc, __FILE__, __LINE__, "d1/d2 failed before their callbacks could be checked");
        return;
    }
    CHECK(tc, g_d_threads_bad == 0, "%s", g_d_threads_why);
}

/* ------------------------------------------------------------------ */
/* e. destroy from inside the callbacks                                */

static void case_e(tcase *tc, int where)
{
    fixture f;
    inst *c = &f.c;
    char url[300];
    if (!fixture_start(tc, &f, "app-e", THREADS_ANY))
        return;
    c->destroy_in = where;
    c->spin = 2000;   /* stay in the callback a while after destroy */
    pj_status_t rc = inst_create(c, f.pool, NULL);
    REQUIRE(tc, rc == PJ_SUCCESS, "pj_websock_create: %s", st(rc));
    if (where == DESTROY_IN_CONNECT) {
        url_of(url, sizeof(url), g_echo_url, "/e1");
        REQUIRE(tc, inst_connect(tc, c, url), "connect");
    } else if (where == DESTROY_IN_RX) {
        /* The server sends 20 messages right after the handshake; the
         * first on_rx_msg destroys the instance with the rest pending.
         * (Sending them from here would race with that destroy: the API
         * must not be called on a destroyed instance.) */
        url_of(url, sizeof(url), g_echo_url, "/flood?size=64&count=20");
        REQUIRE(tc, inst_connect(tc, c, url), "connect");
    } else {
        /* the peer closes right after the handshake */
        url_of(url, sizeof(url), g_echo_url, "/close?code=4001&reason=bye");
        REQUIRE(tc, inst_open(tc, c, f.pool, url), "open");
    }
    REQUIRE(tc, inst_wait(c, p_destroyed, NULL, tmo(15000)), "the callback that destroys never came");
    CHECK(tc, c->destroy_rc == PJ_SUCCESS, "pj_websock_destroy in the callback: %s", st(c->destroy_rc));
    settle(tc, f.base, tmo(10000));
    /* a stray callback would come from the poll threads: give them a few
     * more polls (detection window only; success does not depend on it) */
    sleep_ms(300);
    if (where == DESTROY_IN_RX)
        CHECK(tc, c->n_rx == 1, "%zu messages delivered, want 1 (destroyed in the first)", c->n_rx);
    if (where == DESTROY_IN_CLOSE)
        CHECK(tc, c->close_code == 4001, "on_close code %u, want 4001", c->close_code);
out:
    fixture_check(tc, &f);
    fixture_free(&f);
}

static void case_e1(tcase *tc) { case_e(tc, DESTROY_IN_CONNECT); }
static void case_e2(tcase *tc) { case_e(tc, DESTROY_IN_RX); }
static void case_e3(tcase *tc) { case_e(tc, DESTROY_IN_CLOSE); }

/* ------------------------------------------------------------------ */
/* f. pjlib pool accounting                                            */

static pool_stat g_f_base, g_f_peak;
static int g_f_done;

static void case_f1(tcase *tc)
{
    int N = under_valgrind() ? 5 : 20;
    loop L;
    inst *c = NULL;
    int created = 0;
    char url[300];
    unsigned base = pj_websock_get_live_count();
    pj_pool_t *pool = NULL;
    pool_stat now;
    if (!loop_start(tc, &L, 64))
        return;
    pool = pj_pool_create(g_pf, "app-f", 1000, 1000, NULL);
    c = calloc((size_t)N, sizeof(*c));
    if (!c)
        abort();
    g_f_base = pools_now();
    g_f_peak = g_f_base;
    url_of(url, sizeof(url), g_echo_url, "/f");
    for (int i = 0; i < N; ++i) {
        inst_init(&c[i], &L, THREADS_ANY);
        created++;
        pj_status_t rc = inst_create(&c[i], pool, NULL);
        REQUIRE(tc, rc == PJ_SUCCESS, "pj_websock_create #%d: %s", i, st(rc));
        REQUIRE(tc, inst_open(tc, &c[i], pool, url), "open #%d", i);
    }
    for (int i = 0; i < N; ++i)
        REQUIRE(tc, echo_check(tc, &c[i], PJ_WEBSOCK_OP_BIN, 4000, (size_t)i), "echo #%d", i);
    now = pools_now();
    g_f_peak = now;
    for (int i = 0; i < N; ++i)
        REQUIRE(tc, inst_close_wait(tc, &c[i]), "close #%d", i);
out:
    for (int i = 0; i < created; ++i)
        inst_destroy(&c[i]);
    settle(tc, base, tmo(10000));
    /* the pools go back from the poll threads (group lock destroy
     * handlers); wait for it */
    double end = now_ms() + tmo(10000);
    now = pools_now();
    while ((now.count != g_f_base.count || now.used != g_f_base.used) && now_ms() < end) {
        sleep_ms(10);
        now = pools_now();
    }
    printf("# pools in use: %lu (%lu bytes) before, %lu (%lu bytes) with %d instances open, %lu (%lu bytes) after\n",
           g_f_base.count, g_f_base.used, g_f_peak.count, g_f_peak.used, N, now.count, now.used);
    CHECK(tc, now.count == g_f_base.count, "%lu pool(s) in use after destroy, %lu before", now.count,
          g_f_base.count);
    CHECK(tc, now.used == g_f_base.used, "%lu bytes used in pools after destroy, %lu before", now.used,
          g_f_base.used);
    for (int i = 0; i < created; ++i) {
        if (!tc->failed)
            check_inst(tc, &c[i], "instance");
        inst_free(&c[i]);
    }
    free(c);
    if (pool)
        pj_pool_release(pool);
    loop_stop(&L);
    g_f_done = !tc->failed;
}

/* Like upstream, each instance's record comes from a pool created from
 * pool->factory (pool count grows while instances exist). */
static void case_f2(tcase *tc)
{
    if (!g_f_done) {
        fail_at(tc, __FILE__, __LINE__, "f1 did not complete");
        return;
    }
    CHECK(tc, g_f_peak.count > g_f_base.count,
          "no pool was created from the application's pool factory (%lu pools before, %lu with instances open)",
          g_f_base.count, g_f_peak.count);
}

/* ------------------------------------------------------------------ */
/* g. no library thread in pjlib mode                                  */

static void case_g(tcase *tc)
{
    fixture f;
    inst *c = &f.c;
    char url[300], names[1200];
    int tasks, want;
    if (!fixture_start(tc, &f, "app-g", THREADS_ANY))
        return;
    /* an IP literal: no name resolution (which may use worker threads) */
    url_of(url, sizeof(url), g_echo_url, "/g");
    REQUIRE(tc, strstr(url, "://127.0.0.1:") != NULL, "WS_ECHO_URL is not an IPv4 literal: %s", url);
    REQUIRE(tc, inst_open(tc, c, f.pool, url), "open");
    REQUIRE(tc, echo_check(tc, c, PJ_WEBSOCK_OP_TEXT, 100, 0), "echo");
    tasks = count_tasks(names, sizeof(names));
    want = 1 + atomic_load(&g_own_threads);
    printf("# threads: %s\n", names);
    CHECK(tc, tasks == want, "%d threads during an open connection, want %d (main + %d started by the test): %s",
          tasks, want, want - 1, names);
    REQUIRE(tc, inst_close_wait(tc, c), "close");
out:
    fixture_check(tc, &f);
    fixture_free(&f);
}

/* ------------------------------------------------------------------ */
/* m. the descriptor table grows ahead, off the polling threads        */

/* A PJSIP program has threads, so each doubling of its descriptor table
 * waits for an RCU grace period in the thread that opens the descriptor.
 * Once a socket the library opens passes descriptor 32, a worker grows the
 * table to 1,024 slots (within RLIMIT_NOFILE), so the polling threads do
 * not wait for the doublings. */
static void case_m(tcase *tc)
{
    fixture f;
    inst *c = &f.c;
    char url[300];
    int fds[64], n_fds = 0;
    long before = fd_table_slots(), want = fd_table_reserve_want(), after = -1;
    if (before <= 0 || want <= 0) {
        fail_at(tc, __FILE__, __LINE__, "FDSize %ld, RLIMIT_NOFILE %ld", before, want);
        return;
    }
    if (before >= want) {
        skip(tc, "the descriptor table has %ld slots already", before);
        return;
    }
    if (!fixture_start(tc, &f, "app-m", THREADS_ANY))
        return;
    /* hold descriptors up to 40 so the connection's socket lands above 32 */
    n_fds = fd_hold_up_to(40, fds, 64);
    REQUIRE(tc, n_fds >= 0, "dup: %s", strerror(errno));
    url_of(url, sizeof(url), g_echo_url, "/m");
    REQUIRE(tc, inst_open(tc, c, f.pool, url), "open");
    after = fd_table_wait(want, 2000);
    printf("# descriptor table: %ld slots before, %ld after a socket above 32\n", before, after);
    CHECK(tc, after >= want, "%ld slots (want %ld)", after, want);
    REQUIRE(tc, echo_check(tc, c, PJ_WEBSOCK_OP_BIN, 1000, 0), "echo");
    REQUIRE(tc, inst_close_wait(tc, c), "close");
out:
    while (n_fds > 0)
        close(fds[--n_fds]);
    fixture_check(tc, &f);
    fixture_free(&f);
}

/* ------------------------------------------------------------------ */
/* h. the socket is the ioqueue's: an ioqueue of 4 handles             */

#define H_MAX 4

static void case_h(tcase *tc)
{
    loop L;
    inst c[H_MAX + 1], d[H_MAX];
    int nc = 0, nd = 0, n_ok = 0, failed_at = -1;
    pj_status_t fail_status = PJ_SUCCESS;
    const char *fail_how = "";
    char url[300];
    unsigned base = pj_websock_get_live_count();
    pj_pool_t *pool;
    if (!loop_start(tc, &L, H_MAX))
        return;
    pool = pj_pool_create(g_pf, "app-h", 1000, 1000, NULL);
    url_of(url, sizeof(url), g_echo_url, "/h");
    for (int i = 0; i < H_MAX + 1 && failed_at < 0; ++i) {
        inst_init(&c[i], &L, THREADS_ANY);
        nc++;
        pj_status_t rc = inst_create(&c[i], pool, NULL);
        REQUIRE(tc, rc == PJ_SUCCESS, "pj_websock_create #%d: %s", i, st(rc));
        pj_str_t u = cstr(url);
        rc = pj_websock_connect(c[i].ws, &u, NULL);
        if (rc != PJ_SUCCESS) {
            failed_at = i;
            fail_status = rc;
            fail_how = "pj_websock_connect returned";
            break;
        }
        REQUIRE(tc, wait_connect(&c[i], tmo(15000)), "connection #%d: no on_connect within %d ms", i, tmo(15000));
        if (c[i].connect_status != PJ_SUCCESS) {
            failed_at = i;
            fail_status = c[i].connect_status;
            fail_how = "on_connect reported";
            break;
        }
        n_ok++;
    }
    if (failed_at >= 0)
        printf("# connection #%d: %s %s\n", failed_at, fail_how, st(fail_status));
    REQUIRE(tc, failed_at >= 0,
            "all %d connections opened on an ioqueue created for %d handles: the sockets are not the ioqueue's",
            H_MAX + 1, H_MAX);
    CHECK(tc, failed_at == H_MAX, "connection #%d failed (%s %s), want the first %d to succeed", failed_at,
          fail_how, st(fail_status), H_MAX);
    CHECK(tc, c[failed_at].n_close == 0, "on_close for a connection that never opened");
    /* close the open ones; their handles go back to the ioqueue */
    for (int i = 0; i < n_ok; ++i)
        REQUIRE(tc, inst_close_wait(tc, &c[i]), "close #%d", i);
    for (int i = 0; i < nc; ++i)
        inst_destroy(&c[i]);
    REQUIRE(tc, settle(tc, base, tmo(10000)), "settle");
    /* pjlib (PJ_IOQUEUE_HAS_SAFE_UNREG) keeps an unregistered key for
     * PJ_IOQUEUE_KEY_FREE_DELAY ms before reuse, and registering while all
     * free keys are still waiting trips a pj_assert in debug builds: let
     * that delay pass (a pjlib property, not what is tested here) */
    sleep_ms(PJ_IOQUEUE_KEY_FREE_DELAY + 300);
    for (int i = 0; i < H_MAX; ++i) {
        inst_init(&d[i], &L, THREADS_ANY);
        nd++;
        REQUIRE(tc, inst_open(tc, &d[i], pool, url), "reconnect #%d after the others closed", i);
    }
    for (int i = 0; i < H_MAX; ++i)
        REQUIRE(tc, echo_check(tc, &d[i], PJ_WEBSOCK_OP_TEXT, 10, (size_t)i), "echo after reconnect #%d", i);
    for (int i = 0; i < H_MAX; ++i)
        REQUIRE(tc, inst_close_wait(tc, &d[i]), "close #%d", i);
out:
    for (int i = 0; i < nc; ++i)
        inst_destroy(&c[i]);
    for (int i = 0; i < nd; ++i)
        inst_destroy(&d[i]);
    settle(tc, base, tmo(10000));
    for (int i = 0; i < nc; ++i) {
        check_inst(tc, &c[i], "first round");
        inst_free(&c[i]);
    }
    for (int i = 0; i < nd; ++i) {
        check_inst(tc, &d[i], "second round");
        inst_free(&d[i]);
    }
    pj_pool_release(pool);
    loop_stop(&L);
}

/* ------------------------------------------------------------------ */
/* i. NULL ioqueue: the library's own event loop                       */

static void case_i(tcase *tc)
{
    fixture f;
    inst *c = &f.c;
    char url[300];
    /* f.L's poll threads run meanwhile, so that "not on a poll thread"
     * means something, but the instance is not on that loop: NULL
     * ioqueue and timer heap, the library's own event loop */
    if (!fixture_start(tc, &f, "app-i", THREADS_NOT_POLL))
        return;
    c->L = NULL;
    url_of(url, sizeof(url), g_echo_url, "/i");
    REQUIRE(tc, inst_open(tc, c, f.pool, url), "open");
    REQUIRE(tc, echo_check(tc, c, PJ_WEBSOCK_OP_TEXT, 1000, 1), "text echo");
    REQUIRE(tc, echo_check(tc, c, PJ_WEBSOCK_OP_BIN, 70000, 2), "binary echo");
    REQUIRE(tc, inst_close_wait(tc, c), "close");
out:
    fixture_check(tc, &f);
    check_threads(tc, c, "instance");
    fixture_free(&f);
}

/* ------------------------------------------------------------------ */
/* j. the application's group lock                                     */

static atomic_int g_gl_destroyed;

static void on_gl_destroy(void *member)
{
    (void)member;
    atomic_fetch_add(&g_gl_destroyed, 1);
}

static void case_j(tcase *tc)
{
    fixture f;
    inst *c = &f.c;
    char url[300];
    pj_pool_t *gl_pool;
    pj_grp_lock_t *gl = NULL;
    int held = 0, ref = -1;
    pool_stat before, now;
    if (!fixture_start(tc, &f, "app-j", THREADS_ANY))
        return;
    gl_pool = pj_pool_create(g_pf, "app-j-gl", 1000, 1000, NULL);
    before = pools_now();
    pj_status_t rc = pj_grp_lock_create(gl_pool, NULL, &gl);
    REQUIRE(tc, rc == PJ_SUCCESS, "pj_grp_lock_create: %s", st(rc));
    pj_grp_lock_add_ref(gl);
    held = 1;
    atomic_store(&g_gl_destroyed, 0);
    pj_grp_lock_add_handler(gl, gl_pool, NULL, &on_gl_destroy);
    pj_websock_param p;
    inst_param(c, &p);
    p.grp_lock = gl;
    rc = inst_create(c, f.pool, &p);
    REQUIRE(tc, rc == PJ_SUCCESS, "pj_websock_create: %s", st(rc));
    url_of(url, sizeof(url), g_echo_url, "/j");
    REQUIRE(tc, inst_open(tc, c, f.pool, url), "open");
    REQUIRE(tc, echo_check(tc, c, PJ_WEBSOCK_OP_TEXT, 300, 0), "echo");
    REQUIRE(tc, inst_close_wait(tc, c), "close");
    inst_destroy(c);
    /* the instance gives back every reference it took on our lock */
    double end = now_ms() + tmo(10000);
    while ((ref = pj_grp_lock_get_ref(gl)) > 1 && now_ms() < end)
        sleep_ms(5);
    CHECK(tc, ref == 1, "group lock ref count %d after destroy, want 1 (the test's own)", ref);
    CHECK(tc, atomic_load(&g_gl_destroyed) == 0, "the application's group lock was destroyed by the library");
    /* still usable */
    rc = pj_grp_lock_acquire(gl);
    CHECK(tc, rc == PJ_SUCCESS, "pj_grp_lock_acquire after destroy: %s", st(rc));
    if (rc == PJ_SUCCESS)
        pj_grp_lock_release(gl);
out:
    inst_destroy(c);
    if (held) {
        end = now_ms() + tmo(10000);
        while ((ref = pj_grp_lock_get_ref(gl)) > 1 && now_ms() < end)
            sleep_ms(5);
    }
    if (held && ref == 1) {
        /* our reference is the last one: this destroys the lock and runs
         * the destroy handlers (the instance's, if it added one) */
        pj_grp_lock_dec_ref(gl);
        held = 0;
        CHECK(tc, atomic_load(&g_gl_destroyed) == 1, "group lock not destroyed by its last dec_ref");
    }
    settle(tc, f.base, tmo(10000));
    end = now_ms() + tmo(10000);
    now = pools_now();
    while (now.count > before.count && now_ms() < end) {
        sleep_ms(10);
        now = pools_now();
    }
    CHECK(tc, now.count == before.count, "%lu pools in use after the group lock went, %lu before", now.count,
          before.count);
    check_inst(tc, c, "instance");
    /* a lock the library still references stays (leaked), with its pool */
    if (!held)
        pj_pool_release(gl_pool);
    fixture_free(&f);
}

/* ------------------------------------------------------------------ */
/* k. pjlib mode needs a pool (like upstream)                          */

static void case_k(tcase *tc)
{
    loop L;
    inst c;
    pj_websock *ws = NULL;
    unsigned base = pj_websock_get_live_count();
    if (!loop_start(tc, &L, 8))
        return;
    inst_init(&c, &L, THREADS_ANY);
    pj_websock_param p;
    inst_param(&c, &p);
    pj_status_t rc = pj_websock_create(NULL, &p, &ws);
    CHECK(tc, rc == PJ_EINVAL, "pj_websock_create(pool NULL, ioqueue, timer heap): %s, want PJ_EINVAL", st(rc));
    if (rc == PJ_SUCCESS && ws)
        pj_websock_destroy(ws);
    settle(tc, base, tmo(10000));
    inst_free(&c);
    loop_stop(&L);
}

/* ------------------------------------------------------------------ */
/* l. pj_strerror() names libpjwebsock's status codes                  */

static void case_l(tcase *tc)
{
    static const pj_status_t codes[] = {PJ_WEBSOCK_EHS_STATUS, PJ_WEBSOCK_EPROTOCOL, PJ_WEBSOCK_EPINGTIMEOUT,
                                        PJ_WEBSOCK_ETLS, PJ_WEBSOCK_ETLS_VERIFY, PJ_WEBSOCK_ETLS_CONFIG};
    pj_websock *ws = NULL;
    pj_websock_param p;
    unsigned base = pj_websock_get_live_count();
    /* the library registers its error space on first use */
    pj_websock_param_default(&p);
    pj_status_t rc = pj_websock_create(NULL, &p, &ws);
    REQUIRE(tc, rc == PJ_SUCCESS, "pj_websock_create (own loop): %s", st(rc));
    pj_websock_destroy(ws);
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); ++i) {
        char a[160], b[160];
        pj_str_t pa = pj_strerror(codes[i], a, sizeof(a));
        pj_str_t pb = pj_websock_strerror(codes[i], b, sizeof(b));
        CHECK(tc, pa.slen > 0 && pa.slen == pb.slen && memcmp(pa.ptr, pb.ptr, (size_t)pa.slen) == 0,
              "pj_strerror(%d) = \"%.*s\", pj_websock_strerror gives \"%.*s\"", codes[i], (int)pa.slen, pa.ptr,
              (int)pb.slen, pb.ptr);
        CHECK(tc, strstr(a, "Unknown") == NULL, "pj_strerror(%d) does not know the code: \"%s\"", codes[i], a);
    }
out:
    settle(tc, base, tmo(10000));
}

/* ------------------------------------------------------------------ */
/* n. pj_websock_wait_buffered with the application's poll threads      */

#define N_MSGS 400
#define N_LEN 60000
#define N_MARK ((size_t)1 << 20)

/* The main thread (not a poll thread) sends to a paused peer and, on each
 * PJ_EBUSY, waits for room: the poll threads' writes wake it. */
static void case_n(tcase *tc)
{
    fixture f;
    inst *c = &f.c;
    char url[300], path[64];
    unsigned char *buf = malloc(N_LEN), *want = malloc(N_LEN);
    int waits = 0;
    if (!buf || !want)
        abort();
    if (!fixture_start(tc, &f, "app-n", THREADS_POLL)) {
        free(buf);
        free(want);
        return;
    }
    snprintf(path, sizeof(path), "/pause?ms=%d", under_valgrind() ? 4000 : 1000);
    url_of(url, sizeof(url), g_echo_url, path);
    REQUIRE(tc, inst_open(tc, c, f.pool, url), "open");
    pj_status_t rc = pj_websock_set_max_buffered(c->ws, N_MARK);
    REQUIRE(tc, rc == PJ_SUCCESS, "set_max_buffered: %s", st(rc));
    for (int i = 0; i < N_MSGS; ++i) {
        pat_fill(buf, N_LEN, (size_t)i);
        while ((rc = pj_websock_send(c->ws, PJ_WEBSOCK_OP_BIN, buf, N_LEN)) == PJ_EBUSY) {
            waits++;
            pj_status_t w = pj_websock_wait_buffered(c->ws, N_MARK / 2, (unsigned)tmo(30000));
            REQUIRE(tc, w == PJ_SUCCESS, "wait_buffered before message %d: %s (%zu queued)", i, st(w),
                    (size_t)pj_websock_get_buffered_amount(c->ws));
        }
        REQUIRE(tc, rc == PJ_SUCCESS, "send %d: %s", i, st(rc));
    }
    CHECK(tc, waits > 0, "no PJ_EBUSY with a 1 MiB mark and a paused peer");
    rc = pj_websock_wait_buffered(c->ws, 0, (unsigned)tmo(30000));
    CHECK(tc, rc == PJ_SUCCESS && pj_websock_get_buffered_amount(c->ws) == 0, "wait_buffered(0): %s, %zu queued",
          st(rc), (size_t)pj_websock_get_buffered_amount(c->ws));
    REQUIRE(tc, wait_rx(c, N_MSGS, tmo(60000)), "%zu of %d echoes", c->n_rx, N_MSGS);
    pthread_mutex_lock(&c->mu);
    for (int i = 0; i < N_MSGS; ++i) {
        pat_fill(want, N_LEN, (size_t)i);
        if (c->msgs[i].len != N_LEN || memcmp(c->msgs[i].data, want, N_LEN) != 0) {
            fail_at(tc, __FILE__, __LINE__, "echo %d: %zu bytes, differs from message %d", i, c->msgs[i].len, i);
            break;
        }
    }
    pthread_mutex_unlock(&c->mu);
    printf("# %d waits for room while sending %d x %d bytes\n", waits, N_MSGS, N_LEN);
    REQUIRE(tc, inst_close_wait(tc, c), "close");
out:
    free(buf);
    free(want);
    fixture_check(tc, &f);
    fixture_free(&f);
}

/* ------------------------------------------------------------------ */

static int env_url(char *buf, size_t size, const char *var)
{
    const char *v = getenv(var);
    if (!v || !*v)
        return 0;
    snprintf(buf, size, "%s", v);
    return 1;
}

/* Cases come in groups (a2 needs a1's run, d3 d1's and d2's, f2 f1's);
 * the arguments select groups by letter, in the order of GROUPS. */
#define GROUPS "abdefgmhjklnci"

static int want(int argc, char **argv, char g)
{
    if (argc <= 1)
        return 1;
    for (int i = 1; i < argc; ++i)
        if (argv[i][0] == g && argv[i][1] == '\0')
            return 1;
    return 0;
}

int main(int argc, char **argv)
{
    pj_status_t rc;
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 1 && strcmp(argv[1], "--list") == 0) {
        printf("groups: %s\n", GROUPS);
        return 0;
    }
    for (int i = 1; i < argc; ++i) {
        if (!argv[i][0] || argv[i][1] || !strchr(GROUPS, argv[i][0])) {
            fprintf(stderr, "usage: %s [--list | GROUP...]  (groups: %s)\n", argv[0], GROUPS);
            return 2;
        }
    }
    if (under_valgrind())
        g_case_timeout_s = 900;
    if (!env_url(g_echo_url, sizeof(g_echo_url), "WS_ECHO_URL") ||
        !env_url(g_raw_url, sizeof(g_raw_url), "WS_RAW_URL")) {
        printf("not ok - setup: WS_ECHO_URL and WS_RAW_URL must be set (run through tests/pjlib/run.py)\n");
        printf("# 0 passed, 1 failed, 0 skipped\n");
        return 1;
    }
    rc = pj_init();
    if (rc != PJ_SUCCESS) {
        printf("not ok - setup: pj_init: %d\n", rc);
        printf("# 0 passed, 1 failed, 0 skipped\n");
        return 1;
    }
    pj_log_set_level(2);
    pj_caching_pool_init(&g_cp, NULL, 0);
    g_pf = &g_cp.factory;
    printf("# pjlib %s, ioqueue backend \"%s\", PJ_IOQUEUE_MAX_HANDLES %d, PJ_IOQUEUE_HAS_SAFE_UNREG %d, "
           "PJ_IOQUEUE_DEFAULT_ALLOW_CONCURRENCY %d, PJ_DEBUG %d, PJ_TIMER_DEBUG %d, PJ_GRP_LOCK_DEBUG %d\n",
           PJ_VERSION, pj_ioqueue_name(), PJ_IOQUEUE_MAX_HANDLES, PJ_IOQUEUE_HAS_SAFE_UNREG,
           PJ_IOQUEUE_DEFAULT_ALLOW_CONCURRENCY, PJ_DEBUG, PJ_TIMER_DEBUG, PJ_GRP_LOCK_DEBUG);

    /* i (own event loop) last: that loop's thread lives until exit, and g
     * counts threads; c (the heaviest) late */
    if (want(argc, argv, 'a')) {
        run_case("a1. callbacks (on_connect, on_rx_msg, on_close) run on the application's poll threads", case_a1);
        run_case("a2. callbacks of one instance never overlap (2 poll threads, sends from main)", case_a2);
    }
    if (want(argc, argv, 'b'))
        run_case("b. echo of text and binary messages of 0 B .. 16 MiB", case_b);
    if (want(argc, argv, 'd')) {
        run_case("d1. keep-alive pings at 200 ms reach the peer, the connection stays open", case_d1);
        run_case("d2. dead peer (ws_server /silent): on_close(0, PJ_WEBSOCK_EPINGTIMEOUT)", case_d2);
        run_case("d3. ping and ping-timeout callbacks ran on the poll threads (timer heap)", case_d3);
    }
    if (want(argc, argv, 'e')) {
        run_case("e1. pj_websock_destroy from inside on_connect", case_e1);
        run_case("e2. pj_websock_destroy from inside on_rx_msg (more messages pending)", case_e2);
        run_case("e3. pj_websock_destroy from inside on_close", case_e3);
    }
    if (want(argc, argv, 'f')) {
        run_case("f1. pjlib pool accounting back to baseline after create/connect/echo/destroy", case_f1);
        run_case("f2. instances allocate from a pool of the application's pool factory", case_f2);
    }
    if (want(argc, argv, 'g'))
        run_case("g. no library thread during an open ws:// connection in pjlib mode", case_g);
    /* m after g (a worker it starts lives a few seconds), before c */
    if (want(argc, argv, 'm'))
        run_case("m. a socket above descriptor 32 grows the descriptor table ahead, off the poll threads", case_m);
    if (want(argc, argv, 'h'))
        run_case("h. sockets are the ioqueue's: 4-handle ioqueue refuses the 5th, reusable after close", case_h);
    if (want(argc, argv, 'j'))
        run_case("j. application-supplied grp_lock: works, survives destroy, released by the application", case_j);
    if (want(argc, argv, 'k'))
        run_case("k. pjlib mode with a NULL pool is refused (PJ_EINVAL, like upstream)", case_k);
    if (want(argc, argv, 'l'))
        run_case("l. pj_strerror() describes libpjwebsock's status codes (registered error space)", case_l);
    if (want(argc, argv, 'n'))
        run_case("n. pj_websock_wait_buffered off the poll threads: woken by their writes; 400 x 60,000 bytes to a "
                 "paused peer, waiting on each PJ_EBUSY, echoes intact",
                 case_n);
    if (want(argc, argv, 'c'))
        run_case(under_valgrind() ? "c. 100 concurrent connections on one epoll ioqueue (1000 natively)"
                                  : "c. 1000 concurrent connections on one epoll ioqueue",
                 case_c);
    if (want(argc, argv, 'i'))
        run_case("i. NULL ioqueue/timer heap: the library's own loop echoes, callbacks off the poll threads", case_i);

    int status = report_done();
    pj_caching_pool_destroy(&g_cp);
    pj_shutdown();
    return status;
}
