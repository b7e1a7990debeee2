/* edgekit model-update protocol, device side (portable C99, no malloc).
 *
 * Wire: each frame is COBS(type, body, crc32-le(type, body)) followed by a 0x00 delimiter.
 * All integers little-endian. Host -> device:
 *   HELLO  0x01  nonce:u16                                   (also the status poll)
 *   BEGIN  0x02  size:u32 sha256:32 flags:u8 board_len:u8 board  (the image header)
 *   DATA   0x03  offset:u32 bytes        (offset = byte sequence number, a multiple of EK_CHUNK)
 *   END    0x04                          (verify the sha256 and make the slot pending)
 * Device -> host:
 *   INFO   0x81  nonce:u16 version:u8 chunk:u16 window:u8 slot_size:u32 active:u8 running:u8
 *                progress:u32 {state:u8 size:u32 sha256:32} x2 board_len:u8 board
 *   READY  0x82  start_offset:u32 slot:u8                      (BEGIN accepted; resume point)
 *   ACK    0x83  lwm:u32 map:u32   lwm = bytes received without a gap; bit i of map = chunk
 *                                  (lwm / EK_CHUNK + i) is already held (bit 0 is always clear)
 *   NAK    0x84  lwm:u32 map:u32   same content: a frame was lost (bad CRC/COBS, out of window)
 *   DONE   0x85  slot:u8          image verified; the slot is pending and the device reboots
 *   ERR    0x86  code:u8
 *
 * Slot life (MCUboot's test-then-confirm): RECEIVING -> PENDING (sha256 verified) -> on the next
 * boot TRIAL (runs once) -> CONFIRMED by the firmware after its self-test; a TRIAL slot found at
 * boot was never confirmed and becomes REVERTED, the previous confirmed slot runs. */
#ifndef EK_UPDATE_H
#define EK_UPDATE_H

#include <stddef.h>
#include <stdint.h>

#include "ek_config.h"

enum ek_msg {
    EK_HELLO = 0x01, EK_BEGIN = 0x02, EK_DATA = 0x03, EK_END = 0x04,
    EK_INFO = 0x81, EK_READY = 0x82, EK_ACK = 0x83, EK_NAK = 0x84, EK_DONE = 0x85, EK_ERR = 0x86
};

enum ek_state {
    EK_EMPTY = 0, EK_RECEIVING = 1, EK_PENDING = 2, EK_TRIAL = 3, EK_CONFIRMED = 4, EK_REVERTED = 5
};

enum ek_err {
    EK_E_BOARD = 1,     /* the image is for another board: refused, nothing written */
    EK_E_SIZE = 2,      /* empty, or larger than a slot */
    EK_E_FLASH = 3,     /* an erase/write/read failed */
    EK_E_HASH = 4,      /* the received image does not match its sha256 */
    EK_E_SESSION = 5,   /* DATA/END without an accepted BEGIN */
    EK_E_ACTIVE = 6,    /* this image is already the confirmed active one */
    EK_E_BUSY = 7,      /* a trial image is running: confirm or reboot first */
    EK_E_MALFORMED = 8  /* a well-framed message with a bad length or field */
};

/* BEGIN flags: test hooks for the simulator's self-test (a real firmware may ignore them). */
#define EK_FLAG_NO_CONFIRM 0x01u  /* self-test never finishes: the trial is left unconfirmed */
#define EK_FLAG_FAIL_TEST 0x02u   /* self-test fails: the firmware reboots and the trial reverts */

#define EK_NO_SLOT 0xFFu

/* Port hooks the application provides. */
void ek_port_tx(const uint8_t *data, size_t len); /* queue bytes on the serial line */
const char *ek_port_board(void);                  /* this board's name, e.g. "stm32h7" */
void ek_port_reboot(void);                        /* after DONE: reset into the pending slot */

/* Boot: load the metadata, revert an unconfirmed TRIAL, turn a PENDING slot into the TRIAL one.
 * Returns the slot the firmware runs now, or -1 when there is no model. */
int ek_boot(void);
/* The running TRIAL slot passed the firmware's self-test: make it the active one. */
int ek_confirm(void);
/* Feed bytes received on the serial line (any split, any garbage). */
void ek_rx(const uint8_t *data, size_t len);

/* Read-only views of the metadata (valid after ek_boot or ek_load). */
int ek_load(void);                                 /* metadata only, no state change */
int ek_active_slot(uint32_t *size);                /* confirmed active slot, -1 if none */
int ek_running_slot(void);                         /* slot chosen by ek_boot, -1 if none */
uint8_t ek_slot_state(unsigned slot);
uint8_t ek_test_flags(void);                       /* BEGIN flags of the TRIAL/PENDING image */
int ek_verify_slot(unsigned slot);                 /* 0 when the slot's content matches its sha256 */

/* Building blocks, also used by the host-side unit tests. */
uint32_t ek_crc32(const uint8_t *p, size_t n);
size_t ek_cobs_decode(uint8_t *buf, size_t len);   /* in place; returns SIZE_MAX on bad input */

typedef struct {
    uint32_t h[8];
    uint8_t buf[64];
    uint32_t len_lo, len_hi;
    uint8_t fill;
} ek_sha256_ctx;
void ek_sha256_init(ek_sha256_ctx *c);
void ek_sha256_update(ek_sha256_ctx *c, const uint8_t *p, size_t n);
void ek_sha256_final(ek_sha256_ctx *c, uint8_t out[32]);

#endif
