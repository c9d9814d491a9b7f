/* Stand-in for pjlib-util's <pjlib-util/http_client.h>, written from the
 * documented ABI (ABI.md: pj_http_header_elmt, pj_http_headers), not from
 * pjproject's sources; see pj/types.h here. */
#ifndef __PJLIB_UTIL_HTTP_CLIENT_H__
#define __PJLIB_UTIL_HTTP_CLIENT_H__

#include <pj/types.h>

#define PJ_HTTP_HEADER_SIZE 32

/* 32 bytes */
typedef struct pj_http_header_elmt {
    pj_str_t name;
    pj_str_t value;
} pj_http_header_elmt;

/* 1032 bytes */
typedef struct pj_http_headers {
    unsigned count;
    pj_http_header_elmt header[PJ_HTTP_HEADER_SIZE];
} pj_http_headers;

#endif /* __PJLIB_UTIL_HTTP_CLIENT_H__ */
