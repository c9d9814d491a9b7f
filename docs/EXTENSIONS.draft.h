/* Extension API of libpjwebsock (beyond the upstream pj_websock API). All
 * functions accept NULL ws and then return PJ_EINVAL (getters return 0/NULL). */

/* Status codes of our own: PJ_WEBSOCK_ERRNO_START = 570000 */
#define PJ_WEBSOCK_ERRNO_START          570000
#define PJ_WEBSOCK_EHS_STATUS           570001 /* server answered the handshake with a status other than 101 */
#define PJ_WEBSOCK_EHS_MALFORMED        570002 /* handshake response is not valid HTTP */
#define PJ_WEBSOCK_EHS_TOOLARGE         570003 /* handshake response head exceeds 16 KiB */
#define PJ_WEBSOCK_EHS_UPGRADE          570004 /* missing/wrong Upgrade header */
#define PJ_WEBSOCK_EHS_CONNECTION       570005 /* Connection header lacks "upgrade" */
#define PJ_WEBSOCK_EHS_ACCEPT           570006 /* Sec-WebSocket-Accept missing or wrong */
#define PJ_WEBSOCK_EHS_SUBPROTOCOL      570007 /* server chose a subprotocol we did not offer */
#define PJ_WEBSOCK_EHS_EXTENSION        570008 /* server chose an extension we did not offer */
#define PJ_WEBSOCK_ECONNCLOSED          570009 /* peer closed TCP during the handshake */
#define PJ_WEBSOCK_EPROTOCOL            570010 /* peer violated the protocol (we closed with 1002) */
#define PJ_WEBSOCK_EUTF8                570011 /* peer sent invalid UTF-8 (we closed with 1007) */
#define PJ_WEBSOCK_EMSGTOOBIG           570012 /* peer's message exceeded max_rx_msg_size (we closed with 1009) */
#define PJ_WEBSOCK_EPINGTIMEOUT         570013 /* nothing received within a ping interval after a ping (dead peer) */
#define PJ_WEBSOCK_ECLOSETIMEOUT        570014 /* close handshake did not complete within the close timeout */
#define PJ_WEBSOCK_ECONNECTTIMEOUT      570015 /* connect + handshake did not complete within the connect timeout */
/* 570020.. reserved for TLS failures */

/* Pjlib codes used: PJ_EINVAL 70004 (bad argument), PJ_EINVALIDOP 70013 (wrong state),
 * PJ_EBUSY 70011 (high-water mark reached), PJ_ERESOLVE 70018 (name resolution failed),
 * PJ_ECANCELLED 70014 (connect aborted by pj_websock_close), OS errors as 120000 + errno
 * (e.g. ECONNREFUSED = 120111). */

typedef enum pj_websock_close_initiator {
    PJ_WEBSOCK_CLOSE_NONE      = 0, /* not closed (yet) */
    PJ_WEBSOCK_CLOSE_LOCAL     = 1, /* pj_websock_close() started the close handshake */
    PJ_WEBSOCK_CLOSE_PEER      = 2, /* the peer sent a close frame first */
    PJ_WEBSOCK_CLOSE_TRANSPORT = 3, /* TCP/TLS failed or was closed without a close handshake */
    PJ_WEBSOCK_CLOSE_TIMEOUT   = 4, /* dead peer (ping) or close-handshake timeout */
    PJ_WEBSOCK_CLOSE_PROTOCOL  = 5  /* we failed the connection because of a peer protocol violation */
} pj_websock_close_initiator;

typedef struct pj_websock_close_info {
    pj_websock_close_initiator initiator;
    pj_bool_t   clean;          /* close frames exchanged both ways and TCP closed afterwards */
    pj_uint16_t code_sent;      /* close code we sent, 0 if none (or empty body) */
    pj_uint16_t code_received;  /* close code received, 0 if none, 1005 for an empty body */
    pj_status_t status;         /* PJ_SUCCESS for a clean close, else why */
} pj_websock_close_info;

pj_status_t pj_websock_get_close_info(const pj_websock *ws, pj_websock_close_info *info);
pj_size_t   pj_websock_get_buffered_amount(const pj_websock *ws);          /* bytes accepted by send but not yet written to the socket; 0 for NULL */
pj_status_t pj_websock_set_max_buffered(pj_websock *ws, pj_size_t bytes);  /* high-water mark, default 64 MiB; 0 -> PJ_EINVAL. send returns PJ_EBUSY when buffered + new frame would exceed it */
pj_status_t pj_websock_set_connect_timeout(pj_websock *ws, unsigned msec); /* connect + handshake, default 30000; 0 -> PJ_EINVAL */
pj_status_t pj_websock_set_close_timeout(pj_websock *ws, unsigned msec);   /* default 5000; 0 -> PJ_EINVAL */
pj_status_t pj_websock_set_ping_interval_ms(pj_websock *ws, unsigned msec);/* overrides param->ping_interval; 0 = off */
pj_str_t    pj_websock_strerror(pj_status_t status, char *buf, pj_size_t bufsize); /* names our codes, pjlib's common codes and OS errors; NUL-terminates buf */
unsigned    pj_websock_get_live_count(void);                               /* number of pj_websock instances not yet fully freed */
