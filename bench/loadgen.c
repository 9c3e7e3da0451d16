/* Closed-loop HTTP/1.1 load generator for a Unix socket (bench/socket_server.py builds it).
 *
 *   loadgen SOCKET CONNS WARMUP_S SECONDS TARGET [SERVER_PID]
 *
 * Opens CONNS keep-alive connections; each sends "GET TARGET", waits for the whole answer
 * (Content-Length framed), notes the latency (from writing the request to reading the whole
 * answer) and sends the next: one request in flight per connection, no pipelining. One
 * thread, epoll.
 * Answers during the first WARMUP_S seconds are not counted; then for SECONDS it counts
 * answers and keeps every latency (the window runs from the first wake-up past the warm-up
 * to the first one past its end). At both ends of the window it reads its own CPU time
 * (getrusage), the server's (/proc/SERVER_PID/stat) and the whole machine's busy time
 * (/proc/stat), so the caller can tell who was the bottleneck and who else ran meanwhile.
 * Prints one line of key=value pairs. Anything but a 200, a closed connection or more bytes
 * than one answer is an error: exit 1 with the reason on stderr.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define BUF 16384
#define EVENTS 256

typedef struct {
    int fd;
    size_t len;
    uint64_t sent_ns;
    char buf[BUF];
} conn_t;

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static double self_cpu(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
           (double)(u.ru_utime.tv_usec + u.ru_stime.tv_usec) * 1e-6;
}

/* utime + stime of process pid in seconds, or -1 */
static double proc_cpu(long pid) {
    if (pid <= 0) return -1.0;
    char path[64], text[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1.0;
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    char *p = strrchr(text, ')'); /* the command name may hold spaces */
    if (!p) return -1.0;
    unsigned long utime = 0, stime = 0;
    /* after ")": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime, &stime) != 2)
        return -1.0;
    return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

/* busy CPU seconds of the whole machine, all CPUs (/proc/stat: all but idle and iowait) */
static double machine_busy(void) {
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return -1.0;
    unsigned long long v[8] = {0};
    int got = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                     &v[4], &v[5], &v[6], &v[7]);
    fclose(f);
    if (got < 4) return -1.0;
    /* user nice system idle iowait irq softirq steal */
    unsigned long long busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    return (double)busy / (double)sysconf(_SC_CLK_TCK);
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* nearest-rank percentile of sorted v[0..n) */
static double pct_us(const uint64_t *v, size_t n, double p) {
    if (n == 0) return 0.0;
    size_t rank = (size_t)(p * (double)n + 0.999999999);
    if (rank < 1) rank = 1;
    if (rank > n) rank = n;
    return (double)v[rank - 1] / 1e3;
}

static void die(const char *what) {
    fprintf(stderr, "loadgen: %s\n", what);
    exit(1);
}

static void send_request(conn_t *c, const char *req, size_t req_len) {
    c->len = 0;
    c->sent_ns = now_ns();
    size_t off = 0;
    while (off < req_len) {
        ssize_t w = write(c->fd, req + off, req_len - off);
        if (w < 0) {
            if (errno == EINTR) continue;
            perror("loadgen: write");
            exit(1);
        }
        off += (size_t)w;
    }
}

/* length of the complete answer at the start of c->buf, 0 while incomplete */
static size_t answer_length(const conn_t *c) {
    const char *head_end = memmem(c->buf, c->len, "\r\n\r\n", 4);
    if (!head_end) {
        if (c->len >= BUF) die("answer head larger than the buffer");
        return 0;
    }
    size_t head = (size_t)(head_end - c->buf) + 4;
    size_t body = 0;
    for (const char *line = memmem(c->buf, head, "\r\n", 2); line && line < head_end;
         line = memmem(line + 2, (size_t)(head_end - line), "\r\n", 2)) {
        if (strncasecmp(line + 2, "content-length:", 15) == 0) {
            body = strtoul(line + 17, NULL, 10);
            break;
        }
    }
    if (head + body > BUF) die("answer larger than the buffer");
    return c->len >= head + body ? head + body : 0;
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: %s SOCKET CONNS WARMUP_S SECONDS TARGET [SERVER_PID]\n", argv[0]);
        return 2;
    }
    const char *path = argv[1];
    int n = atoi(argv[2]);
    double warmup = atof(argv[3]), seconds = atof(argv[4]);
    const char *target = argv[5];
    long server_pid = argc > 6 ? atol(argv[6]) : 0;
    if (n < 1 || seconds <= 0 || warmup < 0) die("bad arguments");
    if (strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) die("socket path too long");

    char req[1024];
    int req_len = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: haasd\r\n\r\n", target);
    if (req_len <= 0 || (size_t)req_len >= sizeof req) die("target too long");

    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1 failed");
    conn_t *conns = calloc((size_t)n, sizeof(conn_t));
    if (!conns) die("out of memory");
    for (int i = 0; i < n; i++) {
        struct sockaddr_un addr = {.sun_family = AF_UNIX};
        strcpy(addr.sun_path, path);
        conns[i].fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (conns[i].fd < 0 || connect(conns[i].fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
            perror("loadgen: connect");
            return 1;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, conns[i].fd, &ev) != 0) die("epoll_ctl failed");
    }

    size_t cap = 1 << 20, count = 0;
    uint64_t *lat = malloc(cap * sizeof *lat);
    if (!lat) die("out of memory");

    uint64_t start = now_ns();
    uint64_t warm_at = start + (uint64_t)(warmup * 1e9);
    uint64_t end_at = warm_at + (uint64_t)(seconds * 1e9);
    int measuring = 0;
    uint64_t begun = 0;
    double cpu0 = 0.0, server0 = -1.0, busy0 = -1.0;

    for (int i = 0; i < n; i++) send_request(&conns[i], req, (size_t)req_len);

    struct epoll_event events[EVENTS];
    for (;;) {
        int k = epoll_wait(ep, events, EVENTS, 100);
        if (k < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait failed");
        }
        uint64_t t = now_ns();
        if (!measuring && t >= warm_at) {
            measuring = 1;
            begun = t;
            cpu0 = self_cpu();
            server0 = proc_cpu(server_pid);
            busy0 = machine_busy();
        }
        if (t >= end_at) break;
        for (int j = 0; j < k; j++) {
            conn_t *c = &conns[events[j].data.u32];
            ssize_t r = read(c->fd, c->buf + c->len, BUF - c->len);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) die("the server closed a connection");
            c->len += (size_t)r;
            size_t whole = answer_length(c);
            if (!whole) continue;
            if (whole != c->len) die("more bytes than one answer (nothing was pipelined)");
            if (c->len < 13 || memcmp(c->buf, "HTTP/1.1 200 ", 13) != 0) {
                fprintf(stderr, "loadgen: not a 200: %.*s\n", (int)(c->len < 300 ? c->len : 300),
                        c->buf);
                return 1;
            }
            if (measuring) {
                t = now_ns();
                if (count == cap) {
                    cap *= 2;
                    lat = realloc(lat, cap * sizeof *lat);
                    if (!lat) die("out of memory");
                }
                lat[count++] = t - c->sent_ns;
            }
            send_request(c, req, (size_t)req_len);
        }
    }
    double window = (double)(now_ns() - begun) / 1e9;
    double cpu = self_cpu() - cpu0;
    double server1 = proc_cpu(server_pid);
    double server_cpu = server0 >= 0 && server1 >= 0 ? server1 - server0 : -1.0;
    double busy1 = machine_busy();
    double busy = busy0 >= 0 && busy1 >= 0 ? busy1 - busy0 : -1.0;
    for (int i = 0; i < n; i++) close(conns[i].fd);

    qsort(lat, count, sizeof *lat, cmp_u64);
    printf("requests=%zu seconds=%.6f rps=%.1f p50_us=%.1f p90_us=%.1f p99_us=%.1f "
           "p999_us=%.1f max_us=%.1f loadgen_cpu_s=%.4f server_cpu_s=%.4f machine_busy_s=%.4f\n",
           count, window, (double)count / window, pct_us(lat, count, 0.50),
           pct_us(lat, count, 0.90), pct_us(lat, count, 0.99), pct_us(lat, count, 0.999),
           count ? (double)lat[count - 1] / 1e3 : 0.0, cpu, server_cpu, busy);
    free(lat);
    free(conns);
    return 0;
}
