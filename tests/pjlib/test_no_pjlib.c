/* pjlib mode asked for in a program WITHOUT pjlib: pj_websock_create with
 * a non-NULL ioqueue and timer heap must fail with PJ_ENOTSUP (the
 * callbacks could not run inside a pj_ioqueue_poll that does not exist),
 * without touching the (dummy) pool, ioqueue or timer heap.
 *
 * Links only -lpjwebsock; needs no pjproject and no peer. Run by
 * tests/pjlib/run.py unconditionally. (c-tests/test_errors.c has a similar
 * case; this one also checks that pjlib really is absent.)
 *
 * Output: "ok - <name>" / "not ok - <name>: <why>" per case, then
 * "# <P> passed, <F> failed, 0 skipped".
 */
#include <pjwebsock/websock.h>

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static int g_passed, g_failed;

static void report(const char *name, int ok, const char *why)
{
    if (ok) {
        g_passed++;
        printf("ok - %s\n", name);
    } else {
        g_failed++;
        printf("not ok - %s: %s\n", name, why);
    }
    fflush(stdout);
}

static const char *st(pj_status_t s, char *buf, size_t size)
{
    char text[120];
    pj_str_t t = pj_websock_strerror(s, text, sizeof(text));
    snprintf(buf, size, "%d (%.*s)", s, (int)(t.slen > 0 ? t.slen : 0), t.ptr ? t.ptr : "");
    return buf;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* zero-filled stand-ins: dereferencing them finds no pool factory or
 * function pointer, calling through them would crash */
static union {
    char bytes[4096];
    void *align;
} fake_pool, fake_ioq, fake_th;

int main(void)
{
    char why[300], b1[160];
    pj_websock_param p;
    pj_websock *ws;
    pj_status_t rc;

    setvbuf(stdout, NULL, _IOLBF, 0);

    /* 1. the premise */
    {
        static const char *const syms[] = {"pj_init", "pj_ioqueue_poll", "pj_timer_heap_poll", "pj_pool_create",
                                           "pj_grp_lock_create"};
        const char *found = NULL;
        for (size_t i = 0; i < sizeof(syms) / sizeof(syms[0]) && !found; ++i)
            if (dlsym(RTLD_DEFAULT, syms[i]))
                found = syms[i];
        snprintf(why, sizeof(why), "%s is in the process; this program must not link pjlib", found ? found : "");
        report("no pjlib symbol in the process (dlsym)", !found, why);
    }

    /* 2. ioqueue + timer heap given, pjlib absent */
    pj_websock_param_default(&p);
    p.ioqueue = (pj_ioqueue_t *)&fake_ioq;
    p.timer_heap = (pj_timer_heap_t *)&fake_th;
    ws = (pj_websock *)&fake_ioq;   /* sentinel: must stay unchanged */
    rc = pj_websock_create((pj_pool_t *)&fake_pool, &p, &ws);
    snprintf(why, sizeof(why), "pj_websock_create returned %s, want PJ_ENOTSUP (%d)", st(rc, b1, sizeof(b1)),
             PJ_ENOTSUP);
    report("pj_websock_create(pool, ioqueue, timer heap) without pjlib -> PJ_ENOTSUP", rc == PJ_ENOTSUP, why);
    if (rc == PJ_SUCCESS && ws != (pj_websock *)&fake_ioq)
        pj_websock_destroy(ws);
    report("*p_ws untouched on failure", rc == PJ_SUCCESS || ws == (pj_websock *)&fake_ioq,
           "pj_websock_create wrote *p_ws although it failed");
    {
        static const char zero[sizeof(fake_pool.bytes)];
        int untouched = memcmp(fake_pool.bytes, zero, sizeof(zero)) == 0 &&
                        memcmp(fake_ioq.bytes, zero, sizeof(zero)) == 0 &&
                        memcmp(fake_th.bytes, zero, sizeof(zero)) == 0;
        report("the dummy pool, ioqueue and timer heap were not written", untouched,
               "the library wrote into memory it was handed as pjlib objects");
    }

    /* 3. the own event loop still works without pjlib (pool is then not
     * used: all memory comes from the library's allocator) */
    pj_websock_param_default(&p);
    ws = NULL;
    rc = pj_websock_create((pj_pool_t *)&fake_pool, &p, &ws);
    snprintf(why, sizeof(why), "pj_websock_create(NULL ioqueue) returned %s", st(rc, b1, sizeof(b1)));
    report("NULL ioqueue and timer heap without pjlib -> own event loop, PJ_SUCCESS", rc == PJ_SUCCESS && ws, why);
    if (rc == PJ_SUCCESS && ws) {
        rc = pj_websock_destroy(ws);
        snprintf(why, sizeof(why), "pj_websock_destroy: %s", st(rc, b1, sizeof(b1)));
        report("pj_websock_destroy of that instance", rc == PJ_SUCCESS, why);
    }
    for (int i = 0; i < 500 && pj_websock_get_live_count() != 0; ++i)
        sleep_ms(10);
    snprintf(why, sizeof(why), "%u instance(s) still alive after 5 s", pj_websock_get_live_count());
    report("no instance left (pj_websock_get_live_count() == 0)", pj_websock_get_live_count() == 0, why);

    printf("# %d passed, %d failed, 0 skipped\n", g_passed, g_failed);
    return g_failed ? 1 : 0;
}
