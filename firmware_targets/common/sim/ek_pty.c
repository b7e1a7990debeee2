/* ek_pty.h on POSIX: posix_openpt, raw termios, a poll loop. */
#define _XOPEN_SOURCE 600
#include "ek_pty.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

static int pty_fd = -1, slave_fd = -1;
static volatile sig_atomic_t stop;

void ek_pty_write(const uint8_t *data, size_t len) {
    while (len) {
        ssize_t n = write(pty_fd, data, len);
        if (n > 0) {
            data += n, len -= (size_t)n;
        } else if (n < 0 && errno == EAGAIN) {
            struct pollfd p = {0};
            p.fd = pty_fd, p.events = POLLOUT;
            if (poll(&p, 1, 50) <= 0) return;
        } else if (!(n < 0 && errno == EINTR)) {
            return;
        }
    }
}

static void set_raw(int fd) {
    struct termios t;
    if (tcgetattr(fd, &t)) return;
    t.c_iflag &= ~(tcflag_t)(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL | IXON | IXOFF);
    t.c_oflag &= ~(tcflag_t)OPOST;
    t.c_lflag &= ~(tcflag_t)(ECHO | ECHONL | ICANON | ISIG | IEXTEN);
    t.c_cflag &= ~(tcflag_t)(CSIZE | PARENB);
    t.c_cflag |= CS8;
    t.c_cc[VMIN] = 1;
    t.c_cc[VTIME] = 0;
    tcsetattr(fd, TCSANOW, &t);
}

static void on_signal(int sig) { (void)sig, stop = 1; }

/* SIGTERM/SIGINT end the serve loop, caught before the pty exists. Raw from the start (an
 * echoing line discipline would feed our replies back); the slave is held open here so the
 * master never hangs up between host sessions. */
int ek_pty_open(void) {
    const char *name;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    pty_fd = posix_openpt(O_RDWR | O_NOCTTY);
    if (pty_fd < 0 || grantpt(pty_fd) || unlockpt(pty_fd) || !(name = ptsname(pty_fd))) return -1;
    slave_fd = open(name, O_RDWR | O_NOCTTY);
    if (slave_fd < 0) return -1;
    set_raw(slave_fd);
    fcntl(pty_fd, F_SETFL, fcntl(pty_fd, F_GETFL) | O_NONBLOCK);
    printf("%s\n", name);
    return fflush(stdout);
}

int ek_pty_serve(void (*on_rx)(const uint8_t *data, size_t len), void (*after_rx)(void)) {
    uint8_t buf[4096];
    while (!stop) {
        struct pollfd p = {0};
        ssize_t n;
        p.fd = pty_fd, p.events = POLLIN;
        if (poll(&p, 1, 200) <= 0) continue;
        n = read(pty_fd, buf, sizeof buf);
        if (n > 0) on_rx(buf, (size_t)n);
        after_rx();
    }
    close(slave_fd);
    return 0;
}
