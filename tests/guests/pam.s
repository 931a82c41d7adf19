# Walks the i440fx PAM modes of the segment 0xE0000-0xE3FFF (PAM5, low nibble) and of
# 0xC0000-0xC3FFF (PAM1, low nibble), printing the dword at the segment's start after each
# step, in hex:
#   pam ROM ROM-after-write WRITEONLY-read RAM-after-copy RAM-after-write RORAM-after-write
#       ROM-again C-RAM-after-write C-ROM
        .include "common.inc"
        .macro  pam reg, value
        mov     dx, 0xCF8
        mov     eax, 0x80000000 | (\reg & 0xFC)
        out     dx, eax
        mov     dx, 0xCFC + (\reg & 3)
        mov     al, \value
        out     dx, al
        .endm
        .macro  show seg
        mov     ax, \seg
        mov     es, ax
        mov     eax, es:[0]
        call    hex32
        .endm
start:
        cli
        mov     si, offset tag
        call    print
        show    0xE000                          # the ROM (the RSDP is there)
        mov     dword ptr es:[0], 0x11111111
        show    0xE000                          # unchanged
        pam     0x5E, 0x02                      # read ROM, write RAM
        mov     cx, 0x4000 / 4                  # copy the segment onto itself: into RAM
        xor     di, di
1:      mov     eax, es:[di]
        mov     es:[di], eax
        add     di, 4
        loop    1b
        show    0xE000                          # still the ROM
        pam     0x5E, 0x03                      # RAM
        show    0xE000                          # the copy
        mov     dword ptr es:[0], 0x22222222
        show    0xE000                          # writable
        pam     0x5E, 0x01                      # read RAM, writes dropped
        mov     dword ptr es:[0], 0x33333333
        show    0xE000
        pam     0x5E, 0x00                      # the ROM again
        show    0xE000
        pam     0x5A, 0x03                      # 0xC0000 as RAM
        mov     dword ptr es:[0], 0          # (ES still 0xE000: ROM, dropped)
        mov     ax, 0xC000
        mov     es, ax
        mov     dword ptr es:[0], 0x44444444
        show    0xC000
        pam     0x5A, 0x00                      # nothing there
        show    0xC000
        mov     si, offset crlf
        call    print
2:      hlt
        jmp     2b

hex32:
        push    cx
        mov     cx, 8
        mov     dx, COM1
3:      rol     eax, 4
        push    eax
        and     al, 0x0F
        add     al, '0'
        cmp     al, '9'
        jbe     4f
        add     al, 'a' - '9' - 1
4:      out     dx, al
        pop     eax
        loop    3b
        mov     al, ' '
        out     dx, al
        pop     cx
        ret

tag:    .asciz  "pam "
crlf:   .asciz  "\r\n"
