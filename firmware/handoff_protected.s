# The hand-off to a guest entered in 32-bit protected mode (boot kind 2: Linux's 32-bit
# entry, multiboot 1 and 2, PVH) or 64-bit long mode (kind 3: Linux's 64-bit entry): the VMM
# has placed the image, its boot structures, a GDT and page tables in RAM; the firmware
# switches mode, loads the registers the boot descriptor names, and jumps. Nothing else.
        .code16
        .intel_syntax noprefix
        .text
        .include "layout.inc"
        .set    ROM_BASE, 0xF0000               # linear address of this segment

# The VMM's GDT, segments and registers, then the far jump to the entry. A macro, so that
# each mode gets its own encoding of the absolute addresses (64-bit code would read
# [disp32] as RIP-relative).
        .macro  load_and_jump
        lgdt    [BOOT_DESC + BD_GDT]
        mov     es, [BOOT_DESC + BD_ES]
        mov     fs, [BOOT_DESC + BD_FS]
        mov     gs, [BOOT_DESC + BD_GS]
        mov     ss, [BOOT_DESC + BD_SS]
        mov     esp, [BOOT_DESC + BD_ESP]
        mov     eax, [BOOT_DESC + BD_EAX]
        mov     ebx, [BOOT_DESC + BD_EBX]
        mov     ecx, [BOOT_DESC + BD_ECX]
        mov     edx, [BOOT_DESC + BD_EDX]
        mov     esi, [BOOT_DESC + BD_ESI]
        mov     edi, [BOOT_DESC + BD_EDI]
        mov     ebp, [BOOT_DESC + BD_EBP]
        mov     ds, [BOOT_DESC + BD_DS]         # flat, as every boot protocol requires
        jmp     fword ptr [BOOT_DESC + BD_ENTRY]
        .endm

# Kinds 2 and 3: protected mode through the firmware's own GDT, then (kind 3) long mode
# with the VMM's page tables; finally the VMM's GDT, segments and registers, and a far jump.
        .globl handoff_protected
handoff_protected:
        mov     al, 0xB0
        or      al, es:[BOOT_DESC + BD_KIND]
        out     0x80, al                        # POST code: the hand-off (--stats handoff_us)
        lgdt    [fw_gdt_desc]                   # DS = CS = F000 during POST
        mov     eax, cr0
        or      al, 1                           # PE
        mov     cr0, eax
        .byte   0x66, 0xEA                      # jmp far 08:pm32, 32-bit offset
        .long   pm32 + ROM_BASE
        .word   0x08

        .code32
pm32:
        mov     ax, 0x10
        mov     ds, ax
        mov     es, ax
        mov     ss, ax
        cmp     word ptr [BOOT_DESC + BD_KIND], BOOT_KIND_LONG
        jne     pm32_jump
        mov     eax, [BOOT_DESC + BD_CR3]
        mov     cr3, eax
        mov     eax, cr4
        or      eax, 0x20                       # PAE
        mov     cr4, eax
        mov     ecx, 0xC0000080                 # EFER
        rdmsr
        or      eax, 0x100                      # LME
        wrmsr
        mov     eax, cr0
        or      eax, 0x80000000                 # PG: long mode is active
        mov     cr0, eax
        .byte   0xEA                            # jmp far 18:lm64, 64-bit code
        .long   lm64 + ROM_BASE
        .word   0x18

pm32_jump:
        load_and_jump
        .code64
lm64:
        load_and_jump
        .code16

        .section .rodata
        .balign 8
# 08: 32-bit code, 10: data, 18: 64-bit code; all flat, accessed bits preset (the CPU
# cannot set them in ROM).
fw_gdt:
        .quad   0
        .quad   0x00CF9B000000FFFF
        .quad   0x00CF93000000FFFF
        .quad   0x00AF9B000000FFFF
fw_gdt_desc:
        .word   fw_gdt_desc - fw_gdt - 1
        .long   fw_gdt + ROM_BASE
