# Real mode with an interrupt table too small for the vector it raises: KVM either reports
# a triple fault or cannot deliver the exception at all (an internal error). Either way the
# guest has crashed.
        .include "common.inc"
start:
        cli
        lidt    cs:[tiny_idt]
        int3
        exit    0x7F
tiny_idt:
        .word   0
        .long   0
