# Asks fw_cfg how much RAM there is, first thing, as a firmware does. MODE (a bit mask,
# --defsym; default both) selects:
#   1: the RAM size item (key 0x03) through the selector and data ports:
#      "ram_size HHHHHHHHHHHHHHHH"
#   2: etc/e820, found in the file directory (data port), read through DMA: one line per
#      entry, "e820 BASE LENGTH TYPE" (16, 16 and 2 hex digits)
# then leaves through debug-exit with 0x10 (exit code 33); 0x21 when etc/e820 is missing,
# 0x22 when the DMA transfer reports an error.
        .include "common.inc"
        .ifndef MODE
        .set    MODE, 3
        .endif
        .set    SELECTOR, 0x510
        .set    DATA, 0x511
        .set    DMA_HIGH, 0x514
        .set    DMA_LOW, 0x518
        .set    ENTRY, 0x1000                   # a directory entry
        .set    DESC, 0x2000                    # the DMA descriptor
        .set    BUF, 0x3000                     # etc/e820's bytes
start:
        cli
        xor     ax, ax
        mov     ds, ax
        mov     es, ax
        mov     ss, ax
        mov     sp, 0x7000
        cld

        .if     MODE & 1
        mov     dx, SELECTOR
        mov     ax, 0x03
        out     dx, ax
        mov     dx, DATA
        mov     di, BUF
        mov     cx, 8
        rep     insb
        mov     si, offset ram_msg
        call    print
        mov     si, BUF
        call    hex64
        mov     si, offset crlf
        call    print
        .endif

        .if     MODE & 2
        # The directory: a big-endian count, then 64-byte entries
        # { be32 size, be16 key, u16, name[56] }.
        mov     dx, SELECTOR
        mov     ax, 0x19
        out     dx, ax
        mov     dx, DATA
        in      al, dx
        in      al, dx
        in      al, dx
        in      al, dx
        movzx   bp, al                          # at most 255 files
1:      test    bp, bp
        jnz     2f
        exit    0x21
2:      dec     bp
        mov     di, ENTRY
        mov     cx, 64
        rep     insb
        mov     si, offset e820_name
        mov     di, ENTRY + 8
        mov     cx, 9
3:      mov     al, cs:[si]
        cmp     al, [di]
        jne     1b
        inc     si
        inc     di
        loop    3b
        # Select it and read it whole: control = key << 16 | SELECT | READ.
        movzx   eax, word ptr [ENTRY + 4]
        xchg    al, ah
        shl     eax, 16
        or      eax, 0x0A
        bswap   eax
        mov     [DESC], eax
        mov     eax, [ENTRY]
        mov     [DESC + 4], eax                 # already big-endian
        mov     dword ptr [DESC + 8], 0
        mov     eax, BUF
        bswap   eax
        mov     [DESC + 12], eax
        mov     dx, DMA_HIGH
        xor     eax, eax
        out     dx, eax
        mov     dx, DMA_LOW
        mov     eax, DESC
        bswap   eax
        out     dx, eax
        mov     eax, [DESC]
        bswap   eax
        test    eax, 1                          # the error bit
        jz      4f
        exit    0x22
4:      mov     ecx, [ENTRY]
        bswap   ecx
        mov     bx, BUF
5:      cmp     ecx, 20
        jb      6f
        mov     si, offset e820_msg
        call    print
        mov     si, bx
        call    hex64
        mov     al, ' '
        call    putc
        lea     si, [bx + 8]
        call    hex64
        mov     al, ' '
        call    putc
        mov     al, [bx + 16]
        call    hex8
        mov     si, offset crlf
        call    print
        add     bx, 20
        sub     ecx, 20
        jmp     5b
6:
        .endif

        exit    0x10

# hex64: the little-endian quadword at DS:SI, as 16 hex digits.
hex64:
        push    cx
        mov     cx, 8
        add     si, 7
1:      mov     al, [si]
        call    hex8
        dec     si
        loop    1b
        pop     cx
        ret

# hex8: AL as two hex digits.
hex8:
        push    ax
        shr     al, 4
        call    nibble
        pop     ax
        and     al, 0x0F
nibble:
        add     al, '0'
        cmp     al, '9'
        jbe     putc
        add     al, 'a' - '9' - 1
putc:
        push    dx
        mov     dx, COM1
        out     dx, al
        pop     dx
        ret

ram_msg:    .asciz "ram_size "
e820_msg:   .asciz "e820 "
e820_name:  .asciz "etc/e820"
crlf:       .asciz "\r\n"
