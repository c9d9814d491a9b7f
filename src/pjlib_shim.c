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
