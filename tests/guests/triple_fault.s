# Enters protected mode with an empty IDT and raises an exception: #GP, then #DF, then a
# triple fault (KVM shutdown).
        .include "common.inc"
        .include "pmode.inc"
start:
        enter_pmode
        .code32
pm_start:
        lidt    [0xF0000 + null_idt]
        int3
        hlt
        .balign 8
null_idt:
        .word   0
        .long   0
        .code16
        gdt_table
