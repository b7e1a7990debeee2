/* Start-up: which slot runs, and MCUboot's test-then-confirm for a new one. A TRIAL slot is
 * confirmed only after its sha256 matches, the runtime loads it and its self-test passes; on a
 * failure the board resets and ek_boot() reverts to the previous confirmed slot. */
#include "ek_app.h"
#include "ek_board.h"
#include "ek_model.h"
#include "ek_update.h"

extern ek_app_stats_t ek_app_stats_data;

static int load(int slot) {
    uint32_t len = 0;
    const uint8_t *model = slot < 0 ? NULL : ek_app_slot_model((unsigned)slot, &len);
    return model != NULL && ek_model_begin(model, len) == 0 ? 0 : -1;
}

static int trial_passes(int slot) {
    ek_app_stats_data.selftests++;
    if (ek_verify_slot((unsigned)slot) == 0 && load(slot) == 0 && ek_model_selftest() == 0)
        return 1;
    ek_app_stats_data.selftest_fails++;
    return 0;
}

int ek_app_boot(void) {
    int pass;
    for (pass = 0; pass < 2; pass++) { /* a failed trial is reverted by the second ek_boot() */
        int slot = ek_boot();
        if (slot < 0) return -1;
        if (ek_slot_state((unsigned)slot) != EK_TRIAL) return load(slot) == 0 ? slot : -1;
        if (trial_passes(slot)) return ek_confirm() == 0 ? slot : -1;
        ek_board_reset();
    }
    return -1;
}
