/* Stand-in for pjlib's <pj/ssl_sock.h>, written from the documented ABI
 * (ABI.md), not from pjlib's sources; see pj/types.h here. Only what the
 * WebSocket API needs: pj_ssl_sock_param, which it passes by pointer. */
#ifndef __PJ_SSL_SOCK_H__
#define __PJ_SSL_SOCK_H__

#include <pj/types.h>

typedef struct pj_ssl_sock_param pj_ssl_sock_param;

#endif /* __PJ_SSL_SOCK_H__ */
