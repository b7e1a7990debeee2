/* edgekit firmware for the STM32H743: serve model updates on the ST-LINK virtual COM port
 * (USART3) and run the model from its flash slot. Build: see ../README.md and README.md. */
#include "ek_app.h"
#include "ek_model.h"
#include "model_data.h"
#include "stm32h7xx_hal.h"

void board_init(void);

static EDGEKIT_INPUT0_CTYPE input[EDGEKIT_INPUT0_ELEMENTS];
static EDGEKIT_OUTPUT0_CTYPE output[EDGEKIT_OUTPUT0_ELEMENTS];

int main(void) {
    HAL_Init();
    board_init();
    /* No slot holds a model yet (a fresh board): run the one built into this firmware. */
    if (ek_app_boot() < 0) ek_model_begin(edgekit_model_data, edgekit_model_data_len);
    for (;;) {
        ek_app_poll();
        /* The application: fill `input` from a sensor, run, act on `output`. */
        (void)ek_model_run(input, sizeof input, output, sizeof output);
    }
}
