// The floor under scenario (b): the least any server can do per reading on this machine.
//
// One thread, level-triggered epoll, one read() per readable connection and one write() of an
// ack per read that held readings. It stores nothing, commits nothing and acks at once, so its
// CPU is almost all kernel work: the TCP read, the ack write (on loopback the sender also pays
// the receiver's softirq) and epoll. Benchmarks/ingest.py runs it under scenario (b)'s load
// (`--scenarios floor`) to show how much of meterd's CPU any design must spend.
//
//   cc -O2 -o ackfloor Benchmarks/ackfloor.c && ./ackfloor   # prints the port it listens on
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_FD 65536
#define BUFFER 8192

static char *buffers[MAX_FD];
static int lengths[MAX_FD];

int main(void) {
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = 0, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t size = sizeof address;
    if (bind(listener, (struct sockaddr *)&address, sizeof address) || listen(listener, 4096) ||
        getsockname(listener, (struct sockaddr *)&address, &size)) {
        perror("ackfloor: listen");
        return 1;
    }
    printf("%d\n", ntohs(address.sin_port));
    fflush(stdout);
    int poller = epoll_create1(0);
    struct epoll_event event = {.events = EPOLLIN, .data.fd = listener};
    epoll_ctl(poller, EPOLL_CTL_ADD, listener, &event);
    struct epoll_event ready[256];
    static char acks[BUFFER * 2];
    for (;;) {
        int count = epoll_wait(poller, ready, 256, -1);
        for (int i = 0; i < count; i++) {
            int fd = ready[i].data.fd;
            if (fd == listener) {
                int connection;
                while ((connection = accept4(listener, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    if (connection >= MAX_FD) { close(connection); continue; }
                    buffers[connection] = malloc(BUFFER);
                    lengths[connection] = 0;
                    struct epoll_event added = {.events = EPOLLIN, .data.fd = connection};
                    epoll_ctl(poller, EPOLL_CTL_ADD, connection, &added);
                }
                continue;
            }
            ssize_t got = read(fd, buffers[fd] + lengths[fd], BUFFER - lengths[fd]);
            if (got <= 0) {
                if (got == 0 || errno != EAGAIN) { close(fd); free(buffers[fd]); buffers[fd] = NULL; }
                continue;
            }
            lengths[fd] += (int)got;
            // {"meter":"M","ack":SEQ} for each complete line, taken from its "meter" and "seq".
            int written = 0;
            char *line = buffers[fd], *end = buffers[fd] + lengths[fd], *newline;
            while ((newline = memchr(line, '\n', end - line))) {
                *newline = 0;
                char *meter = strstr(line, "\"meter\":\""), *seq = strstr(line, "\"seq\":");
                if (meter && seq) {
                    meter += 9;
                    char *quote = strchr(meter, '"');
                    if (quote) written += snprintf(acks + written, sizeof acks - written, "{\"meter\":\"%.*s\",\"ack\":%lld}\n",
                                                   (int)(quote - meter), meter, strtoll(seq + 6, NULL, 10));
                }
                line = newline + 1;
            }
            memmove(buffers[fd], line, end - line);
            lengths[fd] = (int)(end - line);
            if (written > 0 && write(fd, acks, written) < 0 && errno != EAGAIN) { close(fd); free(buffers[fd]); buffers[fd] = NULL; }
        }
    }
}
