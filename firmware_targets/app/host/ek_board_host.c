/* ek_board.h on a host: flash in RAM (NOR rules enforced), the UART a pty, a reset that
 * returns. Built with the application glue and the TFLM-free shim as build/edgekit-app-host, it
 * is the whole board-independent firmware, driven by the real `edgekit flash serial://`:
 *
 *   edgekit-app-host --board NAME [--slot-kib N]   prints the pty path, serves until SIGTERM
 *
 * The flash lives only as long as the process (resets keep it, like a board's flash). */
#define _XOPEN_SOURCE 600
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ek_app.h"
#include "ek_board.h"
#include "ek_flash.h"
#include "ek_pty.h"
#include "ek_update.h"

static uint8_t *area_mem[3];
static uint32_t slot_size = 512u * 1024u;
static const char *board = "";

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

void ek_board_uart_write(const uint8_t *data, size_t len) { ek_pty_write(data, len); }

void ek_board_reset(void) {
    const ek_app_stats_t *s = ek_app_stats();
    fprintf(stderr, "edgekit-app-host: reset (self-tests %u, failed %u)\n",
            (unsigned)s->selftests, (unsigned)s->selftest_fails);
}

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
    int i;
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
    if (ek_pty_open()) {
        fprintf(stderr, "error: cannot open a pty: %s\n", strerror(errno));
        return 1;
    }
    fprintf(stderr, "edgekit-app-host: running slot %d\n", ek_app_boot());
    return ek_pty_serve(ek_app_uart_rx, ek_app_poll);
}
