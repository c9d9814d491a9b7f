/* Stand-in for pjlib's <pj/errno.h>, written from the documented ABI
 * (ABI.md, "pjlib status codes"), not from pjlib's sources; see
 * pj/types.h here. */
#ifndef __PJ_ERRNO_H__
#define __PJ_ERRNO_H__

#include <pj/types.h>

#define PJ_SUCCESS      0
#define PJ_EUNKNOWN     70001
#define PJ_EPENDING     70002
#define PJ_EINVAL       70004
#define PJ_ENOMEM       70007
#define PJ_EBUG         70008
#define PJ_ETIMEDOUT    70009
#define PJ_ETOOMANY     70010
#define PJ_EBUSY        70011
#define PJ_ENOTSUP      70012
#define PJ_EINVALIDOP   70013
#define PJ_ECANCELLED   70014
#define PJ_EEOF         70016
#define PJ_ETOOBIG      70017
#define PJ_ERESOLVE     70018
#define PJ_ETOOSMALL    70019
#define PJ_EIGNORED     70020
#define PJ_EGONE        70023

/* OS errors: PJ_STATUS_FROM_OS(e) = e + 120000 (0 stays 0). */
#define PJ_ERRNO_START_SYS  120000
#define PJ_ERRNO_START_USER 170000
#define PJ_STATUS_FROM_OS(e) ((e) == 0 ? PJ_SUCCESS : (e) + PJ_ERRNO_START_SYS)

#endif /* __PJ_ERRNO_H__ */
