/*
 * Weak references to the few pjlib functions libpjwebsock calls when pjlib
 * is in the process.
 *
 * An undefined weak reference resolves to NULL when pjlib is absent, and it
 * also makes the static linker export the executable's own pjlib symbols
 * when the application links pjlib statically (a shared library on the link
 * line that references a symbol, even weakly, gets it exported), so no
 * -rdynamic is needed. Stable Rust has no weak linkage, hence this file.
 */
typedef int pj_status_t;
typedef struct pj_str_t { char *ptr; long slen; } pj_str_t;
typedef pj_str_t (*pj_error_callback)(pj_status_t, char *, unsigned long);

extern pj_status_t pj_thread_register(const char *name, long desc[64], void **thread) __attribute__((weak));
extern int pj_thread_is_registered(void) __attribute__((weak));
extern pj_status_t pj_register_strerror(pj_status_t start, pj_status_t space, pj_error_callback f) __attribute__((weak));

typedef pj_status_t (*pjws_thread_register_fn)(const char *, long *, void **);
typedef int (*pjws_thread_is_registered_fn)(void);
typedef pj_status_t (*pjws_register_strerror_fn)(pj_status_t, pj_status_t, pj_error_callback);

pjws_thread_register_fn pjws_weak_thread_register(void) { return pj_thread_register; }
pjws_thread_is_registered_fn pjws_weak_thread_is_registered(void) { return pj_thread_is_registered; }
pjws_register_strerror_fn pjws_weak_register_strerror(void) { return pj_register_strerror; }

/* pjlib's logging: pj_log_N exist for N <= PJ_LOG_MAX_LEVEL (5 by default). */
extern void pj_log_1(const char *sender, const char *format, ...) __attribute__((weak));
extern void pj_log_2(const char *sender, const char *format, ...) __attribute__((weak));
extern void pj_log_3(const char *sender, const char *format, ...) __attribute__((weak));
extern void pj_log_4(const char *sender, const char *format, ...) __attribute__((weak));

/* Logs msg through pjlib at level (1-4); returns 0 when pjlib is absent. */
int pjws_pj_log(int level, const char *msg)
{
    void (*f)(const char *, const char *, ...) =
        level <= 1 ? pj_log_1 : level == 2 ? pj_log_2 : level == 3 ? pj_log_3 : pj_log_4;
    if (!f)
        return 0;
    f("websock.rs", "%s", msg);
    return 1;
}

/*
 * The functions the pjlib event-loop driver calls (src/pjdrv.rs). Declared
 * here only as symbols: their prototypes live in the Rust code, which
 * calls them through the pointers pjws_pj_sym() returns (NULL when pjlib
 * is absent). Where pjlib's build options choose between a plain and a
 * `_dbg` name (PJ_TIMER_DEBUG, PJ_GRP_LOCK_DEBUG), both are referenced.
 */
#define PJWS_SYMS(X) \
    X(pj_ioqueue_register_sock2) \
    X(pj_ioqueue_unregister) \
    X(pj_ioqueue_op_key_init) \
    X(pj_ioqueue_recv) \
    X(pj_ioqueue_send) \
    X(pj_ioqueue_connect) \
    X(pj_timer_entry_init) \
    X(pj_timer_heap_schedule_w_grp_lock_dbg) \
    X(pj_timer_heap_schedule_w_grp_lock) \
    X(pj_timer_heap_cancel_if_active) \
    X(pj_grp_lock_create) \
    X(pj_grp_lock_add_ref) \
    X(pj_grp_lock_add_ref_dbg) \
    X(pj_grp_lock_dec_ref) \
    X(pj_grp_lock_dec_ref_dbg) \
    X(pj_grp_lock_add_handler) \
    X(pj_grp_lock_acquire) \
    X(pj_grp_lock_release) \
    X(pj_pool_create) \
    X(pj_pool_release) \
    X(pj_pool_calloc) \
    X(pj_ioqueue_get_user_data)

#define PJWS_DECL(name) extern void name(void) __attribute__((weak));
PJWS_SYMS(PJWS_DECL)

#define PJWS_ADDR(name) (void *)name,
static void *const pjws_syms[] = { PJWS_SYMS(PJWS_ADDR) };

#define PJWS_NAME(name) #name,
static const char *const pjws_sym_names[] = { PJWS_SYMS(PJWS_NAME) };

/* Address of the i-th symbol above (NULL if absent or out of range) and
 * its name (for a dlsym fallback). */
void *pjws_pj_sym(unsigned i)
{
    return i < sizeof(pjws_syms) / sizeof(pjws_syms[0]) ? pjws_syms[i] : 0;
}

const char *pjws_pj_sym_name(unsigned i)
{
    return i < sizeof(pjws_sym_names) / sizeof(pjws_sym_names[0]) ? pjws_sym_names[i] : 0;
}
