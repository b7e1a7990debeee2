/* UART glue: a single-producer/single-consumer receive ring between the RX interrupt and the
 * main loop (the line keeps flowing while ek_rx writes a chunk to flash), and the protocol's
 * port hooks. */
#include "ek_app.h"
#include "ek_board.h"
#include "ek_update.h"

#if (EK_UART_RING & (EK_UART_RING - 1u)) != 0
#error "EK_UART_RING must be a power of two"
#endif
#if EK_UART_RING < 2u * EK_FRAME_MAX
#error "EK_UART_RING must hold two frames"
#endif

static uint8_t ring[EK_UART_RING];
static volatile uint32_t head, tail; /* head: written by the interrupt only; tail: by the loop */
static volatile int reset_requested;
ek_app_stats_t ek_app_stats_data;

void ek_app_uart_rx(const uint8_t *data, size_t len) {
    uint32_t h = head;
    size_t i;
    for (i = 0; i < len; i++) {
        if (h - tail == EK_UART_RING) {
            ek_app_stats_data.rx_dropped += (uint32_t)(len - i);
            break;
        }
        ring[h & (EK_UART_RING - 1u)] = data[i];
        h++;
    }
    head = h; /* publish after the bytes are in place */
}

void ek_app_poll(void) {
    uint32_t h = head, t = tail;
    while (t != h) {
        uint32_t at = t & (EK_UART_RING - 1u);
        uint32_t run = h - t;
        if (run > EK_UART_RING - at) run = EK_UART_RING - at; /* up to the end of the ring */
        ek_rx(&ring[at], run);
        t += run;
        ek_app_stats_data.rx_bytes += run;
    }
    tail = t;
    if (reset_requested) {
        reset_requested = 0;
        ek_board_reset();
        ek_app_boot(); /* reached only where a reset returns (a host build) */
    }
}

/* The protocol asks for the reboot from inside ek_rx, after DONE was queued: do it from the
 * main loop, once ek_rx has returned. */
void ek_port_reboot(void) { reset_requested = 1; }

void ek_port_tx(const uint8_t *data, size_t len) { ek_board_uart_write(data, len); }

const char *ek_port_board(void) { return ek_board_name(); }

const ek_app_stats_t *ek_app_stats(void) { return &ek_app_stats_data; }
