# A boot sector for --reboot: its first boot points INT 10h's vector at a HLT and the BDA's
# COM1 port at nothing, wipes the boot descriptor's magic (0x510), leaves a mark in RAM
# (kept across a reset) and resets the machine through port 0xCF9. Booted again, which needs
# the descriptor written anew (POST halts without it), it finds its mark, waits for the BDA's
# tick count to move (IRQ 0: the PIT programmed anew at the reset) and prints through INT 10h,
# which works only if the interrupt vector table was written anew at the reset; then
# debug-exit 0x31.
        .code16
        .intel_syntax noprefix
        .set    DEBUG_EXIT, 0xF4
        .set    MARK, 0x80000                   # 8000:0000, above the firmware's scratch
        .set    MAGIC, 0x5AA5
        .section .boot, "ax"
        .globl  start
start:
        cli
        xor     ax, ax
        mov     ds, ax
        mov     ss, ax
        mov     sp, 0x7C00
        mov     ax, MARK >> 4
        mov     es, ax
        cmp     word ptr es:[0], MAGIC
        je      second
        mov     word ptr es:[0], MAGIC
        mov     word ptr ds:[0x10 * 4], offset dead   # INT 10h -> 0:dead
        mov     word ptr ds:[0x10 * 4 + 2], 0
        mov     word ptr ds:[0x400], 0                # no COM1 in the BDA
        mov     dword ptr ds:[0x510], 0               # no boot descriptor
        mov     dx, 0xCF9
        mov     al, 0x06                              # hard reset
        out     dx, al
dead:   hlt
        jmp     dead

second:
        mov     ax, ds:[0x46C]                        # BDA tick count, low word
        sti
3:      hlt
        cmp     ax, ds:[0x46C]
        je      3b
        cli
        mov     si, offset msg
1:      lodsb
        test    al, al
        jz      2f
        mov     ah, 0x0E
        mov     bx, 0x0007
        int     0x10
        jmp     1b
2:      mov     al, 0x31
        out     DEBUG_EXIT, al
        jmp     dead

msg:    .asciz  "second boot: INT 10h works\r\n"
