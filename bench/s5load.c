/*
 * s5load: a load generator for proxies that opens a new connection per request.
 *
 *   s5load MODE HOST PORT TARGET_HOST TARGET_PORT CONNS SECONDS
 *
 * MODE "socks5": each request is a new TCP connection to HOST:PORT, a SOCKS5
 * greeting (no authentication), a CONNECT to TARGET_HOST:TARGET_PORT (IPv4), then
 * "GET / HTTP/1.1" with "Connection: close" through the tunnel, read to EOF.
 * MODE "plain": the same without the SOCKS5 steps (the request goes to HOST:PORT).
 *
 * CONNS connections run at once (non-blocking, one epoll loop, one thread, so the
 * client costs one core at most: it is a limit, reported as "client_cpu_s").
 * Prints one line of key=value: requests, errors, seconds, rps, client_cpu_s.
 * A request counts when a response starting with "HTTP/1.1 200" was read to EOF.
 * Built by bench/run.py with gcc; loopback use only.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum state { S_CONNECTING, S_GREET, S_REPLY, S_RESPONSE };

struct conn {
    int fd;
    enum state st;
    int got;        /* bytes of the current reply read so far */
    int ok;         /* response status line seen */
    char head[16];  /* start of the response */
};

static struct sockaddr_in proxy_addr;
static unsigned char connect_req[10];
static int socks5;
static long requests, errors;
static const char request[] = "GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int start(int ep, struct conn *c) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) return -1;
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->st = S_CONNECTING;
    c->got = c->ok = 0;
    if (connect(c->fd, (struct sockaddr *)&proxy_addr, sizeof proxy_addr) < 0 &&
        errno != EINPROGRESS) {
        close(c->fd);
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    return epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
}

static void restart(int ep, struct conn *c, int failed) {
    if (failed) errors++;
    close(c->fd);  /* also leaves the epoll set */
    while (start(ep, c) < 0) {
        errors++;
        usleep(1000);
    }
}

static void want(int ep, struct conn *c, unsigned events) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static int send_all(int fd, const void *buf, size_t n) {
    /* small writes on a fresh socket: they fit in the send buffer */
    return send(fd, buf, n, MSG_NOSIGNAL) == (ssize_t)n ? 0 : -1;
}

static void step(int ep, struct conn *c) {
    char buf[4096];
    ssize_t n;
    switch (c->st) {
    case S_CONNECTING: {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) return restart(ep, c, 1);
        if (socks5) {
            static const unsigned char greet[] = {5, 1, 0};
            if (send_all(c->fd, greet, sizeof greet)) return restart(ep, c, 1);
            c->st = S_GREET;
        } else {
            if (send_all(c->fd, request, sizeof request - 1)) return restart(ep, c, 1);
            c->st = S_RESPONSE;
        }
        c->got = 0;
        want(ep, c, EPOLLIN);
        return;
    }
    case S_GREET:
        n = recv(c->fd, buf, 2 - c->got, 0);
        if (n < 0 && errno == EAGAIN) return;
        if (n <= 0 || buf[0] != 5 || (n == 2 && buf[1] != 0)) return restart(ep, c, 1);
        if ((c->got += n) < 2) return;
        if (send_all(c->fd, connect_req, sizeof connect_req)) return restart(ep, c, 1);
        c->st = S_REPLY;
        c->got = 0;
        return;
    case S_REPLY:
        /* IPv4 bound address in the reply: 10 bytes */
        n = recv(c->fd, buf, 10 - c->got, 0);
        if (n < 0 && errno == EAGAIN) return;
        if (n <= 0) return restart(ep, c, 1);
        if (c->got == 0 && n >= 2 && (buf[0] != 5 || buf[1] != 0)) return restart(ep, c, 1);
        if ((c->got += n) < 10) return;
        if (send_all(c->fd, request, sizeof request - 1)) return restart(ep, c, 1);
        c->st = S_RESPONSE;
        c->got = 0;
        return;
    case S_RESPONSE:
        for (;;) {
            n = recv(c->fd, buf, sizeof buf, 0);
            if (n < 0 && errno == EAGAIN) return;
            if (n < 0) return restart(ep, c, 1);
            if (n == 0) {
                if (c->ok) requests++;
                return restart(ep, c, !c->ok);
            }
            if (c->got < (int)sizeof c->head) {
                int k = n < (ssize_t)(sizeof c->head - c->got) ? n : (int)sizeof c->head - c->got;
                memcpy(c->head + c->got, buf, k);
                c->got += k;
                if (c->got >= 12) c->ok = memcmp(c->head, "HTTP/1.1 200", 12) == 0;
            }
        }
    }
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: %s socks5|plain HOST PORT TARGET_HOST TARGET_PORT CONNS SECONDS\n",
                argv[0]);
        return 2;
    }
    socks5 = strcmp(argv[1], "socks5") == 0;
    proxy_addr.sin_family = AF_INET;
    proxy_addr.sin_port = htons(atoi(argv[3]));
    struct in_addr target;
    if (inet_pton(AF_INET, argv[2], &proxy_addr.sin_addr) != 1 ||
        inet_pton(AF_INET, argv[4], &target) != 1) {
        fprintf(stderr, "IPv4 addresses only\n");
        return 2;
    }
    unsigned short tport = htons(atoi(argv[5]));
    connect_req[0] = 5; connect_req[1] = 1; connect_req[2] = 0; connect_req[3] = 1;
    memcpy(connect_req + 4, &target, 4);
    memcpy(connect_req + 8, &tport, 2);
    int conns = atoi(argv[6]);
    double seconds = atof(argv[7]);
    if (conns < 1 || seconds <= 0) return 2;

    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct conn *cs = calloc(conns, sizeof *cs);
    for (int i = 0; i < conns; i++)
        if (start(ep, &cs[i]) < 0) { perror("connect"); return 1; }
    struct epoll_event evs[256];
    double t0 = now(), end = t0 + seconds;
    while (now() < end) {
        int n = epoll_wait(ep, evs, 256, 100);
        for (int i = 0; i < n; i++) step(ep, evs[i].data.ptr);
    }
    double t = now() - t0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
                 ru.ru_stime.tv_usec / 1e6;
    printf("requests=%ld errors=%ld seconds=%.3f rps=%.1f client_cpu_s=%.3f\n", requests, errors,
           t, requests / t, cpu);
    return 0;
}
