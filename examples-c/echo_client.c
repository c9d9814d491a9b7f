/*
 * echo_client - the smallest complete libpjwebsock program.
 *
 *     echo_client URL [message...]
 *
 * Connects to URL (ws:// or wss://), sends every message as a TEXT message,
 * prints what comes back, closes the connection with code 1000 and exits 0
 * when every message was echoed and the close handshake completed.
 * Without messages it sends "Hello, WebSocket!".
 *
 * Build:
 *     cc -std=c11 echo_client.c -lpjwebsock -lpthread -o echo_client
 *
 * Things worth copying:
 *  - the callbacks run on the library's event thread, so the main thread
 *    waits for them with a mutex + condition variable (with a timeout);
 *  - pj_websock_send() copies the data and returns at once;
 *  - every pj_status_t is checked and explained with pj_websock_strerror().
 */
/* clock_gettime, clock_nanosleep, pthread_cond_timedwait under -std=c11 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <pjwebsock/websock.h>

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TIMEOUT_MS 10000

/* Everything the callbacks share with main(), protected by `lock`. */
struct app {
    pthread_mutex_t lock;
    pthread_cond_t changed;
    int connect_done;          /* on_connect was called */
    pj_status_t connect_status;
    int echoes;                /* messages received */
    int close_done;            /* on_close was called */
    unsigned close_code;
    char close_reason[128];
};

static void print_error(const char *what, pj_status_t status)
{
    char buf[160];
    pj_websock_strerror(status, buf, sizeof(buf));
    fprintf(stderr, "echo_client: %s: %s (%d)\n", what, buf, status);
}

/* ---- callbacks (library event thread) ------------------------------ */

static void on_connect(pj_websock *ws, pj_status_t status)
{
    struct app *app = pj_websock_get_user_data(ws);
    pthread_mutex_lock(&app->lock);
    app->connect_done = 1;
    app->connect_status = status;
    pthread_cond_broadcast(&app->changed);
    pthread_mutex_unlock(&app->lock);
}

static void on_rx_msg(pj_websock *ws, pj_websock_opcode opcode, const void *data, pj_size_t len)
{
    struct app *app = pj_websock_get_user_data(ws);
    /* `data` is only valid during this call: print (or copy) it now. */
    if (opcode == PJ_WEBSOCK_OP_TEXT)
        printf("echo: %.*s\n", (int)len, (const char *)data);
    else
        printf("echo: <%zu bytes of binary data>\n", (size_t)len);
    fflush(stdout);
    pthread_mutex_lock(&app->lock);
    app->echoes++;
    pthread_cond_broadcast(&app->changed);
    pthread_mutex_unlock(&app->lock);
}

static void on_close(pj_websock *ws, pj_uint16_t code, const pj_str_t *reason)
{
    struct app *app = pj_websock_get_user_data(ws);
    pthread_mutex_lock(&app->lock);
    app->close_done = 1;
    app->close_code = code;
    snprintf(app->close_reason, sizeof(app->close_reason), "%.*s",
             reason ? (int)reason->slen : 0, reason && reason->ptr ? reason->ptr : "");
    pthread_cond_broadcast(&app->changed);
    pthread_mutex_unlock(&app->lock);
}

/* ---- waiting -------------------------------------------------------- */

/* Waits until *value >= target or the timeout expires; returns 1 if the
 * value was reached. `value` is only read with the lock held. */
static int wait_for(struct app *app, const int *value, int target, int timeout_ms)
{
    struct timespec deadline;
    int reached;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += timeout_ms / 1000;
    deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&app->lock);
    while (*value < target) {
        if (pthread_cond_timedwait(&app->changed, &app->lock, &deadline) == ETIMEDOUT)
            break;
    }
    reached = *value >= target;
    pthread_mutex_unlock(&app->lock);
    return reached;
}

int main(int argc, char **argv)
{
    static const char *default_msg[] = {"Hello, WebSocket!"};
    const char **msgs = default_msg;
    int n_msgs = 1;
    struct app app;
    pj_websock_param param;
    pj_websock *ws = NULL;
    pj_str_t url;
    pj_status_t status;
    int exit_code = 1;

    if (argc < 2) {
        fprintf(stderr, "usage: %s URL [message...]\n", argv[0]);
        return 2;
    }
    if (argc > 2) {
        msgs = (const char **)&argv[2];
        n_msgs = argc - 2;
    }

    memset(&app, 0, sizeof(app));
    pthread_mutex_init(&app.lock, NULL);
    pthread_cond_init(&app.changed, NULL);

    /* 1. Create the instance: defaults + our callbacks + our context. */
    pj_websock_param_default(&param);
    param.cb.on_connect = on_connect;
    param.cb.on_rx_msg = on_rx_msg;
    param.cb.on_close = on_close;
    param.user_data = &app;
    status = pj_websock_create(NULL, &param, &ws);
    if (status != PJ_SUCCESS) {
        print_error("pj_websock_create", status);
        return 1;
    }

    /* 2. Connect. This only starts the attempt; on_connect tells the end. */
    url.ptr = argv[1];
    url.slen = (pj_ssize_t)strlen(argv[1]);
    status = pj_websock_connect(ws, &url, NULL);
    if (status != PJ_SUCCESS) {
        print_error("pj_websock_connect", status);
        goto done;
    }
    if (!wait_for(&app, &app.connect_done, 1, TIMEOUT_MS)) {
        fprintf(stderr, "echo_client: no answer from %s\n", argv[1]);
        goto done;
    }
    if (app.connect_status != PJ_SUCCESS) {
        print_error("cannot connect", app.connect_status);
        goto done;
    }
    printf("connected to %s\n", argv[1]);

    /* 3. Send the messages; they leave in this order. */
    for (int i = 0; i < n_msgs; ++i) {
        status = pj_websock_send(ws, PJ_WEBSOCK_OP_TEXT, msgs[i], strlen(msgs[i]));
        if (status != PJ_SUCCESS) {
            print_error("pj_websock_send", status);
            goto done;
        }
        printf("sent: %s\n", msgs[i]);
    }
    fflush(stdout);

    /* 4. Wait for every echo. */
    if (!wait_for(&app, &app.echoes, n_msgs, TIMEOUT_MS)) {
        fprintf(stderr, "echo_client: only %d of %d echoes arrived\n", app.echoes, n_msgs);
        goto done;
    }

    /* 5. Close politely and wait for the server's answer. */
    pj_str_t reason = {(char *)"bye", 3};
    status = pj_websock_close(ws, 1000, &reason);
    if (status != PJ_SUCCESS) {
        print_error("pj_websock_close", status);
        goto done;
    }
    if (!wait_for(&app, &app.close_done, 1, TIMEOUT_MS)) {
        fprintf(stderr, "echo_client: the close handshake did not finish\n");
        goto done;
    }
    printf("closed: %u %s\n", app.close_code, app.close_reason);
    exit_code = app.close_code == 1000 ? 0 : 1;

done:
    /* 6. Destroy. No callback runs after this returns. */
    pj_websock_destroy(ws);
    pthread_cond_destroy(&app.changed);
    pthread_mutex_destroy(&app.lock);
    return exit_code;
}
