# Resets through System Control Port A (0x92) with a read-modify-write of bit 0, after
# checking that the port reads A20 enabled (bit 1) and no reset pending (bit 0). RAM keeps a
# boot count across resets (--reboot); the third boot leaves through debug-exit with the
# count, so each reset, the last two after a reboot, must have worked.
        .include "common.inc"
        .set    MARK, 0x600
        .set    PORT_A, 0x92
start:
        cli
        xor     ax, ax
        mov     ds, ax
        cmp     dword ptr [MARK], 0x32397470    # "pt92"
        je      1f
        mov     dword ptr [MARK], 0x32397470
        mov     word ptr [MARK + 4], 0
1:      inc     word ptr [MARK + 4]
        mov     si, offset booted
        call    print
        in      al, PORT_A
        cmp     al, 0x02
        je      2f
        exit    0x7D                            # bit 1 clear or bit 0 set
2:      cmp     word ptr [MARK + 4], 3
        jb      3f
        mov     al, [MARK + 4]
        out     DEBUG_EXIT, al
3:      in      al, PORT_A
        or      al, 1
        out     PORT_A, al
        exit    0x7F                            # not reached
booted: .asciz  "boot\r\n"
