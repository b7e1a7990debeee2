/* ek_board.h on a host: flash in RAM (NOR rules enforced), the UART a pty, a reset that
 * returns. Built with the application glue and the TFLM-free shim as build/edgekit-app-host, it
 * is the whole board-independent firmware, driven by the real `edgekit flash serial://`:
 *
 *   edgekit-app-host --board NAME [--slot-kib N]   prints the pty path, serves until SIGTERM
 *
 * The flash lives only as long as the process (resets keep it, like a board's flash). */
#define _XOPEN_SOURCE 600
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include "ek_app.h"
#include "ek_board.h"
#include "ek_flash.h"
#include "ek_update.h"

static uint8_t *area_mem[3];
static uint32_t slot_size = 512u * 1024u;
static const char *board = "";
static int pty_fd = -1;
static volatile sig_atomic_t stop;

const uint8_t *ek_board_area(unsigned area) { return area < 3 ? area_mem[area] : NULL; }
uint32_t ek_board_slot_size(void) { return slot_size; }
const char *ek_board_name(void) { return board; }

int ek_board_erase(unsigned area, uint32_t off, uint32_t len) {
    memset(area_mem[area] + off, 0xFF, len);
    return 0;
}

int ek_board_program(unsigned area, uint32_t off, const void *src, uint32_t len) {
    const uint8_t *p = src;
    uint32_t i;
    for (i = 0; i < len; i++)
        if ((area_mem[area][off + i] & p[i]) != p[i]) {
            fprintf(stderr, "edgekit-app-host: programming an unerased byte\n");
            return -1;
        }
    memcpy(area_mem[area] + off, src, len);
    return 0;
}

void ek_board_uart_write(const uint8_t *data, size_t len) {
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

void ek_board_reset(void) {
    const ek_app_stats_t *s = ek_app_stats();
    fprintf(stderr, "edgekit-app-host: reset (self-tests %u, failed %u)\n",
            (unsigned)s->selftests, (unsigned)s->selftest_fails);
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

/* Raw from the start (an echoing line discipline would feed our replies back); the slave is
 * held open here so the master never hangs up between host sessions. */
static int open_pty(int *slave_fd) {
    const char *name;
    pty_fd = posix_openpt(O_RDWR | O_NOCTTY);
    if (pty_fd < 0 || grantpt(pty_fd) || unlockpt(pty_fd) || !(name = ptsname(pty_fd))) return -1;
    *slave_fd = open(name, O_RDWR | O_NOCTTY);
    if (*slave_fd < 0) return -1;
    set_raw(*slave_fd);
    fcntl(pty_fd, F_SETFL, fcntl(pty_fd, F_GETFL) | O_NONBLOCK);
    printf("%s\n", name);
    return fflush(stdout);
}

static void on_signal(int sig) { (void)sig, stop = 1; }

static int parse(int argc, char **argv) {
    int i;
    for (i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--board")) board = argv[i + 1];
        else if (!strcmp(argv[i], "--slot-kib")) slot_size = (uint32_t)strtoul(argv[i + 1], 0, 10) * 1024u;
        else return -1;
    }
    return i == argc && *board && slot_size && slot_size % EK_SECTOR == 0 ? 0 : -1;
}

int main(int argc, char **argv) {
    uint8_t buf[4096];
    int slave_fd, i;
    struct sigaction sa;
    if (parse(argc, argv)) {
        fprintf(stderr, "usage: edgekit-app-host --board NAME [--slot-kib N]\n");
        return 2;
    }
    for (i = 0; i < 3; i++) {
        uint32_t size = i == EK_AREA_META ? 2u * EK_SECTOR : slot_size;
        area_mem[i] = malloc(size);
        if (area_mem[i] == NULL) return 1;
        memset(area_mem[i], 0xFF, size);
    }
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    if (open_pty(&slave_fd)) {
        fprintf(stderr, "error: cannot open a pty: %s\n", strerror(errno));
        return 1;
    }
    fprintf(stderr, "edgekit-app-host: running slot %d\n", ek_app_boot());
    while (!stop) {
        struct pollfd p = {0};
        ssize_t n;
        p.fd = pty_fd, p.events = POLLIN;
        if (poll(&p, 1, 200) <= 0) continue;
        n = read(pty_fd, buf, sizeof buf);
        if (n > 0) ek_app_uart_rx(buf, (size_t)n); /* what a UART interrupt would do */
        ek_app_poll();
    }
    close(slave_fd);
    return 0;
}
