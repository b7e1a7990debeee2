/* A board's UART on a host: a raw pty served until SIGTERM/SIGINT. Shared by
 * edgekit-mcu-sim (common/sim/ek_sim.c) and edgekit-app-host (app/host/ek_board_host.c). */
#ifndef EK_PTY_H
#define EK_PTY_H

#include <stddef.h>
#include <stdint.h>

/* Catch SIGTERM/SIGINT, open the pty and print the path of its slave end as the first stdout line; 0 on success. */
int ek_pty_open(void);

/* Write as a UART does: there is no receiver to wait for, so if nobody drains the pty, bytes
 * are lost. */
void ek_pty_write(const uint8_t *data, size_t len);

/* Until SIGTERM/SIGINT: hand what arrives to on_rx (what a UART interrupt would do), then call
 * after_rx once per wake-up. Closes the pty's slave end at the end; returns 0. */
int ek_pty_serve(void (*on_rx)(const uint8_t *data, size_t len), void (*after_rx)(void));

#endif
