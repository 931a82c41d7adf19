# BIOS service handlers: each hands the call to the VMM through its own port and returns.
# The VMM reads and writes the registers, and the carry/zero flags in the FLAGS word that
# INT pushed (src/bios.rs). Port = 0xE0 + service.
        .code16
        .intel_syntax noprefix
        .text
        .globl int10_handler, int13_handler, int15_handler, int16_handler, int1a_handler
int10_handler:
        out     0xE0, al
        iret
int13_handler:
        out     0xE1, al
        iret
int15_handler:
        out     0xE2, al
        iret
int16_handler:
        out     0xE3, al
        iret
int1a_handler:
        out     0xE4, al
        iret

# The IVT entries POST points at the handlers: vector, handler offset; 0 ends the list.
        .section .rodata
        .globl service_vectors
service_vectors:
        .byte   0x10
        .word   int10_handler
        .byte   0x13
        .word   int13_handler
        .byte   0x15
        .word   int15_handler
        .byte   0x16
        .word   int16_handler
        .byte   0x1A
        .word   int1a_handler
        .byte   0
