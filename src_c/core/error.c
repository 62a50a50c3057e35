/* error.c - per-thread last error message, the log callback, and the
 * allocation every part of the library uses (dn_calloc). The library never
 * prints: failures set a message here and return a status; log lines go to
 * the callback the network owner installed, or nowhere. */
#include "layer.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local char last_error[1024];

const char *dn_last_error(void) { return last_error; }

dn_status dn_fail(dn_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof(last_error), fmt, ap);
    va_end(ap);
    return status;
}

dn_status dn_layer_fail(const dn_layer *l, dn_status status, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return dn_fail(status, "layer %d [%s]: %s", l->index, l->ops ? l->ops->type : "?", msg);
}

void dn_log(const dn_net *net, int level, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    if (!net || !net->log_fn) return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    net->log_fn(level, msg, net->log_user);
}

void *dn_calloc(size_t n, size_t size)
{
    if (n == 0) n = 1;
    if (size && n > (size_t)-1 / size) return NULL;
    return calloc(n, size);
}
