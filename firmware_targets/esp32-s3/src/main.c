/* edgekit firmware for the ESP32-S3 on ESP-IDF: one task serves model updates on UART0 (the
 * DevKitC's USB-UART bridge) and runs the model from its flash partition. */
#include "driver/uart.h"
#include "ek_app.h"
#include "ek_model.h"
#include "freertos/FreeRTOS.h"
#include "freertos/task.h"
#include "model_data.h"

#define EK_UART UART_NUM_0

int board_init(void);

static EDGEKIT_INPUT0_CTYPE input[EDGEKIT_INPUT0_ELEMENTS];
static EDGEKIT_OUTPUT0_CTYPE output[EDGEKIT_OUTPUT0_ELEMENTS];

void app_main(void) {
    uint8_t buf[256];
    if (board_init()) return;
    /* No partition holds a model yet (a fresh board): run the one built into this firmware. */
    if (ek_app_boot() < 0) ek_model_begin(edgekit_model_data, edgekit_model_data_len);
    for (;;) {
        int n = uart_read_bytes(EK_UART, buf, sizeof buf, pdMS_TO_TICKS(5));
        if (n > 0) ek_app_uart_rx(buf, (size_t)n); /* the driver's ring already buffers the line */
        ek_app_poll();
        /* The application: fill `input` from a sensor, run, act on `output`. */
        (void)ek_model_run(input, sizeof input, output, sizeof output);
    }
}
