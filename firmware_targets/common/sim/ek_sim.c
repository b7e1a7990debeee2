/* edgekit-mcu-sim: the device side of the update protocol on a host, behind a pty.
 *
 *   edgekit-mcu-sim --flash FILE --board NAME [--slot-kib N]   serve until SIGTERM
 *   edgekit-mcu-sim --flash FILE --dump-active                 active model to stdout
 *
 * FILE stands in for flash: two model slots then two metadata sectors, NOR rules enforced (a
 * write may only clear bits of erased bytes). It is written with pwrite and never cached, so
 * killing the process at any instant is a power cut. The "firmware" self-test after a reboot
 * into a trial slot is: the slot's sha256 matches, and the host did not set a test flag. A real
 * firmware would load the slot under TFLM, run the bundle's self-test inputs once and compare
 * the outputs before calling ek_confirm(). */
#define _XOPEN_SOURCE 600
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ek_flash.h"
#include "ek_pty.h"
#include "ek_update.h"

static int flash_fd = -1;
static uint32_t slot_size = 1024u * 1024u;
static const char *board = "";
static int reboot_requested;

static long area_base(unsigned area) { return (long)area * (long)slot_size; }

static int area_ok(unsigned area, uint32_t off, uint32_t len) {
    uint32_t limit = area == EK_AREA_META ? 2u * EK_SECTOR : slot_size;
    return area <= EK_AREA_META && off <= limit && len <= limit - off;
}

int ek_flash_read(unsigned area, uint32_t off, void *dst, uint32_t len) {
    if (!area_ok(area, off, len)) return -1;
    return pread(flash_fd, dst, len, area_base(area) + off) == (ssize_t)len ? 0 : -1;
}

int ek_flash_erase(unsigned area, uint32_t off, uint32_t len) {
    static uint8_t ff[EK_SECTOR];
    uint32_t done;
    if (!area_ok(area, off, len) || off % EK_SECTOR || len % EK_SECTOR) return -1;
    memset(ff, 0xFF, sizeof ff);
    for (done = 0; done < len; done += EK_SECTOR)
        if (pwrite(flash_fd, ff, EK_SECTOR, area_base(area) + off + done) != (ssize_t)EK_SECTOR) return -1;
    return 0;
}

int ek_flash_write(unsigned area, uint32_t off, const void *src, uint32_t len) {
    static uint8_t old[EK_FRAME_MAX];
    const uint8_t *p = src;
    uint32_t i;
    if (len > sizeof old || ek_flash_read(area, off, old, len)) return -1;
    for (i = 0; i < len; i++)
        if ((old[i] & p[i]) != p[i]) {
            fprintf(stderr, "edgekit-mcu-sim: flash: programming an unerased byte (area %u, +%lu)\n",
                    area, (unsigned long)(off + i));
            return -1;
        }
    return pwrite(flash_fd, src, len, area_base(area) + off) == (ssize_t)len ? 0 : -1;
}

uint32_t ek_flash_slot_size(void) { return slot_size; }

const char *ek_port_board(void) { return board; }

void ek_port_reboot(void) { reboot_requested = 1; }

void ek_port_tx(const uint8_t *data, size_t len) { ek_pty_write(data, len); }

static void boot(void) {
    int slot = ek_boot();
    uint8_t flags = ek_test_flags();
    if (slot >= 0 && ek_slot_state((unsigned)slot) == EK_TRIAL) {
        int pass = ek_verify_slot((unsigned)slot) == 0 && !(flags & EK_FLAG_FAIL_TEST);
        if (flags & EK_FLAG_NO_CONFIRM) {
            fprintf(stderr, "edgekit-mcu-sim: slot %d on trial, left unconfirmed (test flag)\n", slot);
        } else if (pass) {
            fprintf(stderr, "edgekit-mcu-sim: slot %d passed its self-test: %s\n", slot,
                    ek_confirm() == 0 ? "confirmed" : "confirm failed");
        } else {
            fprintf(stderr, "edgekit-mcu-sim: slot %d failed its self-test: rebooting\n", slot);
            slot = ek_boot();
        }
    }
    fprintf(stderr, "edgekit-mcu-sim: running slot %d\n", ek_running_slot());
}

/* An existing image keeps the slot size it was made with; a new one is erased flash. */
static int open_flash(const char *path, int create) {
    static uint8_t ff[EK_SECTOR];
    off_t have, want;
    flash_fd = open(path, create ? O_RDWR | O_CREAT : O_RDONLY, 0644);
    if (flash_fd < 0) {
        fprintf(stderr, "error: cannot open flash image %s: %s\n", path, strerror(errno));
        return -1;
    }
    have = lseek(flash_fd, 0, SEEK_END);
    if (have == 0 && !create) {
        fprintf(stderr, "error: no active model in the flash image (%s is empty)\n", path);
        return -1;
    }
    if (have > 0) {
        off_t slots = have - 2 * (off_t)EK_SECTOR;
        if (slots <= 0 || slots % (2 * (off_t)EK_SECTOR) || slots / 2 > (64 << 20)) {
            fprintf(stderr, "error: %s (%ld bytes) is not an edgekit-mcu-sim flash image\n", path, (long)have);
            return -1;
        }
        slot_size = (uint32_t)(slots / 2);
        return 0;
    }
    want = 2 * (off_t)slot_size + 2 * (off_t)EK_SECTOR;
    memset(ff, 0xFF, sizeof ff);
    for (have = 0; have < want; have += EK_SECTOR)
        if (write(flash_fd, ff, EK_SECTOR) != (ssize_t)EK_SECTOR) {
            fprintf(stderr, "error: cannot write flash image %s: %s\n", path, strerror(errno));
            return -1;
        }
    return 0;
}

static int dump_active(void) {
    uint8_t buf[4096];
    uint32_t size, off;
    int slot;
    if (ek_load() || (slot = ek_active_slot(&size)) < 0) {
        fprintf(stderr, "error: no active model in the flash image\n");
        return 1;
    }
    for (off = 0; off < size; off += sizeof buf) {
        uint32_t n = size - off < sizeof buf ? size - off : (uint32_t)sizeof buf;
        if (ek_flash_read((unsigned)slot, off, buf, n) || fwrite(buf, 1, n, stdout) != n) return 1;
    }
    return fflush(stdout) == 0 ? 0 : 1;
}

static void after_rx(void) {
    if (reboot_requested) {
        reboot_requested = 0;
        boot();
    }
}

static int serve(void) {
    if (ek_pty_open()) {
        fprintf(stderr, "error: cannot open a pty: %s\n", strerror(errno));
        return 1;
    }
    boot();
    return ek_pty_serve(ek_rx, after_rx);
}

static void usage(void) {
    fprintf(stderr, "usage: edgekit-mcu-sim --flash FILE (--board NAME [--slot-kib N] | --dump-active)\n");
}

int main(int argc, char **argv) {
    const char *flash = NULL;
    int dump = 0, i;
    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--flash") && i + 1 < argc) flash = argv[++i];
        else if (!strcmp(argv[i], "--board") && i + 1 < argc) board = argv[++i];
        else if (!strcmp(argv[i], "--slot-kib") && i + 1 < argc) slot_size = (uint32_t)strtoul(argv[++i], NULL, 10) * 1024u;
        else if (!strcmp(argv[i], "--dump-active")) dump = 1;
        else return usage(), 2;
    }
    if (!flash || (!dump && !*board) || strlen(board) > EK_BOARD_MAX || slot_size == 0 ||
        slot_size % EK_SECTOR || slot_size > (64u << 20))
        return usage(), 2;
    if (open_flash(flash, !dump)) return 1;
    return dump ? dump_active() : serve();
}
