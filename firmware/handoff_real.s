# The hand-off to a guest entered in real mode (boot kind 1: Linux's 16-bit boot protocol,
# the kernel's setup code): the VMM has loaded it; the firmware sets the registers the boot
# descriptor names and jumps.
        .code16
        .intel_syntax noprefix
        .text
        .include "layout.inc"

# Kind 1: real mode. SS:SP, the segments and the general registers from the descriptor,
# then a far return to its CS:IP.
        .globl handoff_real
handoff_real:
        mov     al, 0xB0 + 1
        out     0x80, al                        # POST code: the hand-off (--stats handoff_us)
        xor     ax, ax
        mov     ds, ax
        mov     ss, [BOOT_DESC + BD_SS]
        mov     esp, [BOOT_DESC + BD_ESP]
        push    dword ptr [BOOT_DESC + BD_ENTRY] # IP, then CS above it: a far return frame
        mov     es, [BOOT_DESC + BD_ES]
        mov     fs, [BOOT_DESC + BD_FS]
        mov     gs, [BOOT_DESC + BD_GS]
        mov     eax, [BOOT_DESC + BD_EAX]
        mov     ebx, [BOOT_DESC + BD_EBX]
        mov     ecx, [BOOT_DESC + BD_ECX]
        mov     edx, [BOOT_DESC + BD_EDX]
        mov     esi, [BOOT_DESC + BD_ESI]
        mov     edi, [BOOT_DESC + BD_EDI]
        mov     ebp, [BOOT_DESC + BD_EBP]
        test    byte ptr [BOOT_DESC + BD_FLAGS], 1
        jz      1f
        sti
1:      mov     ds, [BOOT_DESC + BD_DS]
        retf
