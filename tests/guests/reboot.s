# First boot: leaves a mark in RAM and resets through port 0xCF9. After a reboot (RAM kept,
# as on a PC) it sees the mark, counts the boot, and leaves through debug-exit with the
# number of boots (2) once the PAM registers are back at their reset value.
        .include "common.inc"
        .set    MARK, 0x600
start:
        cli
        xor     ax, ax
        mov     ds, ax
        cmp     dword ptr [MARK], 0x746F6F62    # "boot"
        je      again
        mov     dword ptr [MARK], 0x746F6F62
        mov     word ptr [MARK + 4], 1
        # 0xF0000 write-only RAM (reads still from the ROM this runs from); a reset must
        # bring the PAM registers back to zero.
        mov     dx, 0xCF8
        mov     eax, 0x80000058
        out     dx, eax
        mov     dx, 0xCFD
        mov     al, 0x20
        out     dx, al
        mov     si, offset first
        call    print
        mov     dx, 0xCF9
        mov     al, 0x06
        out     dx, al
        exit    0x7F                            # not reached
again:
        inc     word ptr [MARK + 4]
        mov     si, offset second
        call    print
        mov     dx, 0xCF8
        mov     eax, 0x80000058
        out     dx, eax
        mov     dx, 0xCFD
        in      al, dx                          # PAM0
        test    al, al
        jz      1f
        exit    0x7E
1:      mov     al, [MARK + 4]
        out     DEBUG_EXIT, al
first:  .asciz  "first boot\r\n"
second: .asciz  "second boot\r\n"
