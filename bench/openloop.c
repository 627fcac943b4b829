/*
 * openloop: an open-loop HTTP/1.1 load generator (Linux, epoll, one thread).
 *
 * Request i is due at t0 + i/R (or at the i-th point of a seeded Poisson process with --poisson). When it
 * falls due it is sent on an idle keep-alive connection; when all connections are busy it waits in a FIFO
 * backlog and goes out as soon as one frees up. Its latency is measured from its SCHEDULED time to the
 * end of its response, so server stalls and the backlog they cause are counted in full (no coordinated
 * omission, as in wrk2). The send-to-response time is reported separately as "service_ms".
 *
 * Timing: CLOCK_MONOTONIC; the loop sleeps in epoll_wait on a timerfd armed (absolute, ns resolution) for
 * the next due time, request deadline or reconnect, so nothing spins. Latencies are kept exactly (an
 * array of nanoseconds sorted at the end; percentiles by nearest rank).
 *
 * Timeouts: a request that has no complete response --timeout seconds after its scheduled time is an
 * error ("timeout"): if it was sent its connection is closed and reopened, if it was still in the
 * backlog it is dropped unsent. So the run ends at most --timeout seconds after the last due time.
 *
 * Responses: status line, headers, Content-Length body (none for 1xx/204/304; read-until-close when a
 * response has neither Content-Length nor Transfer-Encoding). Transfer-Encoding (chunked) is unsupported
 * and counted as a parse error. One request in flight per connection (no pipelining). A connection the
 * server closes (or answers with "Connection: close") is reopened and counted in "reconnects".
 *
 * Output: one JSON object on stdout. Counts are of the MEASURED requests (scheduled after the warm-up):
 * scheduled = completed + errors always holds once the run ends; "sent" < "scheduled" means requests
 * timed out in the backlog. rate_achieved = responses (to any request) completed inside the measurement
 * window / its length, i.e. the throughput the server sustained; drain_ms = how long after the window the
 * last measured response arrived. max_queue = the largest backlog of due-but-unsent requests (all
 * connections busy). behind_schedule_ms = the generator's own lateness: the largest delay between a
 * request's due time and its send when a connection WAS idle and nothing was queued ahead of it (wake-up
 * latency, preemption); late_sends_over_1ms/10ms count such sends. Latency percentiles: "latency_ms" from
 * the scheduled time, "service_ms" from the actual send (their difference is the client-side backlog).
 * Exit status 0 on a completed run, 2 on bad arguments or when no connection could be opened at all.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

typedef int64_t ns_t;
#define NS_PER_S 1000000000LL
#define NS_PER_MS 1000000LL
#define NS_INF INT64_MAX
#define MAX_HEAD (64 * 1024)
#define READ_CHUNK (16 * 1024)
#define MAX_EVENTS 256
#define TIMER_ID UINT64_MAX
#define BACKOFF_MIN (1 * NS_PER_MS)
#define BACKOFF_MAX (100 * NS_PER_MS)

enum cstate { C_WAIT_RECONNECT, C_CONNECTING, C_IDLE, C_BUSY };
enum rstate { R_HEAD, R_BODY, R_UNTIL_CLOSE };
enum ekind { E_READ, E_WRITE, E_TIMEOUT, E_PARSE, E_KINDS };
static const char *EKIND_NAMES[E_KINDS] = {"read", "write", "timeout", "parse"};

struct conn {
    int fd;
    uint32_t gen;          /* bumped for every new socket: stale epoll events are ignored */
    enum cstate st;
    uint32_t events;       /* currently registered epoll events */
    ns_t deadline;         /* connect deadline (C_CONNECTING) or retry time (C_WAIT_RECONNECT) */
    ns_t backoff;
    int64_t req;           /* request in flight (C_BUSY) */
    ns_t sent_at;
    const char *wbuf;
    size_t wlen, woff;
    char *own_wbuf;        /* per-connection buffer when requests differ (token file) */
    char *rbuf;
    size_t rlen, scanned;
    enum rstate rs;
    int64_t body_left;
    int status, close_after;
};

/* ---- configuration ---------------------------------------------------------------------------------- */
static const char *opt_host, *opt_port_s, *opt_path = "/", *opt_tokens, *opt_template;
static int opt_port, opt_connections = 64, opt_poisson;
static double opt_rate, opt_duration, opt_warmup, opt_timeout = 5.0;
static uint64_t opt_seed = 1;
static int64_t opt_token_offset;
static char **opt_headers;
static int n_headers;

/* ---- state ------------------------------------------------------------------------------------------- */
static struct sockaddr_storage addr;
static socklen_t addrlen;
static int epfd, tfd;
static struct conn *conns;
static int n_idle, n_busy, rr;

static char *req_head;         /* request line + headers, up to the token header */
static size_t req_head_len;
static const char *tpl_pre, *tpl_post; /* token header around %s */
static size_t tpl_pre_len, tpl_post_len;
static char **tokens;
static size_t *token_lens, n_tokens, max_token_len;
static int tokens_wrapped;

static ns_t *due;              /* due times relative to t0 */
static int64_t n_total, first_measured;
static int64_t next_sched, qhead; /* backlog = [qhead, next_sched) */
static ns_t t0, warm_end, sched_end;

static ns_t *lat, *svc;
static int64_t n_lat;
static int64_t m_sent, m_completed, m_errors, m_ekind[E_KINDS], m_status[6];
static int64_t w_sent, w_completed, w_errors;
static int64_t connect_errors, reconnects, max_queue;
static ns_t lag_max, lag_sum;
static int64_t lag_n, lag_over_1ms, lag_over_10ms;
static ns_t last_measured_done;
static int64_t window_done; /* responses (to any request) completed inside the measurement window */

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("openloop: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) die("out of memory (%zu bytes)", n);
    return p;
}

static ns_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (ns_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

static int measured(int64_t i) { return i >= first_measured; }

/* ---- epoll helpers ----------------------------------------------------------------------------------- */
static void ep_set(struct conn *c, uint32_t events) {
    if (c->events == events) return;
    struct epoll_event ev = {.events = events, .data.u64 = ((uint64_t)c->gen << 32) | (uint64_t)(c - conns)};
    if (epoll_ctl(epfd, c->events ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl: %s", strerror(errno));
    c->events = events;
}

static void set_state(struct conn *c, enum cstate st) {
    if (c->st == C_IDLE) n_idle--;
    if (c->st == C_BUSY) n_busy--;
    c->st = st;
    if (st == C_IDLE) n_idle++;
    if (st == C_BUSY) n_busy++;
}

static void close_fd(struct conn *c) {
    if (c->fd >= 0) close(c->fd); /* also removes it from the epoll set */
    c->fd = -1;
    c->events = 0;
}

static void reset_read(struct conn *c) {
    c->rlen = c->scanned = 0;
    c->rs = R_HEAD;
    c->body_left = 0;
    c->status = 0;
    c->close_after = 0;
}

/* ---- connections ------------------------------------------------------------------------------------- */
static void connect_failed(struct conn *c);

static void connected(struct conn *c) {
    c->backoff = BACKOFF_MIN;
    reset_read(c);
    set_state(c, C_IDLE);
    ep_set(c, EPOLLIN | EPOLLRDHUP);
}

static void start_connect(struct conn *c) {
    close_fd(c);
    c->gen++;
    c->fd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) die("socket: %s", strerror(errno));
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)&addr, addrlen) == 0) {
        connected(c);
        return;
    }
    if (errno == EINPROGRESS) {
        set_state(c, C_CONNECTING);
        c->deadline = now_ns() + (ns_t)(opt_timeout * NS_PER_S);
        ep_set(c, EPOLLOUT);
        return;
    }
    connect_failed(c);
}

static void connect_failed(struct conn *c) {
    connect_errors++;
    close_fd(c);
    set_state(c, C_WAIT_RECONNECT);
    c->deadline = now_ns() + c->backoff;
    c->backoff = c->backoff * 2 > BACKOFF_MAX ? BACKOFF_MAX : c->backoff * 2;
}

static int started; /* the schedule is running (after the connect phase) */

/* The server closed the connection, or we gave up on it: open a new one right away, unless every request
 * has been sent already (then it would only be opened to be closed). */
static void reconnect(struct conn *c) {
    if (started && next_sched == n_total && qhead == n_total) {
        close_fd(c);
        set_state(c, C_WAIT_RECONNECT);
        c->deadline = NS_INF;
        return;
    }
    reconnects++;
    start_connect(c);
}

/* ---- requests ---------------------------------------------------------------------------------------- */
static void count_error(int64_t i, enum ekind kind) {
    if (measured(i)) {
        m_errors++;
        m_ekind[kind]++;
    } else {
        w_errors++;
    }
}

static void request_failed(struct conn *c, enum ekind kind) {
    count_error(c->req, kind);
    reconnect(c);
}

static void do_write(struct conn *c) {
    while (c->woff < c->wlen) {
        ssize_t n = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            c->woff += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            ep_set(c, EPOLLIN | EPOLLRDHUP | EPOLLOUT);
            return;
        } else {
            request_failed(c, E_WRITE);
            return;
        }
    }
    ep_set(c, EPOLLIN | EPOLLRDHUP);
}

static void send_request(struct conn *c, int64_t i) {
    c->req = i;
    if (tokens) {
        size_t k = (size_t)(((uint64_t)opt_token_offset + (uint64_t)i) % n_tokens);
        if ((uint64_t)opt_token_offset + (uint64_t)i >= n_tokens) tokens_wrapped = 1;
        char *p = c->own_wbuf;
        memcpy(p, req_head, req_head_len), p += req_head_len;
        memcpy(p, tpl_pre, tpl_pre_len), p += tpl_pre_len;
        memcpy(p, tokens[k], token_lens[k]), p += token_lens[k];
        memcpy(p, tpl_post, tpl_post_len), p += tpl_post_len;
        memcpy(p, "\r\n\r\n", 4), p += 4;
        c->wbuf = c->own_wbuf;
        c->wlen = (size_t)(p - c->own_wbuf);
    } else {
        c->wbuf = req_head;
        c->wlen = req_head_len;
    }
    c->woff = 0;
    reset_read(c);
    set_state(c, C_BUSY);
    if (measured(i)) m_sent++;
    else w_sent++;
    c->sent_at = now_ns();
    do_write(c);
}

static struct conn *find_idle(void) {
    int n = opt_connections;
    for (int k = 0; k < n; k++) {
        int j = (rr + k) % n;
        if (conns[j].st == C_IDLE) {
            rr = (j + 1) % n;
            return &conns[j];
        }
    }
    return NULL;
}

/* Send the backlog, oldest first, while connections are idle. */
static void dispatch(void) {
    while (qhead < next_sched && n_idle > 0) {
        struct conn *c = find_idle();
        if (!c) break;
        send_request(c, qhead++);
    }
}

static void completed(struct conn *c) {
    ns_t t = now_ns();
    int64_t i = c->req;
    if (t >= t0 + warm_end && t < t0 + sched_end) window_done++;
    if (measured(i)) {
        lat[n_lat] = t - (t0 + due[i]);
        svc[n_lat] = t - c->sent_at;
        n_lat++;
        m_completed++;
        int cls = c->status / 100;
        m_status[cls >= 1 && cls <= 5 ? cls : 0]++;
        if (t > last_measured_done) last_measured_done = t;
    } else {
        w_completed++;
    }
    if (c->close_after || c->woff < c->wlen) {
        reconnect(c);
    } else {
        reset_read(c);
        set_state(c, C_IDLE);
        dispatch();
    }
}

/* ---- response parsing -------------------------------------------------------------------------------- */
static int header_is(const char *line, size_t len, const char *name, const char **value, size_t *vlen) {
    size_t n = strlen(name);
    if (len <= n || line[n] != ':' || strncasecmp(line, name, n) != 0) return 0;
    const char *v = line + n + 1, *end = line + len;
    while (v < end && (*v == ' ' || *v == '\t')) v++;
    while (end > v && (end[-1] == ' ' || end[-1] == '\t')) end--;
    *value = v;
    *vlen = (size_t)(end - v);
    return 1;
}

static int contains_token(const char *v, size_t n, const char *tok) {
    size_t t = strlen(tok);
    for (size_t k = 0; k + t <= n; k++)
        if (strncasecmp(v + k, tok, t) == 0) return 1;
    return 0;
}

/* Parse the head in c->rbuf[0..head_len); returns 0 and sets status/body/close flags, or -1. */
static int parse_head(struct conn *c, size_t head_len, int64_t *body_len) {
    const char *p = c->rbuf, *end = c->rbuf + head_len - 2; /* up to the blank line's CRLF */
    const char *eol = memmem(p, (size_t)(end - p), "\r\n", 2);
    if (!eol || eol - p < 12 || memcmp(p, "HTTP/1.", 7) != 0 || p[8] != ' ') return -1;
    int minor = p[7] - '0';
    if (p[9] < '1' || p[9] > '5' || p[10] < '0' || p[10] > '9' || p[11] < '0' || p[11] > '9') return -1;
    if (eol - p > 12 && p[12] != ' ') return -1;
    c->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    int64_t cl = -1;
    int keep_alive = 0, close_hdr = 0, te = 0;
    for (p = eol + 2; p < end; p = eol + 2) {
        eol = memmem(p, (size_t)(end + 2 - p), "\r\n", 2);
        if (!eol) return -1;
        const char *v;
        size_t vlen;
        size_t len = (size_t)(eol - p);
        if (header_is(p, len, "content-length", &v, &vlen)) {
            if (vlen == 0 || vlen > 18) return -1;
            int64_t x = 0;
            for (size_t k = 0; k < vlen; k++) {
                if (v[k] < '0' || v[k] > '9') return -1;
                x = x * 10 + (v[k] - '0');
            }
            if (cl >= 0 && cl != x) return -1;
            cl = x;
        } else if (header_is(p, len, "transfer-encoding", &v, &vlen)) {
            te = 1;
        } else if (header_is(p, len, "connection", &v, &vlen)) {
            if (contains_token(v, vlen, "close")) close_hdr = 1;
            if (contains_token(v, vlen, "keep-alive")) keep_alive = 1;
        }
    }
    if (te) return -1;                           /* chunked (or any transfer coding): unsupported */
    if (c->status < 200) return -1;              /* interim responses: not expected for a plain GET */
    c->close_after = close_hdr || (minor == 0 && !keep_alive);
    if (c->status == 204 || c->status == 304) *body_len = 0;
    else *body_len = cl;                         /* -1: read until close */
    return 0;
}

/* Process c->rbuf[0..rlen) in R_HEAD: returns 1 when the response completed or failed (c is done). */
static int process_head(struct conn *c) {
    size_t from = c->scanned > 3 ? c->scanned - 3 : 0;
    char *hit = memmem(c->rbuf + from, c->rlen - from, "\r\n\r\n", 4);
    if (!hit) {
        c->scanned = c->rlen;
        if (c->rlen >= MAX_HEAD) {
            request_failed(c, E_PARSE);
            return 1;
        }
        return 0;
    }
    size_t head_len = (size_t)(hit - c->rbuf) + 4;
    int64_t body_len;
    if (parse_head(c, head_len, &body_len) < 0) {
        request_failed(c, E_PARSE);
        return 1;
    }
    int64_t extra = (int64_t)(c->rlen - head_len);
    if (body_len < 0) {
        c->rs = R_UNTIL_CLOSE;
        c->close_after = 1;
        return 0;
    }
    c->body_left = body_len - extra;
    if (c->body_left < 0) { /* bytes beyond the response: we never pipeline, so the framing is wrong */
        request_failed(c, E_PARSE);
        return 1;
    }
    if (c->body_left == 0) {
        completed(c);
        return 1;
    }
    c->rs = R_BODY;
    return 0;
}

static void do_read(struct conn *c) {
    for (;;) {
        char *buf = c->rbuf;
        size_t cap = MAX_HEAD;
        if (c->rs == R_HEAD) buf += c->rlen, cap -= c->rlen;
        if (cap > READ_CHUNK) cap = READ_CHUNK;
        ssize_t n = recv(c->fd, buf, cap, 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            request_failed(c, E_READ);
            return;
        }
        if (n == 0) {
            if (c->rs == R_UNTIL_CLOSE) completed(c); /* close_after is set: reconnects */
            else request_failed(c, E_READ);
            return;
        }
        if (c->rs == R_HEAD) {
            c->rlen += (size_t)n;
            if (process_head(c)) return;
        } else if (c->rs == R_BODY) {
            c->body_left -= n;
            if (c->body_left < 0) {
                request_failed(c, E_PARSE);
                return;
            }
            if (c->body_left == 0) {
                completed(c);
                return;
            }
        }
        /* R_UNTIL_CLOSE: discard */
    }
}

/* An idle connection became readable: the server closed it (or sent something unasked). */
static void idle_readable(struct conn *c) {
    char b[512];
    ssize_t n = recv(c->fd, b, sizeof b, 0);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    reconnect(c);
}

static void on_event(uint64_t data, uint32_t ev) {
    struct conn *c = &conns[(uint32_t)data];
    if ((uint32_t)(data >> 32) != c->gen || c->fd < 0) return; /* for a socket closed earlier in this batch */
    switch (c->st) {
    case C_CONNECTING: {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
        if (err) connect_failed(c);
        else if (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)) connected(c);
        break;
    }
    case C_IDLE:
        idle_readable(c);
        break;
    case C_BUSY:
        if ((ev & EPOLLOUT) && c->woff < c->wlen) {
            do_write(c);
            if (c->st != C_BUSY || (uint32_t)(data >> 32) != c->gen) return;
        }
        if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) do_read(c);
        break;
    case C_WAIT_RECONNECT:
        break;
    }
}

/* ---- scheduling -------------------------------------------------------------------------------------- */
static void expire(ns_t now) {
    ns_t tmo = (ns_t)(opt_timeout * NS_PER_S);
    while (qhead < next_sched && t0 + due[qhead] + tmo <= now) count_error(qhead++, E_TIMEOUT);
    for (int k = 0; k < opt_connections; k++) {
        struct conn *c = &conns[k];
        if (c->st == C_BUSY && t0 + due[c->req] + tmo <= now) request_failed(c, E_TIMEOUT);
        else if (c->st == C_CONNECTING && c->deadline <= now) connect_failed(c);
        else if (c->st == C_WAIT_RECONNECT && c->deadline <= now) start_connect(c);
    }
}

static void release_due(void) {
    while (next_sched < n_total) {
        ns_t now = now_ns();
        ns_t at = t0 + due[next_sched];
        if (at > now) break;
        int64_t i = next_sched++;
        if (qhead == i && n_idle > 0) {
            /* a connection is free: any delay now is the generator's own */
            if (measured(i)) {
                ns_t lag = now - at;
                if (lag > lag_max) lag_max = lag;
                lag_sum += lag;
                lag_n++;
                if (lag > NS_PER_MS) lag_over_1ms++;
                if (lag > 10 * NS_PER_MS) lag_over_10ms++;
            }
            qhead++;
            send_request(find_idle(), i);
        } else if (measured(i) && next_sched - qhead > max_queue) {
            max_queue = next_sched - qhead;
        }
    }
}

static ns_t next_wake(void) {
    ns_t w = NS_INF, tmo = (ns_t)(opt_timeout * NS_PER_S);
    if (next_sched < n_total) w = t0 + due[next_sched];
    if (qhead < next_sched && t0 + due[qhead] + tmo < w) w = t0 + due[qhead] + tmo;
    for (int k = 0; k < opt_connections; k++) {
        struct conn *c = &conns[k];
        ns_t d = NS_INF;
        if (c->st == C_BUSY) d = t0 + due[c->req] + tmo;
        else if (c->st == C_CONNECTING || c->st == C_WAIT_RECONNECT) d = c->deadline;
        if (d < w) w = d;
    }
    return w;
}

static ns_t armed = -1;

static void arm(ns_t at) {
    if (at == armed) return;
    struct itimerspec its = {0};
    if (at != NS_INF) {
        if (at <= 0) at = 1;
        its.it_value.tv_sec = at / NS_PER_S;
        its.it_value.tv_nsec = at % NS_PER_S;
    }
    if (timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL) < 0) die("timerfd_settime: %s", strerror(errno));
    armed = at;
}

static void poll_once(void) {
    struct epoll_event evs[MAX_EVENTS];
    int n = epoll_wait(epfd, evs, MAX_EVENTS, -1);
    if (n < 0) {
        if (errno == EINTR) return;
        die("epoll_wait: %s", strerror(errno));
    }
    for (int k = 0; k < n; k++) {
        if (evs[k].data.u64 == TIMER_ID) {
            uint64_t ticks;
            if (read(tfd, &ticks, sizeof ticks) < 0 && errno != EAGAIN) die("timerfd read: %s", strerror(errno));
            armed = -1;
            continue;
        }
        on_event(evs[k].data.u64, evs[k].events);
    }
}

/* ---- set-up ------------------------------------------------------------------------------------------ */
static void usage(FILE *f) {
    fputs("usage: openloop HOST PORT --rate R --duration S [options]\n"
          "  --connections N            keep-alive connections (default 64)\n"
          "  --rate R                   offered requests per second, in total\n"
          "  --duration S               measured seconds (after the warm-up)\n"
          "  --warmup S                 seconds whose requests are sent but not recorded (default 0)\n"
          "  --timeout S                a request fails S seconds after its scheduled time (default 5)\n"
          "  --poisson                  exponential inter-arrival times (else constant 1/R)\n"
          "  --seed N                   seed of the Poisson schedule (default 1)\n"
          "  --path P                   request path (default /)\n"
          "  --header 'Name: value'     extra header, repeatable ('Host: ...' replaces the default)\n"
          "  --tokens FILE              one token per non-empty line; request i uses line offset+i\n"
          "  --token-header-template T  the header carrying the token, e.g. 'Cookie: gw_session=%s'\n"
          "  --token-offset K           first token line to use (default 0)\n"
          "Prints one JSON object: rate_target, rate_achieved, scheduled, sent, completed, errors, error_kinds,\n"
          "status, reconnects, max_queue, behind_schedule_ms, latency_ms (from scheduled time), service_ms\n"
          "(from actual send), warmup counts and the configuration.\n",
          f);
}

static double parse_num(const char *s, const char *what, double min) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= min && v < 1e15)) die("bad %s: %s", what, s);
    return v;
}

static void check_header_text(const char *s, const char *what) {
    for (const char *p = s; *p; p++)
        if (*p == '\r' || *p == '\n') die("%s must not contain CR or LF", what);
}

static void load_tokens(void) {
    FILE *f = fopen(opt_tokens, "rb");
    if (!f) die("cannot open %s: %s", opt_tokens, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) < 0) die("stat %s: %s", opt_tokens, strerror(errno));
    size_t size = (size_t)st.st_size;
    char *data = xmalloc(size + 1);
    if (fread(data, 1, size, f) != size) die("cannot read %s", opt_tokens);
    fclose(f);
    data[size] = '\n';
    size_t lines = 0;
    for (size_t k = 0; k <= size; k++) lines += data[k] == '\n';
    tokens = xmalloc(lines * sizeof *tokens);
    token_lens = xmalloc(lines * sizeof *token_lens);
    char *p = data, *end = data + size;
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end + 1 - p));
        size_t len = (size_t)(nl - p);
        if (len && p[len - 1] == '\r') len--;
        if (len) {
            if (memchr(p, '\r', len)) die("token line %zu contains CR", n_tokens + 1);
            tokens[n_tokens] = p;
            token_lens[n_tokens] = len;
            if (len > max_token_len) max_token_len = len;
            n_tokens++;
        }
        p = nl + 1;
    }
    if (!n_tokens) die("%s holds no tokens", opt_tokens);
}

static void build_request(void) {
    int has_host = 0;
    size_t cap = strlen(opt_path) + strlen(opt_host) + 64;
    for (int k = 0; k < n_headers; k++) {
        check_header_text(opt_headers[k], "--header");
        const char *colon = strchr(opt_headers[k], ':');
        if (!colon || colon == opt_headers[k]) die("bad --header (want 'Name: value'): %s", opt_headers[k]);
        if (colon - opt_headers[k] == 4 && strncasecmp(opt_headers[k], "host", 4) == 0) has_host = 1;
        cap += strlen(opt_headers[k]) + 2;
    }
    req_head = xmalloc(cap);
    char *p = req_head;
    p += sprintf(p, "GET %s HTTP/1.1\r\n", opt_path);
    if (!has_host) {
        int v6 = strchr(opt_host, ':') != NULL;
        if (opt_port == 80) p += sprintf(p, v6 ? "Host: [%s]\r\n" : "Host: %s\r\n", opt_host);
        else p += sprintf(p, v6 ? "Host: [%s]:%d\r\n" : "Host: %s:%d\r\n", opt_host, opt_port);
    }
    for (int k = 0; k < n_headers; k++) p += sprintf(p, "%s\r\n", opt_headers[k]);
    req_head_len = (size_t)(p - req_head);
    if (!tokens) {
        memcpy(p, "\r\n", 3);
        req_head_len += 2;
        return;
    }
    check_header_text(opt_template, "--token-header-template");
    const char *s = strstr(opt_template, "%s");
    if (!s || strstr(s + 2, "%s") || !strchr(opt_template, ':'))
        die("--token-header-template must be 'Name: ...%%s...' with exactly one %%s");
    tpl_pre = opt_template;
    tpl_pre_len = (size_t)(s - opt_template);
    tpl_post = s + 2;
    tpl_post_len = strlen(tpl_post);
}

static void resolve(void) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
    int rc = getaddrinfo(opt_host, opt_port_s, &hints, &res);
    if (rc) die("cannot resolve %s:%s: %s", opt_host, opt_port_s, gai_strerror(rc));
    memcpy(&addr, res->ai_addr, res->ai_addrlen);
    addrlen = res->ai_addrlen;
    freeaddrinfo(res);
}

/* ln(x) for x > 0, without libm (the build is a bare "gcc -O2"): x = m * 2^e, ln m = 2 atanh((m-1)/(m+1)). */
static double ln(double x) {
    uint64_t bits;
    memcpy(&bits, &x, sizeof bits);
    int e = (int)((bits >> 52) & 0x7ff) - 1023;
    bits = (bits & 0x000fffffffffffffULL) | 0x3ff0000000000000ULL;
    double m;
    memcpy(&m, &bits, sizeof m);
    double s = (m - 1) / (m + 1), s2 = s * s, term = s, sum = 0;
    for (int k = 1; k < 60; k += 2) {
        sum += term / k;
        term *= s2;
    }
    return e * 0.69314718055994530942 + 2 * sum;
}

static uint64_t rng_state;
static double rng_uniform(void) { /* splitmix64 -> [0, 1) */
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    return (double)(z >> 11) * 0x1.0p-53;
}

static void build_schedule(void) {
    ns_t end = (ns_t)((opt_warmup + opt_duration) * NS_PER_S);
    warm_end = (ns_t)(opt_warmup * NS_PER_S);
    sched_end = end;
    double expected = opt_rate * (opt_warmup + opt_duration);
    if (expected > 2e8) die("too many requests (%.0f): lower --rate or --duration", expected);
    size_t cap = (size_t)(expected * 1.2) + 1024;
    due = xmalloc(cap * sizeof *due);
    rng_state = opt_seed;
    double t = 0;
    for (int64_t i = 0;; i++) {
        ns_t d = opt_poisson ? (ns_t)(t * NS_PER_S) : (ns_t)((long double)i * NS_PER_S / opt_rate);
        if (d >= end) break;
        if ((size_t)i == cap) {
            cap *= 2;
            due = realloc(due, cap * sizeof *due);
            if (!due) die("out of memory");
        }
        due[i] = d;
        n_total = i + 1;
        if (opt_poisson) t += -ln(1.0 - rng_uniform()) / opt_rate; /* 1 - u is in (0, 1] */
    }
    first_measured = 0;
    while (first_measured < n_total && due[first_measured] < warm_end) first_measured++;
    int64_t m = n_total - first_measured;
    lat = xmalloc((size_t)(m ? m : 1) * sizeof *lat);
    svc = xmalloc((size_t)(m ? m : 1) * sizeof *svc);
}

static void parse_args(int argc, char **argv) {
    static const struct option longopts[] = {
        {"connections", required_argument, 0, 'c'}, {"rate", required_argument, 0, 'r'},
        {"duration", required_argument, 0, 'd'},    {"warmup", required_argument, 0, 'w'},
        {"timeout", required_argument, 0, 't'},     {"poisson", no_argument, 0, 'P'},
        {"seed", required_argument, 0, 's'},        {"path", required_argument, 0, 'p'},
        {"header", required_argument, 0, 'H'},      {"tokens", required_argument, 0, 'T'},
        {"token-header-template", required_argument, 0, 'E'},
        {"token-offset", required_argument, 0, 'o'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    opt_headers = xmalloc((size_t)argc * sizeof *opt_headers);
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'c': opt_connections = (int)parse_num(optarg, "--connections", 1); break;
        case 'r': opt_rate = parse_num(optarg, "--rate", 0); break;
        case 'd': opt_duration = parse_num(optarg, "--duration", 0); break;
        case 'w': opt_warmup = parse_num(optarg, "--warmup", 0); break;
        case 't': opt_timeout = parse_num(optarg, "--timeout", 0); break;
        case 'P': opt_poisson = 1; break;
        case 's': opt_seed = (uint64_t)parse_num(optarg, "--seed", 0); break;
        case 'p': opt_path = optarg; break;
        case 'H': opt_headers[n_headers++] = optarg; break;
        case 'T': opt_tokens = optarg; break;
        case 'E': opt_template = optarg; break;
        case 'o': opt_token_offset = (int64_t)parse_num(optarg, "--token-offset", 0); break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); exit(2);
        }
    }
    if (argc - optind != 2) {
        usage(stderr);
        exit(2);
    }
    opt_host = argv[optind];
    opt_port_s = argv[optind + 1];
    opt_port = (int)parse_num(opt_port_s, "port", 1);
    if (opt_port > 65535) die("bad port: %s", opt_port_s);
    if (opt_rate <= 0) die("--rate must be > 0");
    if (opt_duration <= 0) die("--duration must be > 0");
    if (opt_timeout <= 0) die("--timeout must be > 0");
    if (opt_connections > 100000) die("--connections too large");
    if (opt_path[0] != '/' || strpbrk(opt_path, " \t\r\n")) die("--path must start with / and hold no whitespace");
    if (!!opt_tokens != !!opt_template) die("--tokens and --token-header-template go together");
}

/* ---- report ------------------------------------------------------------------------------------------ */
static int cmp_ns(const void *a, const void *b) {
    ns_t x = *(const ns_t *)a, y = *(const ns_t *)b;
    return (x > y) - (x < y);
}

static double pct(const ns_t *v, int64_t n, double p) { /* nearest rank, in ms */
    double x = p / 100.0 * (double)n;
    int64_t r = (int64_t)x;
    if ((double)r < x) r++; /* ceil */
    if (r < 1) r = 1;
    if (r > n) r = n;
    return (double)v[r - 1] / NS_PER_MS;
}

static void print_dist(const char *name, ns_t *v, int64_t n) {
    if (!n) {
        printf("\"%s\": {\"p50\": null, \"p75\": null, \"p90\": null, \"p99\": null, \"p99.9\": null, "
               "\"p99.99\": null, \"max\": null, \"min\": null, \"mean\": null}", name);
        return;
    }
    qsort(v, (size_t)n, sizeof *v, cmp_ns);
    long double sum = 0;
    for (int64_t k = 0; k < n; k++) sum += v[k];
    printf("\"%s\": {\"p50\": %.3f, \"p75\": %.3f, \"p90\": %.3f, \"p99\": %.3f, \"p99.9\": %.3f, "
           "\"p99.99\": %.3f, \"max\": %.3f, \"min\": %.3f, \"mean\": %.3f}",
           name, pct(v, n, 50), pct(v, n, 75), pct(v, n, 90), pct(v, n, 99), pct(v, n, 99.9), pct(v, n, 99.99),
           (double)v[n - 1] / NS_PER_MS, (double)v[0] / NS_PER_MS, (double)(sum / n) / NS_PER_MS);
}

static void report(void) {
    double secs = (double)(sched_end - warm_end) / NS_PER_S;
    ns_t drain = last_measured_done - (t0 + sched_end);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
    struct timespec res;
    clock_getres(CLOCK_MONOTONIC, &res);
    printf("{\"rate_target\": %.6g, \"rate_achieved\": %.3f, \"measured_seconds\": %.6f, \"drain_ms\": %.3f, ",
           opt_rate, (double)window_done / secs, secs, drain > 0 ? (double)drain / NS_PER_MS : 0.0);
    printf("\"scheduled\": %lld, \"sent\": %lld, \"completed\": %lld, \"errors\": %lld, \"error_kinds\": {",
           (long long)(n_total - first_measured), (long long)m_sent, (long long)m_completed, (long long)m_errors);
    for (int k = 0; k < E_KINDS; k++) printf("%s\"%s\": %lld", k ? ", " : "", EKIND_NAMES[k], (long long)m_ekind[k]);
    printf("}, \"connect_errors\": %lld, \"status\": {", (long long)connect_errors);
    printf("\"2xx\": %lld, \"3xx\": %lld, \"4xx\": %lld, \"5xx\": %lld, \"other\": %lld}, ", (long long)m_status[2],
           (long long)m_status[3], (long long)m_status[4], (long long)m_status[5], (long long)(m_status[0] + m_status[1]));
    printf("\"reconnects\": %lld, \"max_queue\": %lld, ", (long long)reconnects, (long long)max_queue);
    printf("\"behind_schedule_ms\": %.3f, \"behind_schedule_mean_ms\": %.4f, \"late_sends_over_1ms\": %lld, "
           "\"late_sends_over_10ms\": %lld, ",
           (double)lag_max / NS_PER_MS, lag_n ? (double)lag_sum / (double)lag_n / NS_PER_MS : 0.0, (long long)lag_over_1ms,
           (long long)lag_over_10ms);
    print_dist("latency_ms", lat, n_lat);
    printf(", ");
    print_dist("service_ms", svc, n_lat);
    printf(", \"warmup\": {\"scheduled\": %lld, \"sent\": %lld, \"completed\": %lld, \"errors\": %lld}, ",
           (long long)first_measured, (long long)w_sent, (long long)w_completed, (long long)w_errors);
    printf("\"tokens\": %zu, \"tokens_wrapped\": %s, \"generator_cpu_seconds\": %.3f, ", n_tokens,
           tokens_wrapped ? "true" : "false", cpu);
    printf("\"config\": {\"connections\": %d, \"duration\": %.6g, \"warmup\": %.6g, \"timeout\": %.6g, "
           "\"arrivals\": \"%s\", \"seed\": %llu, \"timer\": \"timerfd (absolute CLOCK_MONOTONIC)\", "
           "\"clock_resolution_ns\": %ld, \"latency_from\": \"scheduled time\", \"percentiles\": \"exact, nearest rank\"}}\n",
           opt_connections, opt_duration, opt_warmup, opt_timeout, opt_poisson ? "poisson" : "constant",
           (unsigned long long)opt_seed, res.tv_nsec);
    fflush(stdout);
}

int main(int argc, char **argv) {
    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0); /* wake at the armed time, not up to 50 us later */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max &&
        rl.rlim_cur < (rlim_t)opt_connections + 64) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (opt_tokens) load_tokens();
    build_request();
    resolve();
    build_schedule();

    epfd = epoll_create1(EPOLL_CLOEXEC);
    tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (epfd < 0 || tfd < 0) die("epoll/timerfd: %s", strerror(errno));
    struct epoll_event tev = {.events = EPOLLIN, .data.u64 = TIMER_ID};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, &tev) < 0) die("epoll_ctl timerfd: %s", strerror(errno));

    conns = calloc((size_t)opt_connections, sizeof *conns);
    if (!conns) die("out of memory");
    size_t wcap = req_head_len + tpl_pre_len + max_token_len + tpl_post_len + 8;
    for (int k = 0; k < opt_connections; k++) {
        struct conn *c = &conns[k];
        c->fd = -1;
        c->st = C_WAIT_RECONNECT;
        c->backoff = BACKOFF_MIN;
        c->rbuf = xmalloc(MAX_HEAD);
        if (tokens) c->own_wbuf = xmalloc(wcap);
        start_connect(c);
    }
    /* Open every connection before the clock starts (give up waiting after --timeout). */
    ns_t connect_until = now_ns() + (ns_t)(opt_timeout * NS_PER_S);
    t0 = 0; /* no requests yet: next_wake() sees only connection deadlines */
    next_sched = qhead = n_total; /* nothing due during the connect phase */
    for (;;) {
        ns_t now = now_ns();
        if (n_idle == opt_connections || now >= connect_until) break;
        expire(now);
        ns_t w = next_wake();
        arm(w < connect_until ? w : connect_until);
        poll_once();
    }
    if (n_idle == 0) die("could not connect to %s:%s (%lld connect errors)", opt_host, opt_port_s, (long long)connect_errors);
    if (n_idle < opt_connections)
        fprintf(stderr, "openloop: only %d of %d connections open at the start\n", n_idle, opt_connections);
    connect_errors = 0;
    reconnects = 0;

    next_sched = qhead = 0;
    started = 1;
    t0 = now_ns();
    ns_t hard_stop = t0 + sched_end + (ns_t)(opt_timeout * NS_PER_S) + 2 * NS_PER_S;
    for (;;) {
        ns_t now = now_ns();
        expire(now);
        release_due();
        dispatch();
        if (next_sched == n_total && qhead == n_total && n_busy == 0) break;
        if (now_ns() > hard_stop) { /* cannot happen: every request has a deadline; a safety net */
            fprintf(stderr, "openloop: stopped at the hard deadline\n");
            break;
        }
        arm(next_wake());
        poll_once();
    }
    for (int k = 0; k < opt_connections; k++) close_fd(&conns[k]);
    report();
    return 0;
}
