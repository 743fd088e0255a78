/*
 * hload: a small closed-loop HTTP/1.1 load generator for the small_requests scenario.
 *
 * Why not wrk: wrk 4.1 (Debian 12) does not tell its parser that a request was HEAD, so it
 * waits for the Content-Length bytes of a HEAD response that never come and measures
 * nothing. This tool keeps C speed (one epoll thread costs a few microseconds per
 * request, far below what the registries need), understands HEAD, and checks every
 * response: the status and, with -x, one header's exact value (Docker-Content-Digest), so a
 * fast wrong answer counts as an error, not as throughput.
 *
 * usage: hload -c CONNS -d SECONDS [-m METHOD] [-H 'Name: value']... [-x 'name: value']
 *              [-s STATUS] [-t TIMEOUT_MS] HOST PORT PATH
 * prints one JSON object on stdout.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUFSZ 65536
#define MAXHDR 32

enum { CONNECTING, WRITING, READING };

typedef struct {
    int fd;
    int state;
    size_t sent;
    size_t len;
    uint64_t t_start;
    char buf[BUFSZ];
} conn_t;

static struct sockaddr_in addr;
static char *req;
static size_t req_len;
static int is_head;
static int want_status = 200;
static char *expect_name, *expect_value;
static size_t expect_name_len;
static int epfd;
static uint32_t *lat;
static size_t nlat, caplat;
static uint64_t n_connect_err, n_read_err, n_write_err, n_status_err, n_header_err, n_timeout;
static uint64_t deadline_us;

static uint64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void die(const char *msg) {
    fprintf(stderr, "hload: %s: %s\n", msg, strerror(errno));
    exit(2);
}

static void record(uint64_t us) {
    if (nlat == caplat) {
        caplat = caplat ? caplat * 2 : 65536;
        lat = realloc(lat, caplat * sizeof *lat);
        if (!lat) die("realloc");
    }
    lat[nlat++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
}

static void watch(conn_t *c, uint32_t events, int op) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(epfd, op, c->fd, &ev) < 0) die("epoll_ctl");
}

static void open_conn(conn_t *c) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0) die("socket");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->state = CONNECTING;
    c->len = c->sent = 0;
    c->t_start = now_us();
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        n_connect_err++;
    }
    watch(c, EPOLLOUT, EPOLL_CTL_ADD);
}

static void reopen(conn_t *c) {
    close(c->fd); /* also removes it from the epoll set */
    if (n_connect_err + n_read_err + n_write_err > 100000) {
        fprintf(stderr, "hload: too many socket errors, giving up\n");
        exit(3);
    }
    open_conn(c);
}

static void send_request(conn_t *c) {
    while (c->sent < req_len) {
        ssize_t n = write(c->fd, req + c->sent, req_len - c->sent);
        if (n < 0) {
            if (errno == EAGAIN) {
                if (c->state != WRITING) watch(c, EPOLLOUT, EPOLL_CTL_MOD);
                c->state = WRITING;
                return;
            }
            n_write_err++;
            reopen(c);
            return;
        }
        c->sent += (size_t)n;
    }
    c->state = READING;
    watch(c, EPOLLIN, EPOLL_CTL_MOD);
}

static void start_request(conn_t *c) {
    c->sent = c->len = 0;
    c->t_start = now_us();
    c->state = WRITING;
    send_request(c);
}

/* Returns 1 when buf holds a whole response; fills status, close flag, header check. */
static int parse(conn_t *c, int *status, int *must_close, int *header_ok) {
    char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
    if (!end) return 0;
    size_t head_len = (size_t)(end - c->buf) + 4;
    if (c->len < 12) return 0;
    *status = atoi(c->buf + 9);
    *must_close = 0;
    *header_ok = expect_name == NULL;
    long content_length = -1;
    int chunked = 0;
    char *line = memchr(c->buf, '\n', head_len) + 1;
    while (line < end) {
        char *eol = memchr(line, '\r', (size_t)(end + 2 - line));
        char *colon = memchr(line, ':', (size_t)(eol - line));
        if (colon) {
            size_t nlen = (size_t)(colon - line);
            char *v = colon + 1;
            while (v < eol && (*v == ' ' || *v == '\t')) v++;
            size_t vlen = (size_t)(eol - v);
            while (vlen && (v[vlen - 1] == ' ' || v[vlen - 1] == '\t')) vlen--;
            if (nlen == 14 && !strncasecmp(line, "content-length", 14)) {
                content_length = strtol(v, NULL, 10);
            } else if (nlen == 17 && !strncasecmp(line, "transfer-encoding", 17)) {
                chunked = memmem(v, vlen, "chunked", 7) != NULL;
            } else if (nlen == 10 && !strncasecmp(line, "connection", 10)) {
                *must_close = vlen == 5 && !strncasecmp(v, "close", 5);
            }
            if (expect_name && nlen == expect_name_len && !strncasecmp(line, expect_name, nlen)) {
                *header_ok = vlen == strlen(expect_value) && !memcmp(v, expect_value, vlen);
            }
        }
        line = eol + 2;
    }
    if (is_head || *status == 204 || *status == 304) return 1;
    if (chunked) return c->len >= head_len + 5 && !memcmp(c->buf + c->len - 5, "0\r\n\r\n", 5);
    if (content_length >= 0) return c->len >= head_len + (size_t)content_length;
    *must_close = 1; /* body until close: not expected from a registry */
    return 0;
}

static void on_readable(conn_t *c) {
    for (;;) {
        if (c->len == BUFSZ) { /* a response this large is not a small request */
            n_read_err++;
            reopen(c);
            return;
        }
        ssize_t n = read(c->fd, c->buf + c->len, BUFSZ - c->len);
        if (n == 0 || (n < 0 && errno != EAGAIN)) {
            n_read_err++;
            reopen(c);
            return;
        }
        if (n < 0) return; /* EAGAIN: wait for more */
        c->len += (size_t)n;
        int status, must_close, header_ok;
        if (!parse(c, &status, &must_close, &header_ok)) continue;
        uint64_t t = now_us();
        if (t <= deadline_us) {
            record(t - c->t_start);
            if (status != want_status) n_status_err++;
            else if (!header_ok) n_header_err++;
        }
        if (must_close) {
            reopen(c);
            return;
        }
        start_request(c);
        return;
    }
}

static void on_event(conn_t *c, uint32_t events) {
    if (c->state == CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err || (events & (EPOLLERR | EPOLLHUP))) {
            n_connect_err++;
            usleep(1000);
            reopen(c);
            return;
        }
        start_request(c);
    } else if (c->state == WRITING) {
        send_request(c);
    } else {
        on_readable(c);
    }
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static double pct(double p) {
    if (!nlat) return 0;
    size_t i = (size_t)(p / 100.0 * (double)(nlat - 1) + 0.5);
    return lat[i] / 1000.0;
}

int main(int argc, char **argv) {
    int conns = 1, opt;
    double seconds = 5;
    long timeout_ms = 5000;
    const char *method = "GET";
    char *headers[MAXHDR];
    int nheaders = 0;
    while ((opt = getopt(argc, argv, "c:d:m:H:x:s:t:")) != -1) {
        switch (opt) {
        case 'c': conns = atoi(optarg); break;
        case 'd': seconds = atof(optarg); break;
        case 'm': method = optarg; break;
        case 'H': if (nheaders < MAXHDR) headers[nheaders++] = optarg; break;
        case 'x': {
            char *colon = strchr(optarg, ':');
            if (!colon) { fprintf(stderr, "hload: -x wants 'name: value'\n"); return 2; }
            expect_name = optarg;
            expect_name_len = (size_t)(colon - optarg);
            expect_value = colon + 1;
            while (*expect_value == ' ') expect_value++;
            break;
        }
        case 's': want_status = atoi(optarg); break;
        case 't': timeout_ms = atol(optarg); break;
        default: fprintf(stderr, "usage: hload -c N -d S [-m M] [-H h]... [-x h] HOST PORT PATH\n"); return 2;
        }
    }
    if (argc - optind != 3 || conns < 1 || seconds <= 0) {
        fprintf(stderr, "usage: hload -c N -d S [-m M] [-H h]... [-x h] HOST PORT PATH\n");
        return 2;
    }
    const char *host = argv[optind], *port = argv[optind + 1], *path = argv[optind + 2];
    is_head = !strcmp(method, "HEAD");
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)atoi(port));
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) { fprintf(stderr, "hload: bad host\n"); return 2; }

    size_t cap = 1024 + strlen(path) + strlen(host);
    for (int i = 0; i < nheaders; i++) cap += strlen(headers[i]) + 2;
    req = malloc(cap);
    int off = snprintf(req, cap, "%s %s HTTP/1.1\r\nHost: %s:%s\r\nUser-Agent: hload\r\n", method, path, host, port);
    for (int i = 0; i < nheaders; i++) off += snprintf(req + off, cap - (size_t)off, "%s\r\n", headers[i]);
    off += snprintf(req + off, cap - (size_t)off, "\r\n");
    req_len = (size_t)off;

    epfd = epoll_create1(0);
    if (epfd < 0) die("epoll_create1");
    conn_t *cs = calloc((size_t)conns, sizeof *cs);
    if (!cs) die("calloc");
    uint64_t start = now_us();
    deadline_us = start + (uint64_t)(seconds * 1e6);
    for (int i = 0; i < conns; i++) open_conn(&cs[i]);
    struct epoll_event evs[256];
    uint64_t last_sweep = start;
    for (;;) {
        uint64_t t = now_us();
        if (t >= deadline_us) break;
        int wait_ms = (int)((deadline_us - t) / 1000) + 1;
        if (wait_ms > 50) wait_ms = 50;
        int n = epoll_wait(epfd, evs, 256, wait_ms);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        for (int i = 0; i < n; i++) on_event(evs[i].data.ptr, evs[i].events);
        t = now_us();
        if (t - last_sweep > 100000) { /* per-request timeouts */
            last_sweep = t;
            for (int i = 0; i < conns; i++) {
                if (t - cs[i].t_start > (uint64_t)timeout_ms * 1000u) {
                    n_timeout++;
                    reopen(&cs[i]);
                }
            }
        }
    }
    double elapsed = (double)(deadline_us - start) / 1e6;
    qsort(lat, nlat, sizeof *lat, cmp_u32);
    double sum = 0;
    for (size_t i = 0; i < nlat; i++) sum += lat[i];
    printf("{\"requests\": %zu, \"seconds\": %.3f, \"rps\": %.1f, \"p50_ms\": %.3f, "
           "\"p90_ms\": %.3f, \"p99_ms\": %.3f, \"max_ms\": %.3f, \"mean_ms\": %.3f, "
           "\"errors\": {\"connect\": %lu, \"read\": %lu, \"write\": %lu, \"status\": %lu, "
           "\"header\": %lu, \"timeout\": %lu}}\n",
           nlat, elapsed, (double)nlat / elapsed, pct(50), pct(90), pct(99),
           nlat ? lat[nlat - 1] / 1000.0 : 0.0, nlat ? sum / (double)nlat / 1000.0 : 0.0,
           (unsigned long)n_connect_err, (unsigned long)n_read_err, (unsigned long)n_write_err,
           (unsigned long)n_status_err, (unsigned long)n_header_err, (unsigned long)n_timeout);
    return 0;
}
