/* The receiver: frames in, flash writes and ACK/NAK frames out. See ek_update.h for the wire. */
#include <string.h>

#include "ek_flash.h"
#include "ek_meta.h"

static uint8_t rx_buf[EK_FRAME_MAX];
static uint16_t rx_len;
static uint8_t rx_overflow;

/* Largest reply, INFO: type, 17 fixed bytes, 2 x 37 slot bytes, board length + name, CRC. */
static uint8_t tx[1u + 17u + 74u + 1u + EK_BOARD_MAX + 4u];

static struct {
    uint8_t slot;      /* slot being received, EK_NO_SLOT outside a session */
    uint8_t running;   /* slot chosen at boot */
    uint32_t lwm;      /* bytes held without a gap */
    uint32_t map;      /* bit i: chunk lwm/EK_CHUNK + i held */
    uint32_t erased;   /* slot bytes erased in this session, from 0 */
} s = {EK_NO_SLOT, EK_NO_SLOT, 0, 0, 0};

static uint32_t get32(const uint8_t *p) {
    return p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint8_t *put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8), p[2] = (uint8_t)(v >> 16), p[3] = (uint8_t)(v >> 24);
    return p + 4;
}

/* COBS-encode tx[0..n) straight onto the line, block by block: no second buffer. */
static int send(uint8_t *end) {
    size_t n = (size_t)(end - tx), start = 0;
    static const uint8_t zero = 0;
    put32(end, ek_crc32(tx, n));
    n += 4;
    for (;;) {
        uint8_t run = 0;
        while (start + run < n && tx[start + run] != 0 && run < 254) run++;
        {
            uint8_t code = (uint8_t)(run + 1);
            ek_port_tx(&code, 1);
        }
        ek_port_tx(tx + start, run);
        start += run;
        if (start == n) break;
        if (tx[start] == 0 && ++start == n) {
            static const uint8_t one = 1;
            ek_port_tx(&one, 1);
            break;
        }
    }
    ek_port_tx(&zero, 1);
    return 0;
}

static int send_code(uint8_t type, uint8_t value) {
    tx[0] = type;
    tx[1] = value;
    return send(tx + 2);
}

static int send_ack(uint8_t type) {
    tx[0] = type;
    return send(put32(put32(tx + 1, s.lwm), s.map));
}

static uint8_t board_len(const char *board) {
    uint8_t n = 0;
    while (n < EK_BOARD_MAX && board[n]) n++;
    return n;
}

static void send_info(const uint8_t *nonce) {
    const char *board = ek_port_board();
    uint8_t blen = board_len(board), *p = tx + 1, i;
    tx[0] = EK_INFO;
    *p++ = nonce[0], *p++ = nonce[1], *p++ = EK_PROTO_VERSION;
    *p++ = (uint8_t)EK_CHUNK, *p++ = (uint8_t)(EK_CHUNK >> 8), *p++ = EK_WINDOW;
    p = put32(p, ek_flash_slot_size());
    *p++ = ek_meta.active, *p++ = s.running;
    p = put32(p, ek_meta.progress);
    for (i = 0; i < 2; i++) {
        *p++ = ek_meta.state[i];
        p = put32(p, ek_meta.size[i]);
        memcpy(p, ek_meta.sha[i], 32);
        p += 32;
    }
    *p++ = blen;
    memcpy(p, board, blen);
    send(p + blen);
}

int ek_running_slot(void) { return s.running == EK_NO_SLOT ? -1 : s.running; }

int ek_boot(void) {
    unsigned i, changed = 0;
    int active;
    s.slot = EK_NO_SLOT;
    if (ek_load()) return -1;
    for (i = 0; i < 2; i++)
        if (ek_meta.state[i] == EK_TRIAL) ek_meta.state[i] = EK_REVERTED, changed = 1;
    active = ek_active_slot(NULL);
    s.running = active < 0 ? EK_NO_SLOT : (uint8_t)active;
    for (i = 0; i < 2; i++)
        if (ek_meta.state[i] == EK_PENDING) ek_meta.state[i] = EK_TRIAL, s.running = (uint8_t)i, changed = 1;
    if (changed && ek_meta_save()) return -1;
    return ek_running_slot();
}

int ek_confirm(void) {
    if (s.running > 1 || ek_meta.state[s.running] != EK_TRIAL) return -1;
    ek_meta.state[s.running] = EK_CONFIRMED;
    ek_meta.active = s.running;
    return ek_meta_save();
}

static int on_begin(const uint8_t *b, size_t n) {
    uint32_t size;
    uint8_t slot;
    int active = ek_active_slot(NULL);
    const char *board = ek_port_board();
    if (n < 38 || n != 38u + b[37]) return send_code(EK_ERR, EK_E_MALFORMED);
    /* Board identity first: a wrong image must not cost a single flash write. */
    if (b[37] != board_len(board) || memcmp(b + 38, board, b[37]) != 0) return send_code(EK_ERR, EK_E_BOARD);
    size = get32(b);
    if (size == 0 || size > ek_flash_slot_size()) return send_code(EK_ERR, EK_E_SIZE);
    if (active >= 0 && ek_meta.size[active] == size && memcmp(ek_meta.sha[active], b + 4, 32) == 0)
        return send_code(EK_ERR, EK_E_ACTIVE);
    slot = active == 0 ? 1 : 0;
    if (ek_meta.state[slot] == EK_TRIAL || ek_meta.state[slot ^ 1u] == EK_TRIAL)
        return send_code(EK_ERR, EK_E_BUSY);
    if (ek_meta.state[slot] != EK_RECEIVING || ek_meta.size[slot] != size ||
        memcmp(ek_meta.sha[slot], b + 4, 32) != 0) {
        ek_meta.state[slot] = EK_RECEIVING;
        ek_meta.size[slot] = size;
        memcpy(ek_meta.sha[slot], b + 4, 32);
        ek_meta.progress = 0;
        ek_meta.flags = b[36];
        if (ek_meta_save()) return send_code(EK_ERR, EK_E_FLASH);
    }
    /* Resume from the persisted point; everything after it is erased again before use. */
    s.slot = slot;
    s.lwm = s.erased = ek_meta.progress;
    s.map = 0;
    tx[0] = EK_READY;
    put32(tx + 1, s.lwm);
    tx[5] = slot;
    return send(tx + 6);
}

static int store(uint32_t off, const uint8_t *data, uint32_t len) {
    while (s.erased < off + len) {
        if (ek_flash_erase(s.slot, s.erased, EK_SECTOR)) return -1;
        s.erased += EK_SECTOR;
    }
    return ek_flash_write(s.slot, off, data, len);
}

static int on_data(const uint8_t *b, size_t n) {
    uint32_t off, size, k;
    if (s.slot == EK_NO_SLOT) return send_code(EK_ERR, EK_E_SESSION);
    if (n < 5) return send_ack(EK_NAK);
    size = ek_meta.size[s.slot];
    off = get32(b);
    if (off % EK_CHUNK || off >= size || n - 4 != (size - off < EK_CHUNK ? size - off : EK_CHUNK))
        return send_ack(EK_NAK);
    if (off < s.lwm) return send_ack(EK_ACK); /* a duplicate: the ACK was lost */
    k = (off - s.lwm) / EK_CHUNK;
    if (k >= EK_WINDOW) return send_ack(EK_NAK);
    if (!(s.map >> k & 1u)) {
        if (store(off, b + 4, (uint32_t)(n - 4))) return send_code(EK_ERR, EK_E_FLASH);
        s.map |= 1u << k;
        while (s.map & 1u) {
            s.map >>= 1;
            s.lwm += EK_CHUNK;
        }
        if (s.lwm > size) s.lwm = size;
        /* Persist progress once per completed sector: the resume point after a power cut. */
        if (s.lwm / EK_SECTOR > ek_meta.progress / EK_SECTOR) {
            ek_meta.progress = s.lwm - s.lwm % EK_SECTOR;
            if (ek_meta_save()) return send_code(EK_ERR, EK_E_FLASH);
        }
    }
    return send_ack(EK_ACK);
}

static int on_end(void) {
    uint8_t slot = s.slot;
    if (slot == EK_NO_SLOT) return send_code(EK_ERR, EK_E_SESSION);
    if (s.lwm < ek_meta.size[slot]) return send_ack(EK_ACK);
    s.slot = EK_NO_SLOT;
    if (ek_verify_slot(slot)) {
        ek_meta.state[slot] = EK_EMPTY;
        ek_meta.progress = 0;
        ek_meta_save();
        return send_code(EK_ERR, EK_E_HASH);
    }
    ek_meta.state[slot] = EK_PENDING;
    ek_meta.progress = ek_meta.size[slot];
    if (ek_meta_save()) return send_code(EK_ERR, EK_E_FLASH);
    send_code(EK_DONE, slot);
    ek_port_reboot();
    return 0;
}

static void on_frame(void) {
    size_t n = ek_cobs_decode(rx_buf, rx_len);
    if (n == SIZE_MAX || n < 5 || get32(rx_buf + n - 4) != ek_crc32(rx_buf, n - 4)) {
        if (s.slot != EK_NO_SLOT) send_ack(EK_NAK); /* outside a session noise gets no answer */
        return;
    }
    n -= 5; /* body length */
    switch (rx_buf[0]) {
    case EK_HELLO:
        if (n == 2) send_info(rx_buf + 1);
        break;
    case EK_BEGIN: (void)on_begin(rx_buf + 1, n); break;
    case EK_DATA: (void)on_data(rx_buf + 1, n); break;
    case EK_END: (void)on_end(); break;
    default: break; /* our own replies echoed back, or a newer host: ignore */
    }
}

void ek_rx(const uint8_t *data, size_t len) {
    while (len--) {
        uint8_t b = *data++;
        if (b == 0) {
            if (rx_overflow) {
                if (s.slot != EK_NO_SLOT) send_ack(EK_NAK);
            } else if (rx_len) {
                on_frame();
            }
            rx_len = 0;
            rx_overflow = 0;
        } else if (rx_len < sizeof rx_buf) {
            rx_buf[rx_len++] = b;
        } else {
            rx_overflow = 1;
        }
    }
}
