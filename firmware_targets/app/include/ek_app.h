/* The edgekit application glue: one call at start-up, one in the main loop, one from the UART
 * receive interrupt. A board's main() is
 *
 *     board_init();                     clocks, flash, UART with its RX interrupt
 *     ek_app_boot();                    pick the slot, self-test a trial slot, confirm or revert
 *     for (;;) { ek_app_poll(); ... }   serve the update protocol, run inferences
 *
 * and its UART RX interrupt (or DMA half/complete callback) calls ek_app_uart_rx(bytes, n). */
#ifndef EK_APP_H
#define EK_APP_H

#include <stddef.h>
#include <stdint.h>

#ifndef EK_UART_RING
#define EK_UART_RING 4096u /* a power of two, at least two frames (EK_FRAME_MAX) */
#endif

typedef struct {
    uint32_t rx_bytes;      /* bytes taken from the UART */
    uint32_t rx_dropped;    /* bytes lost because the ring was full (the host resends them) */
    uint32_t selftests;     /* trial slots self-tested */
    uint32_t selftest_fails;
} ek_app_stats_t;

/* Start-up: ek_boot(), then for a TRIAL slot: sha256 check, model load and self-test, then
 * ek_confirm() or a reset (after which the next boot reverts it). Returns the running slot with
 * its model loaded, -1 when there is no (working) model. */
int ek_app_boot(void);
/* Main loop: feed the bytes the interrupt queued to the protocol; reset when it asks to. */
void ek_app_poll(void);
/* UART receive path (interrupt context; single producer). */
void ek_app_uart_rx(const uint8_t *data, size_t len);
/* The model of a slot as it lies in flash (NULL when the slot holds none). */
const uint8_t *ek_app_slot_model(unsigned slot, uint32_t *len);
const ek_app_stats_t *ek_app_stats(void);

#endif
