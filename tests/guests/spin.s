# Spins forever with interrupts off.
        .include "common.inc"
start:
        cli
1:      jmp     1b
