"""The offload coordinator: fleet registry, cost-model routing, split execution, batches.

`edgekit coordinator run --broker HOST:PORT --fleet NAME --http HOST:PORT [--state DIR]`
(:mod:`.cli`); the MQTT side is :mod:`.service`, the HTTP side :mod:`.server`.
"""
