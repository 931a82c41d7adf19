# Resets the machine through port 0xCF9 as soon as it starts, RESETS times in a row (set
# with --defsym), counting boots in RAM (kept across a reboot); then prints the count and
# leaves through debug-exit with 0x21.
        .include "common.inc"
        .set    MARK, 0x600
start:
        cli
        xor     ax, ax
        mov     ds, ax
        cmp     dword ptr [MARK], 0x706F6F6C    # "loop"
        je      1f
        mov     dword ptr [MARK], 0x706F6F6C
        mov     word ptr [MARK + 4], 0
1:      inc     word ptr [MARK + 4]
        cmp     word ptr [MARK + 4], RESETS + 1
        jae     2f
        mov     dx, 0xCF9
        mov     al, 0x06
        out     dx, al
        exit    0x7F                            # not reached
2:      mov     si, offset boots
        call    print
        mov     ax, [MARK + 4]
        call    print_hex16
        mov     si, offset crlf
        call    print
        exit    0x21
# print_hex16: AX as four hex digits on COM1.
print_hex16:
        mov     cx, 4
3:      rol     ax, 4
        push    ax
        and     al, 0x0F
        add     al, '0'
        cmp     al, '9'
        jbe     4f
        add     al, 'a' - '9' - 1
4:      push    ax
        mov     dx, COM1 + 5
5:      in      al, dx
        test    al, 0x20
        jz      5b
        pop     ax
        mov     dx, COM1
        out     dx, al
        pop     ax
        loop    3b
        ret
boots:  .asciz  "boots "
crlf:   .asciz  "\r\n"
