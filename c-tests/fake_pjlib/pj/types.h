/* Stand-in for pjlib's <pj/types.h>, written from the documented ABI
 * (ABI.md, "Scalar types (pjlib)"), not from pjlib's sources. With the
 * other stand-ins here it lets c-tests/header_after_pjlib.c check, without
 * a pjproject build, that <pjwebsock/websock.h> compiles after pjlib's
 * headers: same include guards, type names and layouts. Struct tags follow
 * pjlib's naming (tag = type name), which <pjwebsock/websock.h> relies on. */
#ifndef __PJ_TYPES_H__
#define __PJ_TYPES_H__

#include <stddef.h>

typedef int pj_status_t;
typedef int pj_bool_t;
typedef size_t pj_size_t;
typedef long pj_ssize_t;
typedef unsigned short pj_uint16_t;

/* Not NUL-terminated. */
typedef struct pj_str_t {
    char *ptr;
    pj_ssize_t slen;
} pj_str_t;

typedef struct pj_time_val {
    long sec;
    long msec;
} pj_time_val;

/* Opaque, passed by pointer only. */
typedef struct pj_pool_t pj_pool_t;
typedef struct pj_ioqueue_t pj_ioqueue_t;
typedef struct pj_timer_heap_t pj_timer_heap_t;
typedef struct pj_grp_lock_t pj_grp_lock_t;

#endif /* __PJ_TYPES_H__ */
