# The reset vector: the last 16 bytes of the ROM, at F000:FFF0 (0xFFFFFFF0 at reset).
        .code16
        .intel_syntax noprefix
        .section .reset, "ax"
        .globl reset_vector
reset_vector:
        .byte   0xEA                            # jmp far F000:post: CS now the low alias
        .word   post
        .word   0xF000
        .ascii  "11/25/26"                      # BIOS date at F000:FFF5
        .byte   0
        .byte   0xFC                            # model byte: AT
        .byte   0
