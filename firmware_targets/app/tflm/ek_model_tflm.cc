// ek_model.h on TensorFlow Lite Micro, with the files an edgekit bundle ships in mcu/:
// model_data.h (arena size, I/O specs), op_resolver.{h,cc} (exactly the model's ops, AddEthosU
// for an Ethos-U bundle) and selftest_data.h (one self-test vector, quantized). The model is
// read in place from its flash slot, not from model_data.c: the slot is what the host flashed.
#include <cstring>

#include "ek_model.h"
#include "model_data.h"
#include "op_resolver.h"
#include "selftest_data.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/schema/schema_generated.h"

#ifndef TFLITE_SCHEMA_VERSION  // moved between headers across TFLM releases; the format is v3
#define TFLITE_SCHEMA_VERSION 3
#endif

namespace {

alignas(16) uint8_t tensor_arena[EDGEKIT_TENSOR_ARENA_SIZE];
alignas(tflite::MicroInterpreter) uint8_t interpreter_storage[sizeof(tflite::MicroInterpreter)];
EdgekitOpResolver resolver;
tflite::MicroInterpreter* interpreter = nullptr;
bool resolver_ready = false;

bool same_bytes(const TfLiteTensor* t, size_t bytes) { return t != nullptr && t->bytes == bytes; }

}  // namespace

extern "C" int ek_model_begin(const uint8_t* model, uint32_t len) {
  interpreter = nullptr;
  const tflite::Model* m = tflite::GetModel(model);
  if (len < 8 || !tflite::ModelBufferHasIdentifier(model) || m->version() != TFLITE_SCHEMA_VERSION)
    return -1;
  if (!resolver_ready) {
    if (EdgekitRegisterOps(resolver) != kTfLiteOk) return -1;
    resolver_ready = true;
  }
  // The arena is reused for the new model: the old interpreter is simply abandoned.
  interpreter = new (interpreter_storage)
      tflite::MicroInterpreter(m, resolver, tensor_arena, sizeof tensor_arena);
  if (interpreter->AllocateTensors() != kTfLiteOk) return interpreter = nullptr, -1;
  // A model with other I/O than the sources were generated for is not this bundle's.
  if (!same_bytes(interpreter->input(0), EDGEKIT_INPUT0_BYTES) ||
      !same_bytes(interpreter->output(0), EDGEKIT_OUTPUT0_BYTES))
    return interpreter = nullptr, -1;
  return 0;
}

extern "C" int ek_model_selftest(void) {
  if (interpreter == nullptr) return -1;
  std::memcpy(interpreter->input(0)->data.raw, edgekit_selftest_input0, EDGEKIT_INPUT0_BYTES);
  if (interpreter->Invoke() != kTfLiteOk) return -1;
  const EDGEKIT_OUTPUT0_CTYPE* got =
      reinterpret_cast<const EDGEKIT_OUTPUT0_CTYPE*>(interpreter->output(0)->data.raw);
  for (unsigned i = 0; i < EDGEKIT_OUTPUT0_ELEMENTS; i++) {
    double diff = static_cast<double>(got[i]) - static_cast<double>(edgekit_selftest_output0[i]);
    if (diff > EDGEKIT_SELFTEST_TOLERANCE || -diff > EDGEKIT_SELFTEST_TOLERANCE) return -1;
  }
  return 0;
}

extern "C" int ek_model_run(const void* input, uint32_t input_len, void* output,
                            uint32_t output_len) {
  if (interpreter == nullptr || input_len != EDGEKIT_INPUT0_BYTES ||
      output_len != EDGEKIT_OUTPUT0_BYTES)
    return -1;
  std::memcpy(interpreter->input(0)->data.raw, input, input_len);
  if (interpreter->Invoke() != kTfLiteOk) return -1;
  std::memcpy(output, interpreter->output(0)->data.raw, output_len);
  return 0;
}
