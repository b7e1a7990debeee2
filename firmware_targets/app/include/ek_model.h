/* The inference runtime behind the application glue. On a board: app/tflm/ek_model_tflm.cc
 * (TFLM with the bundle's generated op resolver, arena size and self-test vector). Without
 * TFLM: app/shim/ek_model_shim.c (checks the image is a TFLite flatbuffer), which lets the glue
 * build and run on any compiler. */
#ifndef EK_MODEL_H
#define EK_MODEL_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Load the model that lies in flash at `model` (len bytes) and allocate its tensors. 0 = ok. */
int ek_model_begin(const uint8_t *model, uint32_t len);
/* Run the self-test on the loaded model: 0 = the outputs match the expected ones. */
int ek_model_selftest(void);
/* One inference on the loaded model: in/out in the model's own dtypes (EDGEKIT_INPUT0_BYTES,
 * EDGEKIT_OUTPUT0_BYTES from model_data.h). 0 = ok. */
int ek_model_run(const void *input, uint32_t input_len, void *output, uint32_t output_len);

#ifdef __cplusplus
}
#endif

#endif
