/* edgekit firmware for the nRF52840 on Zephyr: serve model updates on uart0 (the DK's J-Link
 * virtual COM port) and run the model from its flash slot. */
#include <zephyr/kernel.h>

#include "ek_app.h"
#include "ek_model.h"
#include "model_data.h"

int board_init(void);

static EDGEKIT_INPUT0_CTYPE input[EDGEKIT_INPUT0_ELEMENTS];
static EDGEKIT_OUTPUT0_CTYPE output[EDGEKIT_OUTPUT0_ELEMENTS];

int main(void) {
    if (board_init()) return 0;
    /* No slot holds a model yet (a fresh board): run the one built into this firmware. */
    if (ek_app_boot() < 0) ek_model_begin(edgekit_model_data, edgekit_model_data_len);
    for (;;) {
        ek_app_poll();
        /* The application: fill `input` from a sensor, run, act on `output`. */
        (void)ek_model_run(input, sizeof input, output, sizeof output);
        k_msleep(1);
    }
}
