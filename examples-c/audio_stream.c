/*
 * audio_stream - stream audio to a speech-to-text style WebSocket service.
 *
 *     audio_stream URL FILE.wav|FILE.pcm [--token TOKEN]
 *
 * Sends the audio as it would come from a microphone: 640-byte BINARY
 * messages (20 ms of 16 kHz, 16-bit, mono PCM) every 20 ms, with an
 * "Authorization: Bearer TOKEN" header on the opening handshake (TOKEN from
 * --token or the PJWS_TOKEN environment variable). Every TEXT message the
 * service sends (partial and final transcripts) is printed. At the end it
 * sends the TEXT message {"type":"end"} and waits for the service to close
 * the connection; exits 0 when it closed with 1000.
 *
 * A .wav file is parsed (RIFF chunks: "fmt " must say 16 kHz, 16-bit mono
 * PCM, "data" holds the samples); anything else is taken as raw PCM.
 *
 * Build:
 *     cc -std=c11 audio_stream.c -lpjwebsock -lpthread -o audio_stream
 *
 * Things worth copying:
 *  - real-time pacing with absolute deadlines (no drift);
 *  - back-pressure: if the network falls behind, pj_websock_send() returns
 *    PJ_EBUSY instead of queueing without bound; a live stream drops that
 *    frame (and says so) rather than falling further behind;
 *  - the service's results arrive on the library's event thread while the
 *    main thread keeps sending.
 */
/* clock_gettime, clock_nanosleep, pthread_cond_timedwait under -std=c11 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <pjwebsock/websock.h>

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define FRAME_BYTES   640      /* 20 ms at 16 kHz, 16-bit mono */
#define FRAME_MS      20
#define TIMEOUT_MS    10000

struct app {
    pthread_mutex_t lock;
    pthread_cond_t changed;
    int connect_done;
    pj_status_t connect_status;
    int texts;                  /* TEXT messages received */
    int close_done;
    unsigned close_code;
    char close_reason[128];
};

static void print_error(const char *what, pj_status_t status)
{
    char buf[160];
    pj_websock_strerror(status, buf, sizeof(buf));
    fprintf(stderr, "audio_stream: %s: %s (%d)\n", what, buf, status);
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
    if (opcode == PJ_WEBSOCK_OP_TEXT) {
        printf("server: %.*s\n", (int)len, (const char *)data);
        fflush(stdout);
        pthread_mutex_lock(&app->lock);
        app->texts++;
        pthread_cond_broadcast(&app->changed);
        pthread_mutex_unlock(&app->lock);
    } else {
        printf("server: <%zu bytes of binary data>\n", (size_t)len);
    }
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

/* ---- audio file ------------------------------------------------------ */

static uint32_t le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint16_t le16(const unsigned char *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

/* Reads the whole file; for a WAV file returns the "data" chunk. */
static unsigned char *load_audio(const char *path, size_t *len, size_t *offset)
{
    FILE *f = fopen(path, "rb");
    unsigned char *buf;
    long size;
    if (!f) {
        fprintf(stderr, "audio_stream: %s: %s\n", path, strerror(errno));
        return NULL;
    }
    if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fprintf(stderr, "audio_stream: %s: cannot get the size\n", path);
        fclose(f);
        return NULL;
    }
    buf = malloc(size ? (size_t)size : 1);
    if (!buf || fread(buf, 1, (size_t)size, f) != (size_t)size) {
        fprintf(stderr, "audio_stream: %s: read error\n", path);
        free(buf);
        fclose(f);
        return NULL;
    }
    fclose(f);
    *offset = 0;
    *len = (size_t)size;

    if (size >= 12 && memcmp(buf, "RIFF", 4) == 0 && memcmp(buf + 8, "WAVE", 4) == 0) {
        size_t pos = 12;
        int have_fmt = 0;
        while (pos + 8 <= (size_t)size) {
            const unsigned char *ck = buf + pos;
            size_t ck_len = le32(ck + 4);
            size_t body = pos + 8;
            if (memcmp(ck, "fmt ", 4) == 0 && ck_len >= 16 && body + 16 <= (size_t)size) {
                unsigned fmt = le16(buf + body), channels = le16(buf + body + 2);
                unsigned rate = le32(buf + body + 4), bits = le16(buf + body + 14);
                have_fmt = 1;
                if (fmt != 1 || channels != 1 || rate != 16000 || bits != 16)
                    fprintf(stderr,
                            "audio_stream: warning: %s is format %u, %u channel(s), %u Hz, %u bits; "
                            "the service expects 16 kHz 16-bit mono PCM\n",
                            path, fmt, channels, rate, bits);
            } else if (memcmp(ck, "data", 4) == 0) {
                if (!have_fmt)
                    fprintf(stderr, "audio_stream: warning: %s has no fmt chunk before data\n", path);
                *offset = body;
                *len = ck_len <= (size_t)size - body ? ck_len : (size_t)size - body;
                return buf;
            }
            pos = body + ck_len + (ck_len & 1); /* chunks are padded to even sizes */
        }
        fprintf(stderr, "audio_stream: %s: WAV file without a data chunk\n", path);
        free(buf);
        return NULL;
    }
    return buf; /* raw PCM */
}

static void add_ms(struct timespec *t, long ms)
{
    t->tv_nsec += ms * 1000000L;
    while (t->tv_nsec >= 1000000000L) {
        t->tv_sec++;
        t->tv_nsec -= 1000000000L;
    }
}

int main(int argc, char **argv)
{
    const char *url_arg = NULL, *file = NULL, *token = getenv("PJWS_TOKEN");
    struct app app;
    pj_websock_param param;
    pj_websock_connect_param cparam;
    pj_websock *ws = NULL;
    pj_status_t status;
    unsigned char *audio = NULL;
    size_t audio_len = 0, audio_off = 0;
    char auth[512];
    int exit_code = 1;

    for (int i = 1; i < argc; ++i) {
        if (strcmp(argv[i], "--token") == 0 && i + 1 < argc)
            token = argv[++i];
        else if (!url_arg)
            url_arg = argv[i];
        else if (!file)
            file = argv[i];
        else
            url_arg = NULL, i = argc; /* too many arguments */
    }
    if (!url_arg || !file) {
        fprintf(stderr, "usage: %s URL FILE.wav|FILE.pcm [--token TOKEN]  (or PJWS_TOKEN=TOKEN)\n", argv[0]);
        return 2;
    }
    audio = load_audio(file, &audio_len, &audio_off);
    if (!audio)
        return 1;
    printf("streaming %zu bytes (%.2f s) of audio from %s\n", audio_len, audio_len / 32000.0, file);

    memset(&app, 0, sizeof(app));
    pthread_mutex_init(&app.lock, NULL);
    pthread_cond_init(&app.changed, NULL);

    pj_websock_param_default(&param);
    param.cb.on_connect = on_connect;
    param.cb.on_rx_msg = on_rx_msg;
    param.cb.on_close = on_close;
    param.user_data = &app;
    status = pj_websock_create(NULL, &param, &ws);
    if (status != PJ_SUCCESS) {
        print_error("pj_websock_create", status);
        free(audio);
        return 1;
    }

    /* The handshake carries the credentials as an extra header. The strings
     * only need to live until pj_websock_connect() returns. */
    pj_websock_connect_param_default(&cparam);
    if (token && *token) {
        snprintf(auth, sizeof(auth), "Bearer %s", token);
        cparam.extra_hdr.count = 1;
        cparam.extra_hdr.header[0].name.ptr = (char *)"Authorization";
        cparam.extra_hdr.header[0].name.slen = 13;
        cparam.extra_hdr.header[0].value.ptr = auth;
        cparam.extra_hdr.header[0].value.slen = (pj_ssize_t)strlen(auth);
    } else {
        fprintf(stderr, "audio_stream: warning: no token (--token or PJWS_TOKEN)\n");
    }

    pj_str_t url = {(char *)url_arg, (pj_ssize_t)strlen(url_arg)};
    status = pj_websock_connect(ws, &url, &cparam);
    if (status != PJ_SUCCESS) {
        print_error("pj_websock_connect", status);
        goto done;
    }
    if (!wait_for(&app, &app.connect_done, 1, TIMEOUT_MS)) {
        fprintf(stderr, "audio_stream: no answer from %s\n", url_arg);
        goto done;
    }
    if (app.connect_status != PJ_SUCCESS) {
        print_error("cannot connect", app.connect_status);
        goto done;
    }
    printf("connected to %s\n", url_arg);
    fflush(stdout);

    /* Real-time pacing: frame k leaves at start + k * 20 ms. */
    struct timespec next;
    size_t sent = 0, frames = 0, dropped = 0;
    clock_gettime(CLOCK_MONOTONIC, &next);
    while (sent < audio_len) {
        size_t n = audio_len - sent < FRAME_BYTES ? audio_len - sent : FRAME_BYTES;
        if (pj_websock_get_state(ws) != PJ_WEBSOCK_STATE_OPEN) {
            fprintf(stderr, "audio_stream: the connection ended while streaming\n");
            goto done;
        }
        status = pj_websock_send(ws, PJ_WEBSOCK_OP_BIN, audio + audio_off + sent, n);
        if (status == PJ_EBUSY) {
            dropped++; /* the network is behind: drop this frame, stay live */
        } else if (status != PJ_SUCCESS) {
            print_error("pj_websock_send", status);
            goto done;
        }
        sent += n;
        frames++;
        add_ms(&next, FRAME_MS);
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) == EINTR) {
        }
    }
    printf("sent %zu frames (%zu bytes)%s\n", frames, sent, dropped ? ", some dropped (PJ_EBUSY)" : "");
    if (dropped)
        printf("dropped %zu frames because the send queue was full\n", dropped);

    /* Tell the service we are done and wait for its final answer + close. */
    static const char end_msg[] = "{\"type\":\"end\"}";
    status = pj_websock_send(ws, PJ_WEBSOCK_OP_TEXT, end_msg, sizeof(end_msg) - 1);
    if (status != PJ_SUCCESS) {
        print_error("pj_websock_send(end)", status);
        goto done;
    }
    if (!wait_for(&app, &app.close_done, 1, TIMEOUT_MS)) {
        fprintf(stderr, "audio_stream: the service did not close the connection\n");
        pj_websock_close(ws, 1000, NULL);
        wait_for(&app, &app.close_done, 1, 2000);
        goto done;
    }
    printf("closed by the service: %u %s\n", app.close_code, app.close_reason);
    exit_code = app.close_code == 1000 ? 0 : 1;

done:
    pj_websock_destroy(ws);
    pthread_cond_destroy(&app.changed);
    pthread_mutex_destroy(&app.lock);
    free(audio);
    return exit_code;
}
