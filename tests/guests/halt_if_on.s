# Halts with interrupts enabled and nothing to wake it: idle, not dead. Must not exit by itself.
        .include "common.inc"
start:
        sti
1:      hlt
        jmp     1b
